"""Spectra per frame: interpolated dominant frequency, spectral centroid, 1/3-octave band levels.

One Hann-windowed rfft per frame feeds all three. Band levels are unweighted (Z) mean squares
in dB re full scale; they are stored as int16 centi-dB (``encode_bands``) and the band list
is derived from the sample rate (``band_centres_hz``), so a row carries 2 bytes per band.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import signal

from soundmon.bands import (  # noqa: F401  (re-exported)
    BAND_FLOOR_DB,
    BAND_INDEX,
    band_centres_hz,
    decode_bands,
    encode_bands,
)
from workers import kernels

#: Frames shorter than this get no dominant frequency (NaN, null in JSON). Under 16 samples
#: the Hann main lobe (4 bins wide) covers half of the n/2 + 1 bins or more and the tone's
#: mirror image at -f overlaps it: a 1 kHz tone in a 4-sample frame at 16 kHz peaked at
#: 6000 Hz, and with 6-10 samples tones read up to 0.85 bin off. From 16 samples on (9 bins)
#: a clean tone reads within half a bin, within 0.07 bin when it is at least 2 bins from DC
#: and from fs/2 (measured). The parabola also needs a real bin on both sides of the peak:
#: a peak at bin 1 (whose left neighbour is the removed DC) or at the last bin gives NaN.
MIN_PEAK_SAMPLES = 16


@dataclass(frozen=True)
class _Plan:
    """Everything about an n-point spectrum at one rate that does not depend on the data."""

    window: np.ndarray  # (n,) Hann (flat under 4 samples)
    scale: np.ndarray  # (n_bins,) |X|^2 -> one-sided mean square per bin; 0 at DC
    freqs: np.ndarray  # (n_bins,) Hz
    starts: np.ndarray  # reduceat indices: each band's first bin, then the last band's end
    empty: np.ndarray  # (n_bands,) bool: bands without a bin (short frames, low bands)


@lru_cache(maxsize=32)
def _plan(n: int, rate_hz: float) -> _Plan:
    w = window(n)
    n_bins = n // 2 + 1
    # one-sided mean square per bin: the bins add up to the frame's mean square (Parseval,
    # normalised by the window's energy)
    scale = np.full(n_bins, 2.0 / (n * float(np.sum(w * w))))
    if n % 2 == 0:
        scale[-1] /= 2.0
    scale[0] = 0.0  # DC is removed; its residue is neither a peak nor a band
    freqs = np.fft.rfftfreq(n, 1.0 / rate_hz)
    count = len(band_centres_hz(rate_hz))
    exact = 1000.0 * 10 ** (np.asarray(BAND_INDEX[:count]) / 10)
    lo = np.searchsorted(freqs, exact * 10 ** (-0.05))
    hi = np.searchsorted(freqs, exact * 10 ** 0.05)
    # bands are contiguous (each one's upper edge is the next one's lower edge), so one
    # reduceat over [lo_0, lo_1, ..., lo_last, hi_last) sums them all (for an odd n the very
    # last bin, just under fs/2, can fall outside the last band: a bin of 2/n of the band)
    starts = np.minimum(np.append(lo, hi[-1:]), n_bins - 1) if count else np.zeros(0, int)
    empty = (hi - lo) <= 0
    if not (count and len(starts) > 1 and starts[-1] > starts[0]):  # no band has a bin
        empty[:] = True
    return _Plan(w, scale, freqs, starts.astype(np.int64), empty)


@lru_cache(maxsize=32)
def window(n: int) -> np.ndarray:
    """The analysis window of an n-sample frame (Hann; flat under 4 samples), shape (n,)."""
    # a symmetric Hann window of fewer than 4 samples is (almost) all zeros: use a flat one
    w = signal.get_window("hann", n, fftbins=False) if n >= 4 else np.ones(n)
    w.flags.writeable = False
    return w


def frame_spectra(xd: np.ndarray, rate_hz: float) -> dict[str, np.ndarray]:
    """Dominant frequency, centroid and band levels of DC-free frames.

    Parameters
    ----------
    xd : ndarray, shape (n_frames, n_samples), counts, mean removed
    rate_hz : float

    Returns
    -------
    dict:
        ``dominant_hz`` (n_frames,), Hz, NaN for frames under MIN_PEAK_SAMPLES, without
        power, or with the largest bin at bin 1 or at the last bin;
        ``centroid_hz`` (n_frames,), Hz, NaN without power;
        ``bands_db`` (n_frames, n_bands), dB re full scale (Z), floored at BAND_FLOOR_DB.
    """
    n_frames, n = xd.shape
    if n == 0:
        n_bands = len(band_centres_hz(rate_hz))
        nan = np.full(n_frames, np.nan)
        return {"dominant_hz": nan, "centroid_hz": nan.copy(),
                "bands_db": np.full((n_frames, n_bands), BAND_FLOOR_DB)}
    return windowed_spectra(xd * window(n), rate_hz)


def windowed_spectra(xw: np.ndarray, rate_hz: float) -> dict[str, np.ndarray]:
    """``frame_spectra`` of frames already multiplied by ``window(n)`` (xw: (n_frames, n), n > 0)."""
    n_frames, n = xw.shape
    band_ms = np.empty((n_frames, len(band_centres_hz(rate_hz))))
    out = np.empty((n_frames, 2))
    windowed_features(xw, rate_hz, band_ms, out)
    return {"dominant_hz": out[:, 1], "centroid_hz": out[:, 0], "bands_db": bands_to_db(band_ms)}


def windowed_features(xw: np.ndarray, rate_hz: float, band_ms: np.ndarray, out: np.ndarray) -> None:
    """The spectral features of windowed frames, written into arrays the caller owns.

    ``xw`` (n_frames, n > 0); ``band_ms`` (n_frames, n_bands) gets the band mean squares
    (counts^2), ``out`` (n_frames, 2) the centroid and the dominant frequency (Hz; NaN as in
    ``frame_spectra``).
    """
    n_frames, n = xw.shape
    plan = _plan(n, float(rate_hz))
    spec = np.fft.rfft(xw, axis=1, out=kernels.scratch("spectrum", (n_frames, n // 2 + 1), complex))
    kernels.spectral_features(spec, plan.scale, plan.freqs, plan.starts, plan.empty,
                              float(rate_hz) / n, band_ms, out)
    if n < MIN_PEAK_SAMPLES:
        out[:, 1] = np.nan


def bands_to_db(band_ms: np.ndarray) -> np.ndarray:
    """Band mean squares (counts^2) -> dB re full scale, floored at BAND_FLOOR_DB."""
    with np.errstate(divide="ignore"):
        return np.maximum(10.0 * np.log10(band_ms * (1.0 / 32768.0**2)), BAND_FLOOR_DB)


def _peak_hz(ms_bins: np.ndarray, rate_hz: float, n: int) -> np.ndarray:
    """Interpolated peak: a parabola through the log power of the largest bin and its neighbours.

    On a Hann-windowed spectrum the worst-case bias is about 0.016 bin on a clean tone
    (shared/acoustics.md section 6); the log of power and of magnitude give the same vertex.
    NaN as ``frame_spectra`` says (n under MIN_PEAK_SAMPLES, no power, the largest bin at
    bin 1 or at the last bin); bin 0 (DC) must hold 0.
    """
    n_frames, n_bins = ms_bins.shape
    k = np.argmax(ms_bins, axis=1)
    rows = np.arange(n_frames)
    peak = ms_bins[rows, k]
    inner = (k > 1) & (k < n_bins - 1)
    km, kp = np.clip(k - 1, 0, n_bins - 1), np.clip(k + 1, 0, n_bins - 1)
    tiny = 1e-300  # log(0) guard; a zero neighbour just pins the vertex to the peak bin
    lm = np.log(np.maximum(ms_bins[rows, km], tiny))
    l0 = np.log(np.maximum(peak, tiny))
    lp = np.log(np.maximum(ms_bins[rows, kp], tiny))
    denom = lm - 2.0 * l0 + lp
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(inner & (denom < 0), 0.5 * (lm - lp) / np.where(denom < 0, denom, -1.0),
                         0.0)
    out = (k + np.clip(delta, -0.5, 0.5)) * rate_hz / n
    return np.where((peak > 0) & inner & (n >= MIN_PEAK_SAMPLES), out, np.nan)


def welch_peak_hz(x: np.ndarray, rate_hz: float, segment_s: float = 1.0) -> float:
    """Interpolated peak of the Welch spectrum (Hann, 50 % overlap) of a long signal, in Hz.

    Averaging segments lowers the noise of the estimate; the parabola on log power keeps the
    bias under 0.02 bin of fs / nperseg. NaN for signals under MIN_PEAK_SAMPLES, without
    power, or with the peak at bin 1 or the last bin of the segments.
    """
    x = np.asarray(x, dtype=float)
    if x.size < MIN_PEAK_SAMPLES:
        return float("nan")
    nperseg = min(x.size, max(MIN_PEAK_SAMPLES, int(round(segment_s * rate_hz))))
    freqs, psd = signal.welch(x, fs=rate_hz, window="hann", nperseg=nperseg, detrend="constant")
    psd = psd.copy()
    psd[0] = 0.0
    if not np.any(psd > 0):
        return float("nan")
    # welch's frequency grid is k * fs / nperseg, as for one frame of nperseg samples
    return float(_peak_hz(psd[np.newaxis, :], rate_hz, nperseg)[0])
