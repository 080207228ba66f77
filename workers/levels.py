"""Levels in the time domain: dB conversions, energetic means and the exponential time weighting.

All functions are pure and vectorised. Sample values are in int16 counts (full scale 32768,
shared/protocol.md section 3); mean squares are in counts squared.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import signal

FULL_SCALE = 32768.0
#: Digital silence has rms 0 and log10(0) = -inf. We never store -inf: every level is floored
#: at the rms of int16 quantisation noise (1 LSB / sqrt(12) = 0.289 counts, -101.1 dBFS) and
#: the frame is flagged below the noise floor instead.
QUANTISATION_RMS = 1.0 / np.sqrt(12.0)
#: ... that floor in dB re full scale: -101.1 dBFS (digital silence reads exactly this)
DIGITAL_FLOOR_DBFS = float(20.0 * np.log10(QUANTISATION_RMS / 32768.0))
#: The ESP32 maps 12-bit codes to int16 as (c - 2048) * 16, so its rails are -32768 and
#: +32752 (code 4095). Any sample at or beyond these values is treated as clipped.
CLIP_HIGH = 2047 * 16
CLIP_LOW = -32768
#: Rails of a 16-bit file (or any other full-scale source): soundmon analyze uses these.
FILE_CLIP = (-32768.0, 32767.0)

#: IEC 61672-1 exponential time constants in seconds: Fast and Slow.
TIME_CONSTANTS_S = {"F": 0.125, "S": 1.0}
#: The detector is evaluated at the end of blocks of at most this long (see ``detector``):
#: the maximum inside a block is missed by at most 4.343 * 1 ms / 125 ms = 0.035 dB (Fast).
DETECTOR_BLOCK_S = 0.001


def rms_to_db(rms: np.ndarray | float) -> np.ndarray:
    """20 log10(rms / 32768) in dB re full scale, rms floored at quantisation noise (never -inf)."""
    return 20.0 * np.log10(np.maximum(rms, QUANTISATION_RMS) / FULL_SCALE)


def ms_to_db(ms: np.ndarray | float) -> np.ndarray:
    """10 log10(ms / 32768^2): a mean square in counts^2 as dB re full scale (floored)."""
    return 10.0 * np.log10(np.maximum(ms, QUANTISATION_RMS**2) / FULL_SCALE**2)


def energetic_mean_db(levels_db: np.ndarray, durations: np.ndarray | None = None) -> float:
    """Leq of levels: 10 log10(sum(T_i 10^(L_i/10)) / sum(T_i)), never an arithmetic mean.

    Parameters
    ----------
    levels_db : ndarray, shape (n,), dB; non-finite values are ignored
    durations : ndarray, shape (n,), optional; any time unit (equal durations if omitted)

    Returns
    -------
    float, dB; NaN when no finite level is given.
    """
    levels = np.asarray(levels_db, dtype=float)
    weights = np.ones_like(levels) if durations is None else np.asarray(durations, dtype=float)
    ok = np.isfinite(levels)
    if not ok.any() or weights[ok].sum() <= 0:
        return float("nan")
    ref = levels[ok].max()  # factor the largest level out: no overflow for any dB value
    energy = np.sum(weights[ok] * 10.0 ** ((levels[ok] - ref) / 10.0)) / weights[ok].sum()
    return float(ref + 10.0 * np.log10(energy))


def time_constant_alpha(rate_hz: float, tau_s: float) -> float:
    """Per-sample smoothing factor 1 - exp(-1 / (fs tau)) of the exponential detector."""
    return float(-np.expm1(-1.0 / (rate_hz * tau_s)))


def block_length(n_samples: int, rate_hz: float) -> int:
    """The largest divisor of ``n_samples`` not longer than DETECTOR_BLOCK_S (at least 1)."""
    top = max(1, int(rate_hz * DETECTOR_BLOCK_S))
    return next(b for b in range(min(top, max(n_samples, 1)), 0, -1) if n_samples % b == 0)


@lru_cache(maxsize=64)
def _block_weights(block: int, alpha: float) -> np.ndarray:
    # y_end = (1-alpha)^B y_start + sum_i alpha (1-alpha)^(B-1-i) x_i^2: the exact recursion,
    # summed over a block in one dot product
    return alpha * (1.0 - alpha) ** np.arange(block - 1, -1, -1)


def detector(sq: np.ndarray, rate_hz: float, tau_s: float,
             y0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exponential time weighting (IEC 61672-1 5.8): tau dy/dt + y = x^2, per frame max and min.

    The discrete recursion y[n] = y[n-1] + alpha (x^2[n] - y[n-1]) is evaluated exactly at the
    end of every block of ``block_length`` samples (one matrix product, then a short
    recursion over blocks), and each frame's extremes are taken over its block ends and the
    value at its start. Between two block ends y can fall by at most (1-alpha)^B, so the
    maximum and minimum are within 0.035 dB (Fast) of the per-sample values.

    Parameters
    ----------
    sq : ndarray, shape (n_streams, n_frames, n_samples)
        Squared weighted signal of consecutive frames of each stream, counts^2.
    rate_hz, tau_s : float
    y0 : ndarray, shape (n_streams,)
        Detector value (counts^2) of each stream just before its first sample.

    Returns
    -------
    extremes : ndarray, shape (2, n_streams * n_frames), counts^2: maxima, then minima.
    y_end : ndarray, shape (n_streams,), the detector after the last sample (the next state).
    """
    n_streams, n_frames, n = sq.shape
    alpha = time_constant_alpha(rate_hz, tau_s)
    block = block_length(n, rate_hz)
    per_frame = n // block
    u = (sq.reshape(-1, block) @ _block_weights(block, alpha)).reshape(n_streams, -1)
    decay = (1.0 - alpha) ** block
    y0 = np.asarray(y0, dtype=float)
    y, _ = signal.lfilter([1.0], [1.0, -decay], u, axis=1, zi=(decay * y0)[:, np.newaxis])
    y = y.reshape(n_streams, n_frames, per_frame)
    starts = np.concatenate([y0[:, np.newaxis], y[:, :-1, -1]], axis=1)
    extremes = np.stack([np.maximum(y.max(axis=2), starts).ravel(),
                         np.minimum(y.min(axis=2), starts).ravel()])
    return extremes, y[:, -1, -1].copy()
