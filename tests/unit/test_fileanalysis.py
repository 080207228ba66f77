"""`soundmon analyze` and `soundmon calibrate --file` on real WAV/FLAC files written with soundfile."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from soundmon.protocol import KIND_PCM, decode_frame, encode_frame
from soundmon.store import DeviceCalibration, SQLiteStore
from workers.calibrate_cmd import calibrate_command
from workers.calibration import CalibrationError, measure_tone
from workers.fileanalysis import analyse_samples, analyze_command
from workers.preprocess import process_batch

FRAME_KEYS = {"t", "dbfs", "laeq", "lceq", "lzeq", "lafmax", "dominant_hz", "flags"}
SUMMARY_KEYS = {"duration_s", "dbfs", "laeq", "lceq", "lzeq", "lafmax", "l10", "l50", "l90",
                "dominant_hz"}


def tone(freq, amp, seconds, rate, phase=0.0):
    return amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate + phase)


def run(*args):
    result = CliRunner().invoke(analyze_command, [str(a) for a in args])
    return result


def json_lines(result):
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    return lines[:-1], lines[-1]["summary"]


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_wav_formats_read_the_same_level(tmp_path, subtype):
    """A -13 dBFS 1 kHz tone reads -13.01 +- 0.01 dBFS from WAV PCM 16/24/32-bit and float."""
    path = tmp_path / f"t-{subtype}.wav"
    amp = 10 ** (-10 / 20)  # peak 0.316 FS: rms -13.01 dBFS
    sf.write(path, tone(1000, amp, 2.0, 16000), 16000, subtype=subtype)
    frames, summary = json_lines(run(path, "--json"))
    assert len(frames) == 2 and set(frames[0]) == FRAME_KEYS and set(summary) == SUMMARY_KEYS
    assert summary["dbfs"] == pytest.approx(-13.01, abs=0.01)
    assert summary["laeq"] == pytest.approx(-13.01, abs=0.02)  # A(1 kHz) = 0
    assert summary["dominant_hz"] == pytest.approx(1000, abs=0.05)
    assert frames[1]["t"] == 1.0 and "uncalibrated" in frames[0]["flags"]


def test_flac_first_channel_only(tmp_path):
    """A stereo FLAC is measured on its first channel."""
    path = tmp_path / "t.flac"
    left, right = tone(440, 0.1, 1.0, 8000), tone(2000, 0.5, 1.0, 8000)
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="PCM_16")
    frames, summary = json_lines(run(path, "--json"))
    assert summary["dominant_hz"] == pytest.approx(440, abs=0.05)
    assert summary["dbfs"] == pytest.approx(20 * math.log10(0.1 / math.sqrt(2)), abs=0.01)


def test_calibration_offset_frame_length_and_leq(tmp_path):
    """1 s at 60 dB then 1 s at 80 dB: frames 60 and 80, summary LAeq 77.03 and L10 80."""
    rate = 16000
    quiet, loud = tone(1000, 0.01, 1.0, rate), tone(1000, 0.1, 1.0, rate)
    path = tmp_path / "steps.wav"
    sf.write(path, np.concatenate([quiet, loud]), rate, subtype="FLOAT")
    k = 60.0 - 20 * math.log10(0.01 / math.sqrt(2))
    frames, summary = json_lines(run(path, "--json", "--calibration-db", k))
    assert [f["laeq"] for f in frames] == pytest.approx([60.0, 80.0], abs=0.02)
    assert summary["laeq"] == pytest.approx(77.03, abs=0.02)
    assert summary["l10"] == pytest.approx(80.0, abs=0.02)
    assert "uncalibrated" not in frames[0]["flags"]
    half, _ = json_lines(run(path, "--json", "--frame-ms", 500))
    assert [f["t"] for f in half] == [0.0, 0.5, 1.0, 1.5]
    one, whole = json_lines(run(path, "--json", "--frame-ms", 0))
    assert len(one) == 1 and one[0]["laeq"] == pytest.approx(whole["laeq"], abs=0.01)


def test_too_short_frames_have_no_dominant_frequency(tmp_path):
    """Frames of 2 samples get levels but dominant_hz null; nothing is NaN."""
    path = tmp_path / "short.wav"
    sf.write(path, tone(1000, 0.3, 0.01, 8000), 8000, subtype="PCM_16")
    result = run(path, "--json", "--frame-ms", 0.25)
    assert result.exit_code == 0 and "NaN" not in result.output
    frames, _ = json_lines(result)
    assert frames[0]["dominant_hz"] is None and frames[0]["dbfs"] is not None


@pytest.mark.parametrize("frame_ms, has_peak", [(0.25, False), (0.5, False), (0.9375, False),
                                                (1.0, True)])
def test_dominant_frequency_needs_16_samples(tmp_path, frame_ms, has_peak):
    """A 4 kHz tone at 16 kHz: frames of 4, 8, 15 samples have dominant_hz null, 16 read 4 kHz."""
    path = tmp_path / "tone.wav"
    sf.write(path, tone(4000, 0.3, 0.02, 16000, phase=0.7), 16000, subtype="FLOAT")
    frames, _ = json_lines(run(path, "--json", "--frame-ms", frame_ms))
    peaks = [f["dominant_hz"] for f in frames if f["t"] < 0.015]  # whole frames
    if has_peak:
        assert peaks == pytest.approx([4000.0] * len(peaks), abs=0.07 * 1000)  # bin = 1 kHz
    else:
        assert peaks == [None] * len(peaks)


def test_frame_times_stay_distinct_for_short_frames(tmp_path):
    """With --frame-ms 0.25 every frame has its own t, to the microsecond."""
    path = tmp_path / "short.wav"
    sf.write(path, tone(1000, 0.3, 0.002, 8000), 8000, subtype="PCM_16")
    frames, _ = json_lines(run(path, "--json", "--frame-ms", 0.25))
    assert [f["t"] for f in frames] == [0.0, 0.00025, 0.0005, 0.00075, 0.001, 0.00125, 0.0015,
                                        0.00175]
    table = run(path, "--frame-ms", 0.25)
    assert table.exit_code == 0 and "0.00025" in table.output


def test_digital_silence_is_below_the_noise_floor(tmp_path):
    """Frames of digital silence are flagged below_noise_floor; a tone's frames are not."""
    path = tmp_path / "gap.wav"
    x = np.concatenate([tone(1000, 0.1, 1.0, 8000), np.zeros(8000)])
    sf.write(path, x, 8000, subtype="PCM_16")
    frames, _ = json_lines(run(path, "--json"))
    assert frames[1]["dbfs"] == pytest.approx(-101.1, abs=0.05)
    assert ["below_noise_floor" in f["flags"] for f in frames] == [False, True]


def test_sensor_option_flags_frames_under_its_noise_floor(tmp_path):
    """--sensor max4466 flags a -60 dBFS frame (its floor is -56.7 dBFS), without it nothing is."""
    path = tmp_path / "quiet.wav"
    amp = 10 ** (-60 / 20) * math.sqrt(2)  # rms -60 dBFS
    sf.write(path, np.concatenate([tone(1000, amp, 1.0, 8000), tone(1000, 0.1, 1.0, 8000)]), 8000,
             subtype="FLOAT")
    plain, _ = json_lines(run(path, "--json"))
    assert not any("below_noise_floor" in f["flags"] for f in plain)
    frames, _ = json_lines(run(path, "--json", "--sensor", "max4466"))
    assert ["below_noise_floor" in f["flags"] for f in frames] == [True, False]
    assert run(path, "--sensor", "lm393").exit_code == 2  # a comparator has no floor in dBFS


def test_empty_file_has_no_levels(tmp_path):
    """An empty WAV gives no frames and a summary with duration 0 and every level null."""
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0), 8000, subtype="PCM_16")
    frames, summary = json_lines(run(path, "--json"))
    assert frames == [] and set(summary) == SUMMARY_KEYS
    assert summary == {k: None for k in SUMMARY_KEYS} | {"duration_s": 0.0}
    assert run(path).exit_code == 0


def test_weighting_option_and_table(tmp_path):
    """--weighting C changes the Fast maximum; the readable table names its columns."""
    path = tmp_path / "low.wav"
    sf.write(path, tone(50, 0.3, 2.0, 8000), 8000, subtype="PCM_16")
    a = json_lines(run(path, "--json"))[0][-1]  # the second second: filters have settled
    c = json_lines(run(path, "--json", "--weighting", "C"))[0][-1]
    assert a["lafmax"] == pytest.approx(a["laeq"], abs=0.1)  # a steady tone
    assert c["lafmax"] == pytest.approx(c["lceq"], abs=0.1)  # C: -1.3 dB at 50 Hz, A: -30.2
    table = run(path)
    assert table.exit_code == 0 and "LAeq" in table.output and "whole file" in table.output


def test_unreadable_file_is_a_clear_error(tmp_path):
    """A file that is not audio exits non-zero with the reason."""
    path = tmp_path / "x.wav"
    path.write_text("not audio")
    result = run(path)
    assert result.exit_code != 0 and "cannot read" in result.output


def test_file_and_pipeline_give_the_same_numbers():
    """The same samples as 0.5 s device frames and as a file analysed at 500 ms match exactly."""
    rate, k = 8000, 100.0
    rng = np.random.default_rng(5)
    x = np.round(tone(700, 6000, 3.0, rate) + rng.normal(0, 300, 3 * rate) + 900).astype(np.int16)
    decoded = [("dev", 0, decode_frame(encode_frame(KIND_PCM, s, 3, 1000 + 500 * s, rate,
                                                     x[s * 4000:(s + 1) * 4000]))) for s in range(6)]
    rows, _ = process_batch(decoded, {"dev": DeviceCalibration(k, True, None)})
    frames, _ = analyse_samples(x.astype(float), rate, k, 500)
    for r, f in zip(rows, frames, strict=True):
        assert f["laeq"] == pytest.approx(r.laeq, abs=0.006)
        assert f["lceq"] == pytest.approx(r.lceq, abs=0.006)
        assert f["lafmax"] == pytest.approx(r.lafmax, abs=0.006)
        assert f["dominant_hz"] == pytest.approx(r.dominant_hz, abs=0.006)


# ---- calibration ---------------------------------------------------------------------------
def test_calibration_round_trip(tmp_path):
    """K from a 94 dB recording makes the same tone read 94.00 dB and a tone 20 dB lower 74.00."""
    rate = 16000
    rng = np.random.default_rng(2)
    cal = tone(1000, 0.05, 5.0, rate, phase=0.3) + rng.normal(0, 0.0003, 5 * rate)
    path = tmp_path / "cal.wav"
    sf.write(path, cal, rate, subtype="PCM_16")
    result = CliRunner().invoke(calibrate_command, ["--device", "mic1", "--reference-db", "94",
                                                    "--file", str(path), "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    store = SQLiteStore(tmp_path / "soundmon.db")
    k = store.calibrations(["mic1"])["mic1"].k_db
    assert k == pytest.approx(94 - 20 * math.log10(0.05 / math.sqrt(2)), abs=0.01)
    _, s94 = analyse_samples(cal * 32768, rate, k, 1000)
    _, s74 = analyse_samples(tone(1000, 0.005, 2.0, rate) * 32768, rate, k, 1000)
    assert s94["lzeq"] == pytest.approx(94.0, abs=0.02) and s74["laeq"] == pytest.approx(74.0, abs=0.02)
    (entry,) = store.calibration_history("mic1")
    assert entry["reference_db"] == 94 and entry["source"] == "calibrate:file"
    assert entry["detail"]["tone_hz"] == pytest.approx(1000, abs=0.05)

    sf.write(path, cal * 10 ** (0.6 / 20), rate, subtype="PCM_16")  # the chain gained 0.6 dB
    again = CliRunner().invoke(calibrate_command, ["--device", "mic1", "--reference-db", "94",
                                                   "--file", str(path), "--data", str(tmp_path)])
    assert again.exit_code == 0 and "drift -0.60 dB" in again.output
    assert "beyond 0.5 dB" in again.output
    assert len(store.calibration_history("mic1")) == 2


@pytest.mark.parametrize("case, needle", [
    ("clipped", "clipped"), ("off", "off-frequency"), ("unsteady", "unsteady"),
    ("noisy", "too noisy"), ("short", "at least"),
])
def test_calibration_refuses_bad_recordings(case, needle):
    """Clipped, off-frequency, unsteady, noisy and too-short recordings are refused, saying why."""
    rate = 16000
    rng = np.random.default_rng(4)
    x = tone(1000, 3000, 4.0, rate)
    if case == "clipped":
        x = np.clip(tone(1000, 40000, 4.0, rate), -32768, 32752)
    elif case == "off":
        x = tone(1100, 3000, 4.0, rate)
    elif case == "unsteady":
        x = x * np.where(np.arange(x.size) < x.size // 2, 1.0, 1.1)
    elif case == "noisy":
        x = x + rng.normal(0, 1500, x.size)
    elif case == "short":
        x = x[: rate]
    with pytest.raises(CalibrationError, match=needle):
        measure_tone(x, rate, 94.0)


def test_calibrate_needs_exactly_one_source(tmp_path):
    """Neither or both of --file and --live is a usage error."""
    result = CliRunner().invoke(calibrate_command, ["--device", "mic1", "--reference-db", "94"])
    assert result.exit_code == 2 and "exactly one" in result.output
