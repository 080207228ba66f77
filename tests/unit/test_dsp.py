"""DSP basics on synthetic signals with known answers (protocol.md section 3 conventions)."""

from __future__ import annotations

import numpy as np
import pytest

from workers import dsp

RATE = 8000


def _sine(freq, amp, n=4000, rate=RATE, offset=0.0):
    t = np.arange(n) / rate
    return np.round(offset + amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def test_full_scale_square_is_0_dbfs():
    """A full-scale square wave is 0 dBFS."""
    x = np.where(np.arange(4000) % 8 < 4, 32767, -32767).astype(np.int16)
    assert dsp.frame_features(x, RATE)["dbfs"][0] == pytest.approx(0.0, abs=0.01)


def test_full_scale_sine_is_minus_3_01_dbfs():
    """A full-scale sine is -3.01 dBFS (RMS-normalised convention)."""
    assert dsp.frame_features(_sine(1000, 32767), RATE)["dbfs"][0] == pytest.approx(-3.01, abs=0.01)


def test_dc_is_removed_before_the_rms():
    """An offset (the analog bias) does not change the level."""
    a = dsp.frame_features(_sine(500, 4000), RATE)["dbfs"][0]
    b = dsp.frame_features(_sine(500, 4000, offset=2500), RATE)["dbfs"][0]
    assert a == pytest.approx(b, abs=0.01)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7])
def test_tiny_and_silent_frames_never_give_nan_or_inf(n):
    """Frames of 0-7 samples, silence and DC-only input give finite levels, no exception."""
    for x in (np.zeros(n, np.int16), np.full(n, 1234, np.int16)):
        f = dsp.frame_features(x[np.newaxis, :] if n else np.zeros((1, 0), np.int16), RATE)
        assert np.isfinite(f["dbfs"]).all() and np.isfinite(f["dbfs_a"]).all()
    f = dsp.frame_features(np.full(4000, -77, np.int16), RATE)
    assert np.isfinite(f["dbfs"][0]) and np.isnan(f["dominant_hz"][0])


def test_a_weighting_matches_iec_61672_table_values():
    """A(f) reproduces IEC 61672-1 Table 3 at the exact base-10 frequencies (0.1 dB rounding)."""
    table = {10: -70.4, 100: -19.1, 1000: 0.0, 1995.3: 1.2, 3981.1: 1.0, 10000: -2.5,
             19953: -9.3, 31.623: -39.4}
    for f, a in table.items():
        assert dsp.a_weighting_db(f) == pytest.approx(a, abs=0.05), f
    assert dsp.c_weighting_db(1000) == pytest.approx(0.0, abs=0.01)
    assert dsp.c_weighting_db(31.623) == pytest.approx(-3.0, abs=0.05)


@pytest.mark.parametrize("freq", [100, 250, 1000, 2000, 3500])
def test_a_weighted_level_of_a_tone_follows_the_curve(freq):
    """dBFS(A) of a pure tone = dBFS + A(f), within 0.1 dB."""
    f = dsp.frame_features(_sine(freq, 8000), RATE)
    assert f["dbfs_a"][0] - f["dbfs"][0] == pytest.approx(dsp.a_weighting_db(freq), abs=0.1)


@pytest.mark.parametrize("freq", [31.7, 440.0, 997.3, 3210.9])
def test_dominant_frequency_is_interpolated(freq):
    """The interpolated peak is well within 0.05 bin of a clean tone (bin = 2 Hz here)."""
    f = dsp.frame_features(_sine(freq, 6000), RATE)
    assert f["dominant_hz"][0] == pytest.approx(freq, abs=0.05 * RATE / 4000)


def test_clipping_is_detected_at_the_adc_rails():
    """Samples at the ESP32's int16 rails (-32768, +32752) count as clipped."""
    t = np.arange(4000) / RATE
    x = np.clip(40000 * np.sin(2 * np.pi * 200 * t), -32768, 32752).astype(np.int16)
    assert dsp.frame_features(x, RATE)["clip_frac"][0] > 0.1
    assert dsp.frame_features(_sine(200, 20000), RATE)["clip_frac"][0] == 0


def test_batch_is_the_same_as_frame_by_frame():
    """Vectorised features of a batch equal those of each frame alone."""
    frames = np.stack([_sine(300 + 100 * i, 1000 * (i + 1)) for i in range(5)])
    batch = dsp.frame_features(frames, RATE)
    for i in range(5):
        one = dsp.frame_features(frames[i], RATE)
        for key in ("dbfs", "dbfs_a", "dominant_hz"):
            assert batch[key][i] == pytest.approx(one[key][0])


def test_leq_is_energetic():
    """1 s at 60 dB plus 1 s at 80 dB is 77.03 dB, not 70."""
    assert dsp.energetic_mean_db(np.array([60.0, 80.0])) == pytest.approx(77.03, abs=0.01)
