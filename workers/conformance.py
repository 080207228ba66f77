"""Measure the implemented frequency weightings against IEC 61672-1:2013 Table 3 (class 1).

Used by ``scripts/accuracy_table.py`` (the table in docs/measurement.md) and by the tests, so
both rest on the same measurement: steady tones at the exact base-10 frequencies
1000 * 10^(n/10) Hz are run through the real code path (``workers.dsp.analyse_streams``) and
their weighted level is compared with the tone's unweighted level plus the design goal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers import dsp, weighting

#: IEC 61672-1:2013 Table 3 class 1 acceptance limits (shared/acoustics.md 1.1), per nominal
#: frequency: (nominal Hz, band index n for the exact 1000 * 10^(n/10), upper dB, lower dB).
#: A lower limit of -inf means only the upper limit applies.
CLASS1: tuple[tuple[float, int, float, float], ...] = (
    (10, -20, 3.0, -np.inf), (12.5, -19, 2.5, -np.inf), (16, -18, 2.0, -4.0),
    (20, -17, 2.0, -2.0), (25, -16, 2.0, -1.5), (31.5, -15, 1.5, -1.5), (40, -14, 1.0, -1.0),
    (50, -13, 1.0, -1.0), (63, -12, 1.0, -1.0), (80, -11, 1.0, -1.0), (100, -10, 1.0, -1.0),
    (125, -9, 1.0, -1.0), (160, -8, 1.0, -1.0), (200, -7, 1.0, -1.0), (250, -6, 1.0, -1.0),
    (315, -5, 1.0, -1.0), (400, -4, 1.0, -1.0), (500, -3, 1.0, -1.0), (630, -2, 1.0, -1.0),
    (800, -1, 1.0, -1.0), (1000, 0, 0.7, -0.7), (1250, 1, 1.0, -1.0), (1600, 2, 1.0, -1.0),
    (2000, 3, 1.0, -1.0), (2500, 4, 1.0, -1.0), (3150, 5, 1.0, -1.0), (4000, 6, 1.0, -1.0),
    (5000, 7, 1.5, -1.5), (6300, 8, 1.5, -2.0), (8000, 9, 1.5, -2.5), (10000, 10, 2.0, -3.0),
    (12500, 11, 2.0, -5.0), (16000, 12, 2.5, -16.0), (20000, 13, 3.0, -np.inf),
)
#: Sample rates the accuracy table reports (the issue's list).
TABLE_RATES = (8000, 16000, 44100, 48000)
#: Tones: 6 frames of about 0.5 s, the last 4 measured (the filters have settled after 1 s).
TONE_S, SETTLE_S, FRAME_S = 3.0, 1.0, 0.5
AMPLITUDE = 10000.0  # counts: far above quantisation noise, far below clipping


@dataclass(frozen=True)
class Row:
    nominal_hz: float
    exact_hz: float
    goal_db: float
    deviation_db: float
    upper_db: float
    lower_db: float

    @property
    def ok(self) -> bool:
        return self.lower_db <= self.deviation_db <= self.upper_db


def exact_hz(band_index: int) -> float:
    """Exact base-10 frequency 1000 * 10^(n/10) Hz of Table 3."""
    return 1000.0 * 10 ** (band_index / 10)


def measured_gain_db(weighting_name: str, rate_hz: float, freqs_hz: np.ndarray) -> np.ndarray:
    """Weighted minus unweighted level of steady tones through ``dsp.analyse_streams``, in dB.

    Each tone's frames hold a whole number of its periods (to the nearest sample), so the
    measured mean square is the tone's, not a partial period's.
    """
    key = {"A": "laeq", "C": "lceq", "Z": "dbfs"}[weighting_name]
    n_frames = int(round(TONE_S / FRAME_S))
    skip = int(round(SETTLE_S / FRAME_S))
    out = []
    for f in np.asarray(freqs_hz, dtype=float):
        periods = max(1, round(FRAME_S * f))
        n_frame = int(round(periods / f * rate_hz))
        t = np.arange(n_frame * n_frames) / rate_hz
        tone = AMPLITUDE * np.sin(2 * np.pi * f * t)
        feats, _ = dsp.analyse_stream(tone.reshape(n_frames, n_frame), rate_hz)
        out.append(dsp.energetic_mean_db(feats[key][skip:]))
    return np.array(out) - float(dsp.rms_to_db(AMPLITUDE / np.sqrt(2)))


def table3(weighting_name: str, rate_hz: float) -> list[Row]:
    """Deviation from the design goal at every Table 3 frequency below 0.45 fs."""
    rows = [r for r in CLASS1 if exact_hz(r[1]) < weighting.FIT_TOP * rate_hz]
    freqs = np.array([exact_hz(r[1]) for r in rows])
    goal = weighting.design_goal_db(weighting_name, freqs)
    measured = measured_gain_db(weighting_name, rate_hz, freqs)
    return [Row(r[0], f, float(g), float(m - g), r[2], r[3])
            for r, f, g, m in zip(rows, freqs, goal, measured, strict=True)]
