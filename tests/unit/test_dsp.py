"""Per-frame DSP on synthetic signals whose answers come from the standards, not from our code."""

from __future__ import annotations

import math

import numpy as np
import pytest

from soundmon.bands import band_centres_hz, decode_bands, encode_bands
from soundmon.protocol import KIND_PCM, decode_frame, encode_frame
from soundmon.store import DeviceCalibration
from workers import dsp, levels, spectrum
from workers.preprocess import process_batch, state_keys_needed

RATE = 8000


def _sine(freq, amp, n=4000, rate=RATE, offset=0.0, phase=0.0):
    t = np.arange(n) / rate
    return np.round(offset + amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.int16)


def _one(x, rate=RATE, **kw):
    return dsp.analyse_stream(x, rate, **kw)[0]


# ---- conventions (protocol.md section 3) -------------------------------------------------------
def test_full_scale_square_is_0_dbfs():
    """A full-scale square wave is 0 dBFS."""
    x = np.where(np.arange(4000) % 8 < 4, 32767, -32767).astype(np.int16)
    assert _one(x)["dbfs"][0] == pytest.approx(0.0, abs=0.01)


def test_full_scale_sine_is_minus_3_01_dbfs():
    """A full-scale sine is -3.01 dBFS (RMS-normalised convention)."""
    assert _one(_sine(1000, 32767))["dbfs"][0] == pytest.approx(-3.01, abs=0.01)


def test_dc_is_removed_before_the_rms():
    """An offset (the analog bias) changes neither dBFS nor the weighted levels."""
    a = _one(_sine(500, 4000))
    b = _one(_sine(500, 4000, offset=2500))
    for key in ("dbfs", "laeq", "lceq", "lafmax"):
        assert a[key][0] == pytest.approx(b[key][0], abs=0.02), key


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 6, 7])
def test_tiny_silent_and_dc_frames_never_give_nan_or_errors(n):
    """Frames of 0-7 samples, silence and DC-only input give finite levels and no exception."""
    for x in (np.zeros((1, n), np.int16), np.full((1, n), 1234, np.int16),
              np.full((3, n), -77, np.int16)):
        feats, _ = dsp.analyse_stream(x, RATE)
        for key in ("dbfs", "laeq", "lceq", "lafmax", "lafmin", "lcpeak", "clip_frac"):
            assert np.isfinite(feats[key]).all(), (n, key)
        assert np.isfinite(feats["bands_db"]).all()
        assert np.isnan(feats["dominant_hz"]).all()  # under 16 samples: no peak


def test_silence_and_dc_read_the_quantisation_floor():
    """Digital silence and a constant read -101.1 dBFS everywhere, with no dominant frequency."""
    for x in (np.zeros(4000, np.int16), np.full(4000, -900, np.int16)):
        f = _one(x)
        for key in ("dbfs", "laeq", "lceq", "lafmax", "lafmin"):
            assert f[key][0] == pytest.approx(-101.1, abs=0.1), key
        assert np.isnan(f["dominant_hz"][0]) and np.isnan(f["centroid_hz"][0])


def test_clipping_is_detected_at_the_adc_rails():
    """Samples at the ESP32's int16 rails (-32768, +32752) count as clipped."""
    t = np.arange(4000) / RATE
    x = np.clip(40000 * np.sin(2 * np.pi * 200 * t), -32768, 32752).astype(np.int16)
    assert _one(x)["clip_frac"][0] > 0.1
    assert _one(_sine(200, 20000))["clip_frac"][0] == 0


# ---- Leq ------------------------------------------------------------------------------------------
def test_leq_is_energetic():
    """1 s at 60 dB plus 1 s at 80 dB is 77.03 dB, not 70."""
    assert dsp.energetic_mean_db(np.array([60.0, 80.0])) == pytest.approx(77.03, abs=0.01)
    assert dsp.energetic_mean_db(np.array([60.0, 80.0]), np.array([1.0, 1.0])) == pytest.approx(
        10 * math.log10((1e6 + 1e8) / 2), abs=1e-9)


def test_leq_of_two_frames_20_db_apart_is_17_03_above_the_quiet_one():
    """Two 1 s frames of a 1 kHz tone 20 dB apart: their energetic mean is 77.03 at 60/80 dB."""
    quiet, loud = _sine(1000, 1000, n=RATE), _sine(1000, 10000, n=RATE)
    feats = _one(np.stack([quiet, loud]))
    k = 60.0 - feats["laeq"][0]  # calibrate the quiet frame to 60 dB
    assert feats["laeq"][1] + k == pytest.approx(80.0, abs=0.01)
    assert dsp.energetic_mean_db(feats["laeq"] + k) == pytest.approx(77.03, abs=0.01)


# ---- time weighting: IEC 61672-1 Table 4 (4 kHz tone bursts, Fast) -----------------------------
TABLE4_FAST = [  # (burst ms, LAFmax - LA reference dB, class 1 upper, class 1 lower)
    (1000, 0.0, 0.5, -0.5), (500, -0.1, 0.5, -0.5), (200, -1.0, 0.5, -0.5),
    (100, -2.6, 1.0, -1.0), (50, -4.8, 1.0, -1.0), (20, -8.3, 1.0, -1.0), (10, -11.1, 1.0, -1.0),
    (5, -14.1, 1.0, -1.0), (2, -18.0, 1.0, -1.5), (1, -21.0, 1.0, -2.0), (0.5, -24.0, 1.0, -2.5),
    (0.25, -27.0, 1.0, -3.0),
]


@pytest.mark.parametrize("rate, start_ms, frames", [
    (16000, 250, 2), (48000, 250, 2),  # the detector has settled on silence before the burst
    (16000, 0, 2), (48000, 0, 2), (16000, 0, 8),  # the burst at sample 0 of a fresh stream
])
def test_tone_bursts_against_table_4_fast(rate, start_ms, frames):
    """LAFmax of 4 kHz bursts in silence, minus the steady LA, meets Table 4 class 1 (Fast)."""
    n = 2 * rate
    t = np.arange(n) / rate
    steady = 10000 * np.sin(2 * np.pi * 4000 * t)
    la = dsp.analyse_stream(steady.reshape(4, -1), rate)[0]["laeq"][-1]
    for burst_ms, ref, upper, lower in TABLE4_FAST:
        x = np.zeros(n)
        start = rate * start_ms // 1000
        length = int(round(burst_ms / 1000 * rate))  # whole 4 kHz cycles at both rates
        x[start:start + length] = steady[:length]
        lafmax = dsp.analyse_stream(x.reshape(frames, -1), rate)[0]["lafmax"].max()
        assert lower <= lafmax - la - ref <= upper, (rate, burst_ms, lafmax - la)


def test_fresh_start_on_a_steady_tone_settles_the_minimum_not_the_maximum():
    """A tone from sample 0 of a fresh stream: LAFmin reads the tone, LAFmax the meter's rise."""
    f = _one(np.stack([_sine(1000, 5000)] * 2))  # two 0.5 s frames
    rise = 10 * math.log10(1 - math.exp(-0.5 / 0.125))  # -0.08 dB after 0.5 s from 0 energy
    assert f["lafmin"][0] == pytest.approx(f["laeq"][0], abs=0.1)
    assert f["lafmax"][0] - f["laeq"][1] == pytest.approx(rise, abs=0.04)
    assert f["lafmax"][1] == pytest.approx(f["laeq"][1], abs=0.05)


def test_slow_time_weighting_follows_its_burst_reference():
    """A 200 ms burst reads -7.4 dB on Slow (Table 4 Slow reference, class 1 +-0.5 dB)."""
    rate = 16000
    t = np.arange(3 * rate) / rate
    steady = 10000 * np.sin(2 * np.pi * 4000 * t)
    x = np.zeros_like(steady)
    x[20000:20000 + 3200] = steady[:3200]  # in the second 1 s frame: the detector starts on silence
    feats = dsp.analyse_stream(x.reshape(3, -1), rate, time_weightings=("F", "S"))[0]
    la = dsp.analyse_stream(steady.reshape(2, -1), rate)[0]["laeq"][-1]
    assert feats["lasmax"].max() - la == pytest.approx(-7.4, abs=0.5)


def test_steady_tone_fast_max_and_min_equal_leq():
    """On a steady tone after settling, LAFmax and LAFmin equal LAeq within 0.1 dB."""
    f = _one(np.stack([_sine(1000, 5000, phase=0.0)] * 4))
    assert f["lafmax"][-1] == pytest.approx(f["laeq"][-1], abs=0.1)
    assert f["lafmin"][-1] == pytest.approx(f["laeq"][-1], abs=0.1)


def test_detector_block_evaluation_matches_the_sample_recursion():
    """The block-wise detector equals y[n] = y[n-1] + alpha (x^2 - y[n-1]) within 0.04 dB."""
    rng = np.random.default_rng(3)
    sq = (rng.standard_normal(8000) * np.repeat(rng.uniform(0.1, 3, 80), 100)) ** 2
    alpha = 1 - math.exp(-1 / (RATE * 0.125))
    y, ys = 1.0, []
    for v in sq:
        y += alpha * (v - y)
        ys.append(y)
    ext, y_end = levels.detector(sq.reshape(1, 2, 4000), RATE, 0.125, np.array([1.0]))
    ys = np.array(ys).reshape(2, 4000)
    assert 10 * np.log10(ext[0] / ys.max(axis=1)) == pytest.approx([0, 0], abs=0.04)
    assert 10 * np.log10(ext[1] / np.minimum(ys.min(axis=1), [1.0, ys[0, -1]])) == pytest.approx(
        [0, 0], abs=0.04)
    assert y_end[0] == pytest.approx(ys[-1, -1], rel=1e-9)


# ---- C peak: IEC 61672-1 Table 5 ---------------------------------------------------------------
def test_one_cycle_at_500_hz_c_peak_against_table_5():
    """LCpeak of one 500 Hz cycle is 3.5 dB above the steady LC (class 1 +-1 dB)."""
    rate = 48000
    t = np.arange(rate) / rate
    steady = 10000 * np.sin(2 * np.pi * 500 * t)
    lc = dsp.analyse_stream(steady.reshape(2, -1), rate)[0]["lceq"][-1]
    x = np.zeros(rate)
    x[12000:12000 + 96] = steady[:96]
    lcpeak = dsp.analyse_stream(x.reshape(2, -1), rate)[0]["lcpeak"].max()
    assert lcpeak - lc == pytest.approx(3.5, abs=1.0)


# ---- frames of one stream: state carried across frame edges ------------------------------------
@pytest.mark.parametrize("frame_n", [4000, 1000, 333])
def test_a_stream_cut_into_frames_measures_as_uncut(frame_n):
    """A tone plus noise cut into frames, fed one call at a time, equals the uncut analysis."""
    rng = np.random.default_rng(7)
    n = frame_n * 12
    x = (3000 * np.sin(2 * np.pi * 97.3 * np.arange(n) / RATE) + rng.normal(0, 500, n) + 800)
    whole, _ = dsp.analyse_stream(x.reshape(12, frame_n), RATE)
    state, pieces = None, []
    for i in range(12):
        feats, state = dsp.analyse_stream(x[i * frame_n:(i + 1) * frame_n], RATE, state)
        pieces.append(feats)
    for key in ("laeq", "lceq", "lafmax", "lafmin", "lcpeak"):
        got = np.array([p[key][0] for p in pieces])
        np.testing.assert_allclose(got, whole[key], atol=1e-6, err_msg=key)


def test_frame_edges_leave_no_transient():
    """Each 0.5 s frame of a long 63 Hz tone reads what the uncut signal holds there (0.05 dB)."""
    n = RATE * 6
    x = 8000 * np.sin(2 * np.pi * 63.0 * np.arange(n) / RATE) + 1500  # with a bias
    framed, _ = dsp.analyse_stream(x.reshape(12, -1), RATE)
    goal = 20 * np.log10(8000 / math.sqrt(2) / 32768) + float(dsp.a_weighting_db(63.0))
    np.testing.assert_allclose(framed["laeq"][1:], goal, atol=0.05)


def test_state_survives_json_round_trip():
    """A state saved as JSON (Redis) continues the stream exactly as the live object does."""
    x = _sine(440, 5000, n=8000)
    _, st = dsp.analyse_stream(x[:4000], RATE)
    a = dsp.analyse_stream(x[4000:], RATE, st)[0]
    b = dsp.analyse_stream(x[4000:], RATE, dsp.StreamState.from_json(st.to_json()))[0]
    assert "AF_min" in st.detector  # 0.5 s after a fresh start the minima detector still differs
    assert a["laeq"][0] == b["laeq"][0] and a["lafmax"][0] == b["lafmax"][0]
    assert a["lafmin"][0] == b["lafmin"][0]


def test_batches_continue_from_the_saved_state():
    """Two batches of one device, the second given the first's state, match one big batch."""
    t0 = 1_700_000_000_000
    x = np.concatenate([_sine(250 + 50 * i, 3000 + 500 * i) for i in range(6)])
    frames = [(("dev", 0, decode_frame(encode_frame(KIND_PCM, s, 9, t0 + 500 * s, RATE,
                                                     x[s * 4000:(s + 1) * 4000]))))
              for s in range(6)]
    cal = {"dev": DeviceCalibration(100.0, True, -60.0)}
    whole, _ = process_batch(frames, cal)
    first, states = process_batch(frames[:3], cal)
    assert state_keys_needed(frames[3:]) == [("dev", 9, 2)] and ("dev", 9, 2) in states
    second, _ = process_batch(frames[3:], cal, states)
    fresh, _ = process_batch(frames[3:], cal)
    for a, b in zip(whole, first + second, strict=True):
        # equal to rounding: the compiled pass cuts 3 and 6 frames into lanes differently
        assert a.seq == b.seq and a.laeq == pytest.approx(b.laeq, abs=1e-9)
        assert a.lafmax == pytest.approx(b.lafmax, abs=1e-9)
    assert fresh[0].lafmin != whole[3].lafmin  # without the state, the detector starts anew


# ---- spectrum -------------------------------------------------------------------------------------
@pytest.mark.parametrize("freq", [31.7, 440.0, 997.3, 3210.9])
def test_dominant_frequency_is_interpolated(freq):
    """The interpolated peak is within 0.02 bin of a clean tone (bin = 2 Hz; the bias is 0.016)."""
    assert _one(_sine(freq, 6000))["dominant_hz"][0] == pytest.approx(freq, abs=0.02 * RATE / 4000)


@pytest.mark.parametrize("n", [4, 8, 12, 15])
def test_frames_under_16_samples_have_no_dominant_frequency(n):
    """A 4 kHz tone at 16 kHz in frames of 4-15 samples has no dominant frequency (NaN)."""
    x = _sine(4000, 8000, n=3 * n, rate=16000, phase=0.7).reshape(3, n)
    assert np.isnan(_one(x, 16000)["dominant_hz"]).all()
    assert np.isnan(spectrum.welch_peak_hz(x[0].astype(float), 16000))


def test_a_16_sample_frame_has_a_dominant_frequency():
    """16 samples are enough: a 4 kHz tone at 16 kHz reads 4 kHz within 0.07 bin (1 kHz bins)."""
    x = _sine(4000, 8000, n=48, rate=16000, phase=0.7).reshape(3, 16)
    np.testing.assert_allclose(_one(x, 16000)["dominant_hz"], 4000.0, atol=70.0)


@pytest.mark.parametrize("freq, phase", [(2.0, 0.3), (RATE / 2, math.pi / 2)])
def test_peak_without_a_real_neighbour_on_each_side_is_nan(freq, phase):
    """A peak at bin 1 (left of it only the removed DC) or at fs/2 (last bin) reads NaN."""
    x = _sine(freq, 6000, phase=phase)
    assert np.isnan(_one(x)["dominant_hz"][0])
    ms = np.zeros((1, 2001))
    ms[0, 1 if freq < 100 else 2000], ms[0, 2 if freq < 100 else 1999] = 1.0, 0.5
    assert np.isnan(spectrum._peak_hz(ms, RATE, 4000)[0])  # the numpy path as well


@pytest.mark.parametrize("freq", [100.37, 1000.5, 2345.67])
def test_welch_peak_of_tones_off_the_bins(freq):
    """The Welch peak of a tone between bins is within 0.02 bin (fs / nperseg = 1 Hz)."""
    rng = np.random.default_rng(1)
    x = 8000 * np.sin(2 * np.pi * freq * np.arange(10 * RATE) / RATE + 0.4) + rng.normal(0, 30, 10 * RATE)
    assert spectrum.welch_peak_hz(x, RATE) == pytest.approx(freq, abs=0.02)


def test_centroid_of_a_tone_and_of_two_tones():
    """The centroid of one tone is its frequency; of two equal tones, their midpoint."""
    assert _one(_sine(1000, 8000))["centroid_hz"][0] == pytest.approx(1000, abs=5)
    two = _sine(500, 6000).astype(float) + _sine(1500, 6000)
    assert _one(two)["centroid_hz"][0] == pytest.approx(1000, abs=10)


def test_third_octave_bands_hold_a_tone_in_its_band():
    """A 1 kHz tone's level is in the 1 kHz band (0.1 dB); the bands sum to the frame's energy."""
    f = _one(_sine(1000, 8000))
    centres = band_centres_hz(RATE)
    bands = f["bands_db"][0]
    assert len(bands) == len(centres) and centres[-1] == 3150
    assert bands[centres.index(1000)] == pytest.approx(f["dbfs"][0], abs=0.1)
    others = np.delete(bands, centres.index(1000))
    assert others.max() < f["dbfs"][0] - 30


def test_band_centres_follow_the_rate():
    """Only complete bands are listed: up to 3150 Hz at 8 kHz, up to 20 kHz at 48 kHz."""
    assert band_centres_hz(8000)[0] == 20 and band_centres_hz(8000)[-1] == 3150
    assert band_centres_hz(16000)[-1] == 6300
    assert band_centres_hz(48000)[-1] == 20000


def test_band_blob_round_trip():
    """Bands are stored as int16 centi-dB: 2 bytes each, 0.01 dB resolution."""
    values = np.array([-150.0, -101.123, -3.01, 0.0, 12.346])
    blob = encode_bands(values)
    assert len(blob) == 10
    assert decode_bands(blob) == pytest.approx([-150.0, -101.12, -3.01, 0.0, 12.35], abs=0.006)


def test_chains_split_at_gaps_reboots_and_shape_changes():
    """A batch's frames form one chain per run of consecutive seq of one boot and frame shape."""
    from workers.preprocess import pcm_chains, predecessor

    def f(dev, boot, seq, n=4000):
        return (dev, 0, decode_frame(encode_frame(KIND_PCM, seq, boot, 0, RATE, np.zeros(n, "<i2"))))

    items = [f("a", 1, 5), f("a", 1, 3), f("a", 1, 4), f("a", 1, 4), f("a", 1, 7), f("a", 2, 0),
             f("b", 1, 8), f("b", 1, 9, n=2000)]
    chains = [[(d, fr.boot, fr.seq) for d, _, fr in ch] for ch in pcm_chains(items)]
    assert sorted(chains) == sorted([[("a", 1, 3), ("a", 1, 4), ("a", 1, 5)], [("a", 1, 7)],
                                     [("a", 2, 0)], [("b", 1, 8)], [("b", 1, 9)]])
    assert predecessor([f("a", 2, 0)]) == ("a", 2, 2**32 - 1)  # seq wraps at 2^32


def test_stream_states_round_trip_through_redis_keys():
    """States are saved under the key of the frame they follow, with a TTL, and read back."""
    from workers import streamstate

    class FakeRedis:
        def __init__(self):
            self.data, self.ttl = {}, {}

        def mget(self, keys):
            return [self.data.get(k) for k in keys]

        def register_script(self, source):
            assert source == streamstate.SAVE_SCRIPT  # what the script does, the fake does

            def run(keys, args):
                for k, v in zip(keys, args[1:], strict=True):
                    self.data[k], self.ttl[k] = v, args[0]
            return run

    r = FakeRedis()
    _, st = dsp.analyse_stream(_sine(300, 4000), RATE)
    streamstate.save(r, {("dev", 7, 41): st})
    assert list(r.data) == ["soundmon:dsp:dev:7:41"] and r.ttl["soundmon:dsp:dev:7:41"] == 60
    r.data["soundmon:dsp:dev:7:40"] = b"{not json"
    loaded = streamstate.load(r, [("dev", 7, 41), ("dev", 7, 40), ("dev", 7, 39)])
    assert list(loaded) == [("dev", 7, 41)]
    assert np.array_equal(loaded[("dev", 7, 41)].zi_c, st.zi_c)


# ---- the compiled pass against scipy (workers/kernels.py) ---------------------------------------
def _scipy_reference(x, rate, detector="A", tau=0.125):
    """One stream's LAeq, LCeq, LCpeak and detector extremes the plain way: scipy's sosfilt
    over the uncut stream (at rest on the first frame's mean), then levels.detector."""
    from scipy import signal

    from workers import weighting

    frames, n = x.shape
    sos_a, sos_c = weighting.design("A", rate), weighting.design("C", rate)
    flat = x.reshape(-1).astype(float)
    zi_c = signal.sosfilt_zi(sos_c) * flat[:n].mean()
    c = signal.sosfilt(sos_c, flat, zi=zi_c)[0]
    a = signal.sosfilt(sos_a[2:], c)
    sq = {"A": a, "C": c, "Z": (x - x.mean(axis=1, keepdims=True)).reshape(-1)}[detector] ** 2
    head = sq[: min(n, int(tau * rate))]
    # a fresh stream: the maxima from a detector at 0, the minima from one settled on the head
    high, _ = levels.detector(sq.reshape(1, frames, n), rate, tau, np.array([0.0]))
    low, _ = levels.detector(sq.reshape(1, frames, n), rate, tau, np.array([head.mean()]))
    c, a = c.reshape(frames, n), a.reshape(frames, n)
    return {"laeq": dsp.ms_to_db(np.mean(a * a, axis=1)), "lceq": dsp.ms_to_db(np.mean(c * c, axis=1)),
            "lcpeak": dsp.rms_to_db(np.abs(c).max(axis=1)), "max": dsp.ms_to_db(high[0]),
            "min": dsp.ms_to_db(low[1])}


@pytest.mark.parametrize("streams,frames,n,rate,detector", [
    (1, 12, 4000, 8000, "A"),  # one stream cut into 12 lanes: every lane but the first predicted
    (3, 4, 1001, 16000, "C"),  # 1001 samples: 7-sample detector blocks, not whole 4-sample tiles
    (2, 6, 2205, 44100, "Z"),
])
def test_compiled_pass_equals_scipy(streams, frames, n, rate, detector):
    """Every level of every frame equals scipy's sosfilt + the numpy detector within 1e-6 dB."""
    rng = np.random.default_rng(11)
    t = np.arange(frames * n) / rate
    x = np.stack([(4000 * np.sin(2 * np.pi * rng.uniform(30, rate / 3) * t) + rng.normal(0, 800, t.size)
                   + rng.uniform(-2000, 2000)).astype(np.int16).reshape(frames, n) for _ in range(streams)])
    got, _ = dsp.analyse_streams(x, rate, [None] * streams, detector_weighting=detector)
    key = "l" + detector.lower() + "f"
    for s in range(streams):
        ref = _scipy_reference(x[s], rate, detector)
        for mine, theirs in (("laeq", "laeq"), ("lceq", "lceq"), ("lcpeak", "lcpeak"),
                             (key + "max", "max"), (key + "min", "min")):
            np.testing.assert_allclose(got[mine][s], ref[theirs], atol=1e-6, err_msg=mine)


def test_compiled_spectrum_equals_numpy():
    """Bands, centroid and interpolated peak equal the plain numpy computation of the same rfft."""
    rng = np.random.default_rng(4)
    n, rate = 3000, 16000
    xd = rng.normal(0, 1000, (5, n)) + 3000 * np.sin(2 * np.pi * 1234.5 * np.arange(n) / rate)
    xd -= xd.mean(axis=1, keepdims=True)
    got = spectrum.frame_spectra(xd, rate)
    plan = spectrum._plan(n, float(rate))
    spec = np.fft.rfft(xd * plan.window, axis=1)
    ms = (spec.real**2 + spec.imag**2) * plan.scale
    bands = np.add.reduceat(ms, plan.starts, axis=1)[:, : len(plan.empty)]
    bands[:, plan.empty] = 0.0
    np.testing.assert_allclose(got["bands_db"], spectrum.bands_to_db(bands), atol=1e-9)
    np.testing.assert_allclose(got["centroid_hz"], ms @ plan.freqs / ms.sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(got["dominant_hz"], spectrum._peak_hz(ms, rate, n), rtol=1e-12)


def test_warm_up_compiles_what_the_first_frames_use():
    """After kernels.warm_up(), analysing device (int16) and file (float) frames compiles nothing new."""
    from workers import kernels

    compiled = (kernels.cascade, kernels.weighted_pass, kernels.head_sums, kernels.detector_extremes,
                kernels.frame_prep, kernels.spectral_features, kernels.to_lanes)
    kernels.warm_up()
    before = {f.__name__: len(f.signatures) for f in compiled}
    assert all(before.values())
    x = _sine(440, 3000, n=16000).reshape(4, 4000)
    dsp.analyse_streams(np.stack([x, x]), RATE, [None, None])  # 2 streams: segments, detector
    dsp.analyse_stream(x.astype(float), RATE, time_weightings=("F", "S"), detector_weighting="Z")
    assert {f.__name__: len(f.signatures) for f in compiled} == before


def test_preprocess_workers_warm_up_at_start(monkeypatch):
    """The Celery worker_init hook compiles the kernels for a preprocess worker, not for others."""
    from types import SimpleNamespace

    from soundmon import tasknames
    from workers import app as worker_app

    calls = []
    monkeypatch.setattr(worker_app.kernels, "warm_up", lambda: calls.append(1))

    def worker(*queues):
        return SimpleNamespace(app=SimpleNamespace(amqp=SimpleNamespace(
            queues=SimpleNamespace(consume_from={q: None for q in queues}))))

    worker_app._warm_up_dsp(worker(tasknames.ANALYZE_QUEUE))
    assert calls == []
    worker_app._warm_up_dsp(worker(tasknames.PREPROCESS_QUEUE))
    assert calls == [1]
