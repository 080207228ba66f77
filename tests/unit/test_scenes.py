"""The simulator's scenes, measured with the workers' own DSP."""

from __future__ import annotations

import numpy as np
import pytest

from soundmon.scenes import (
    ADC_RAIL_HIGH,
    ADC_RAIL_LOW,
    DC_BIAS_COUNTS,
    K_DB,
    SCENES,
    SceneStream,
    render,
    render_block,
    render_tone,
)
from soundmon.synth import BLOCK_SAMPLES, Block
from workers.dsp import energetic_mean_db, frame_features

RATE_HZ = 8000
FRAME = 4000  # 500 ms frames, as the firmware sends them


def frame_levels(samples: np.ndarray, weighting: str = "dbfs_a") -> np.ndarray:
    """Per-frame levels in dB SPL (dB(A) by default) of consecutive 500 ms frames."""
    frames = samples[: samples.size // FRAME * FRAME].reshape(-1, FRAME)
    return frame_features(frames, RATE_HZ)[weighting] + K_DB


@pytest.mark.parametrize("name", SCENES)
def test_every_scene_renders_int16_of_the_requested_shape(name):
    """A scene gives int16 counts of the requested length, within the ADC rails, from
    finite pressures."""
    pressure = SCENES[name].pressure_pa(Block(0, RATE_HZ, seed=0))
    assert pressure.shape == (BLOCK_SAMPLES,) and np.all(np.isfinite(pressure))
    x = render(name, 1.25, 4321, RATE_HZ)
    assert x.dtype == np.int16 and x.shape == (4321,)
    assert ADC_RAIL_LOW <= x.min() and x.max() <= ADC_RAIL_HIGH


@pytest.mark.parametrize("name", SCENES)
def test_rendering_is_continuous_and_deterministic(name):
    """Frames rendered one by one (across block edges) equal one long render, and the same
    seed gives the same samples while another seed does not."""
    whole = render(name, 0.0, 6 * FRAME, RATE_HZ, seed=3)
    pieces = [render(name, k * FRAME / RATE_HZ, FRAME, RATE_HZ, seed=3) for k in range(6)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    stream = SceneStream(name, RATE_HZ, seed=3)
    np.testing.assert_array_equal(np.concatenate([stream.read(FRAME) for _ in range(6)]), whole)
    np.testing.assert_array_equal(render(name, 0.0, 6 * FRAME, RATE_HZ, seed=3), whole)
    assert not np.array_equal(render(name, 0.0, 6 * FRAME, RATE_HZ, seed=4), whole)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", SCENES)
def test_scene_laeq_over_10_s_is_in_its_documented_range(name, seed):
    """The energetic mean of 20 frames' dB(A) (workers.dsp + K) lies in the scene's range."""
    low, high = SCENES[name].laeq_db
    laeq = energetic_mean_db(frame_levels(render(name, 0.0, 10 * RATE_HZ, RATE_HZ, seed=seed)))
    assert low <= laeq <= high, f"{name}: LAeq,10s {laeq:.1f} dB(A) not in {low}..{high}"


def test_loud_scene_is_a_60_db_background_with_events_up_to_95_db():
    """Most frames of `loud` sit near 60 dB(A); in every 10 s one event reaches 85-95 dB(A)."""
    levels = frame_levels(render("loud", 0.0, 30 * RATE_HZ, RATE_HZ))
    assert 58.0 <= np.median(levels) <= 62.0
    for window in levels.reshape(3, 20):  # each 10 s slot holds exactly one event
        assert 84.0 <= window.max() <= 95.5


def test_alarm_is_a_3_khz_tone():
    """The alarm scene's dominant frequency is 3 kHz in every frame."""
    x = render("alarm", 0.0, 4 * FRAME, RATE_HZ).reshape(-1, FRAME)
    np.testing.assert_allclose(frame_features(x, RATE_HZ)["dominant_hz"], 3000.0, atol=1.0)


@pytest.mark.parametrize("freq_hz, level_db", [
    (1000.0, 94.0), (997.0, 94.0), (250.0, 60.0), (3150.0, 80.0), (100.0, 45.0)])
def test_render_tone_measures_its_level_within_0_1_db(freq_hz, level_db):
    """A tone rendered at L dB SPL reads L +- 0.1 dB (Z) through workers.dsp and K."""
    x = render_tone(freq_hz, level_db, 10 * FRAME, RATE_HZ, t_s=12.3)
    np.testing.assert_allclose(frame_levels(x, "dbfs"), level_db, atol=0.1)


def test_samples_carry_the_front_end_bias_and_clip_at_the_adc_rails():
    """Samples sit on the DC bias; a tone too loud for the ADC is cut at its rails."""
    assert abs(render("quiet", 0.0, FRAME, RATE_HZ).mean() - DC_BIAS_COUNTS) < 5
    loud = render_tone(1000.0, 110.0, FRAME, RATE_HZ)
    assert loud.min() == ADC_RAIL_LOW and loud.max() == ADC_RAIL_HIGH


def test_render_block_is_a_pure_function_of_its_inputs():
    """Rendering the same block twice, in any order, gives the same samples."""
    later = render_block("street", 5, RATE_HZ, seed=9)
    render_block("street", 4, RATE_HZ, seed=9)
    np.testing.assert_array_equal(render_block("street", 5, RATE_HZ, seed=9), later)
