"""``soundmon analyze FILE``: the pipeline's DSP over a WAV or FLAC file, frame by frame.

The frames go through ``workers.dsp.analyse_streams``, the very function the preprocess
worker runs on a device's frames, with the filter state carried from frame to frame as the
pipeline carries it between a device's consecutive frames. So a file analysed here and the
same samples streamed by a device give the same numbers.

Levels are dB = dBFS + K with K = ``--calibration-db`` (0 when not given, and then every frame
is flagged ``uncalibrated``). A frame is flagged ``below_noise_floor`` when its dBFS is at the
digital floor (no more than int16 quantisation noise, -101.1 dBFS: digital silence), or with
``--sensor PROFILE`` at or below that sensor profile's noise floor, as the pipeline flags a
device's frames.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from soundmon.profiles import PROFILES
from workers import dsp, spectrum
from workers.levels import DIGITAL_FLOOR_DBFS, FILE_CLIP, FULL_SCALE

#: the upper frequency bound (20 kHz) can only be observed when fs/2 >= 20 kHz
AUDIBLE_TOP_HZ = 20000.0
#: L10/L50/L90 are percentiles of 1 s Leq values (as in the store's statistics)
PERCENTILE_BLOCK_S = 1.0
#: frame times in seconds keep this many decimals (1 us: distinct for any frame of a sample)
T_DECIMALS = 6
#: ``--sensor`` choices: the profiles that have a noise floor (not the lm393 comparator)
SENSORS = tuple(sorted(name for name, p in PROFILES.items() if p.noise_floor_dbfs is not None))


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # (n,), float64 counts: int16 full scale is 32768
    rate_hz: int


def read_audio(path: Path | str) -> Audio:
    """The first channel of a WAV (PCM 16/24/32-bit or float) or FLAC file, in int16 counts.

    Raises ``click.ClickException`` with the reader's reason for anything unreadable.
    """
    import soundfile  # imported here: only the CLI commands need libsndfile

    try:
        data, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, OSError) as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from exc
    # soundfile scales every PCM width to [-1, 1): x 32768 puts it on the int16 scale exactly
    return Audio(data[:, 0] * FULL_SCALE if data.size else np.zeros(0), int(rate))


def _r(v: float, nd: int = 2) -> float | None:
    return round(float(v), nd) if math.isfinite(v) else None


def percentiles_db(levels_db: np.ndarray) -> dict[str, float | None]:
    """L10, L50, L90: levels exceeded 10, 50, 90 % of the time (nearest rank, as in SQL)."""
    ordered = np.sort(np.asarray(levels_db, dtype=float))
    if ordered.size == 0:
        return {"l10": None, "l50": None, "l90": None}
    out = {}
    for name, exceeded in (("l10", 10), ("l50", 50), ("l90", 90)):
        rank = max(1, math.ceil((100 - exceeded) / 100 * ordered.size))  # 1-based, ascending
        out[name] = float(ordered[rank - 1])
    return out


def analyse_samples(x: np.ndarray, rate_hz: int, k_db: float | None = None, frame_ms: float = 1000,
                    weighting: str = "A", noise_floor_dbfs: float | None = None,
                    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-frame records and the whole-file summary (the ``--json`` lines without encoding).

    Parameters
    ----------
    x : ndarray, shape (n,), counts
    rate_hz : int
    k_db : float, optional; calibration offset (None: 0 and ``uncalibrated``)
    frame_ms : float; 0 = the whole signal is one frame
    weighting : {"A", "C", "Z"}; the weighting of ``lafmax`` and of L10/L50/L90
    noise_floor_dbfs : float, optional; frames at or below it (dBFS, unweighted) are flagged
        ``below_noise_floor`` (a sensor profile's floor); the digital floor always flags

    An empty signal gives no frames and a summary whose levels are all None (duration_s 0):
    nothing was measured, and the -101.1 dB floor would read as measured silence.
    """
    x = np.asarray(x, dtype=np.float64)
    k = 0.0 if k_db is None else float(k_db)
    n_frame = x.size if frame_ms == 0 else max(1, int(round(rate_hz * frame_ms / 1000)))
    n_frame = max(1, min(n_frame, x.size)) if x.size else 1
    kw: dict[str, Any] = dict(clip=FILE_CLIP, detector_weighting=weighting)
    flags_common = []
    if rate_hz / 2 < AUDIBLE_TOP_HZ:
        flags_common.append("nyquist_limited")
    if k_db is None:
        flags_common.append("uncalibrated")
    # the level of a frame of digital silence is the floor itself: compare with a hair of slack
    floor_db = max(DIGITAL_FLOOR_DBFS + 1e-6,
                   DIGITAL_FLOOR_DBFS if noise_floor_dbfs is None else float(noise_floor_dbfs))

    whole = x.size // n_frame
    parts: list[tuple[dict[str, np.ndarray], int]] = []
    state = None
    if whole:
        feats, state = dsp.analyse_stream(x[: whole * n_frame].reshape(whole, n_frame), rate_hz,
                                          state, **kw)
        parts.append((feats, n_frame))
    if x.size - whole * n_frame:
        feats, state = dsp.analyse_stream(x[whole * n_frame:], rate_hz, state, **kw)
        parts.append((feats, x.size - whole * n_frame))

    key_max = f"l{weighting.lower()}fmax"
    key_eq = {"A": "laeq", "C": "lceq", "Z": "dbfs"}[weighting]
    frames: list[dict[str, Any]] = []
    durations, laeq, lceq, lweq, lmax = [], [], [], [], []
    t_samples = 0
    for feats, n in parts:
        for i in range(len(feats["dbfs"])):
            flags = (["clipped"] if feats["clip_frac"][i] > 0 else [])
            if feats["dbfs"][i] <= floor_db:
                flags.append("below_noise_floor")
            flags += flags_common
            frames.append({
                "t": round(t_samples / rate_hz, T_DECIMALS),
                "dbfs": _r(feats["dbfs"][i]),
                "laeq": _r(feats["laeq"][i] + k),
                "lceq": _r(feats["lceq"][i] + k),
                "lzeq": _r(feats["dbfs"][i] + k),
                "lafmax": _r(feats[key_max][i] + k),
                "dominant_hz": _r(feats["dominant_hz"][i]),
                "flags": flags,
            })
            t_samples += n
            durations.append(n)
            laeq.append(feats["laeq"][i])
            lceq.append(feats["lceq"][i])
            lweq.append(feats[key_eq][i])
            lmax.append(feats[key_max][i])

    summary = {
        "duration_s": round(x.size / rate_hz, T_DECIMALS) if rate_hz else 0.0,
        "dbfs": _r(float(dsp.rms_to_db(np.std(x)))) if x.size else None,
    }
    summary["laeq"] = _r(dsp.energetic_mean_db(np.array(laeq), np.array(durations)) + k)
    summary["lceq"] = _r(dsp.energetic_mean_db(np.array(lceq), np.array(durations)) + k)
    summary["lzeq"] = None if summary["dbfs"] is None else round(summary["dbfs"] + k, 2)
    summary["lafmax"] = _r(max(lmax) + k) if lmax else None
    summary.update({name: None if v is None else round(v + k, 2)
                    for name, v in percentiles_db(_block_levels(x, rate_hz, weighting)).items()})
    summary["dominant_hz"] = _r(spectrum.welch_peak_hz(x - x.mean(), rate_hz)) if x.size else None
    return frames, summary


def _block_levels(x: np.ndarray, rate_hz: int, weighting: str) -> np.ndarray:
    """Leq of each whole 1 s block (weighting as asked); a file under 1 s is one block."""
    n_block = int(round(PERCENTILE_BLOCK_S * rate_hz))
    blocks = x.size // n_block
    key = {"A": "laeq", "C": "lceq", "Z": "dbfs"}[weighting]
    if blocks == 0:
        if x.size == 0:
            return np.zeros(0)
        return dsp.analyse_stream(x, rate_hz, clip=FILE_CLIP)[0][key]
    return dsp.analyse_stream(x[: blocks * n_block].reshape(blocks, n_block), rate_hz,
                              clip=FILE_CLIP)[0][key]


def _fmt(v: Any, width: int, nd: int = 1) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{nd}f}"


def render_table(frames: list[dict[str, Any]], summary: dict[str, Any], weighting: str) -> str:
    """A readable table of the frames and the summary."""
    w = weighting
    # as many decimals of t as the frames need (short frames: down to 1 us), at least 2
    nd = next((d for d in range(2, T_DECIMALS) if all(round(f["t"], d) == f["t"] for f in frames)),
              T_DECIMALS)
    tw = max(8, nd + 4)
    head = (f"{'t (s)':>{tw}} {'dBFS':>7} {'LAeq':>7} {'LCeq':>7} {'LZeq':>7} {f'L{w}Fmax':>7} "
            f"{'peak Hz':>9}  flags")
    lines = [head, "-" * len(head)]
    for f in frames:
        lines.append(f"{f['t']:>{tw}.{nd}f} {_fmt(f['dbfs'], 7)} {_fmt(f['laeq'], 7)} "
                     f"{_fmt(f['lceq'], 7)} {_fmt(f['lzeq'], 7)} {_fmt(f['lafmax'], 7)} "
                     f"{_fmt(f['dominant_hz'], 9)}  {','.join(f['flags'])}")
    s = summary
    lines += ["", f"whole file: {s['duration_s']:.2f} s, {_fmt(s['dbfs'], 0, 2).strip()} dBFS",
              f"  LAeq {_fmt(s['laeq'], 0, 2).strip()}  LCeq {_fmt(s['lceq'], 0, 2).strip()}  "
              f"LZeq {_fmt(s['lzeq'], 0, 2).strip()}  L{w}Fmax {_fmt(s['lafmax'], 0, 2).strip()} dB",
              f"  L{w}10 {_fmt(s['l10'], 0, 2).strip()}  L{w}50 {_fmt(s['l50'], 0, 2).strip()}  "
              f"L{w}90 {_fmt(s['l90'], 0, 2).strip()} dB (of 1 s L{w}eq)",
              f"  dominant {_fmt(s['dominant_hz'], 0, 2).strip()} Hz (Welch)"]
    return "\n".join(lines)


@click.command("analyze")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per frame, then a summary.")
@click.option("--calibration-db", "k_db", type=float, default=None,
              help="K in dB: levels are dBFS + K (default 0, flagged uncalibrated).")
@click.option("--frame-ms", type=click.FloatRange(min=0), default=1000, show_default=True,
              help="Frame length; 0 makes the whole file one frame.")
@click.option("--weighting", type=click.Choice(["A", "C", "Z"], case_sensitive=False), default="A",
              show_default=True, help="Weighting of the Fast maximum and of L10/L50/L90.")
@click.option("--sensor", type=click.Choice(SENSORS, case_sensitive=False), default=None,
              help="Flag frames at or below this sensor profile's noise floor (dBFS) as "
                   "below_noise_floor; without it only digital silence (-101.1 dBFS) is flagged.")
def analyze_command(file: Path, as_json: bool, k_db: float | None, frame_ms: float,
                    weighting: str, sensor: str | None) -> None:
    """Measure a WAV or FLAC file (first channel) exactly as the pipeline measures a device."""
    audio = read_audio(file)
    floor = None if sensor is None else PROFILES[sensor.lower()].noise_floor_dbfs
    frames, summary = analyse_samples(audio.samples, audio.rate_hz, k_db, frame_ms,
                                      weighting.upper(), floor)
    if as_json:
        for f in frames:
            click.echo(json.dumps(f))
        click.echo(json.dumps({"summary": summary}))
    else:
        click.echo(f"{file}: {audio.rate_hz} Hz, K = {k_db if k_db is not None else 0:g} dB")
        click.echo(render_table(frames, summary, weighting.upper()))
