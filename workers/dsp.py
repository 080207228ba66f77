"""Pure, vectorised per-frame acoustics: DC removal, dBFS, A-weighting, dominant frequency.

Everything here works on numpy arrays of many frames at once (shape ``(n_frames, n_samples)``)
and touches no I/O, so it is tested on synthetic signals with known answers.

Conventions (shared/protocol.md section 3):

* dBFS = 20 log10(rms / 32768) with the frame's mean removed first; a full-scale sine is
  -3.01 dBFS, a full-scale square wave 0 dBFS.
* A-weighting follows the IEC 61672-1 Annex E analytic design goal. This first version
  applies it in the frequency domain: the frame's power spectrum (Parseval) is weighted bin
  by bin with |A(f)|^2. That is exact at every bin frequency up to fs/2, which is why it is
  chosen over a bilinear IIR (that one under-reads by up to several dB near fs/2 at the
  8-16 kHz rates an ESP32 ADC gives). It treats each frame on its own; a later version
  carries filter state across frames.
"""

from __future__ import annotations

import numpy as np

FULL_SCALE = 32768.0
#: Digital silence has rms 0 and log10(0) = -inf. We never store -inf: the rms is floored at
#: the rms of int16 quantisation noise (1 LSB / sqrt(12) = 0.289 counts, -101.1 dBFS) and the
#: frame is flagged below the noise floor instead.
QUANTISATION_RMS = 1.0 / np.sqrt(12.0)
#: The ESP32 maps 12-bit codes to int16 as (c - 2048) * 16, so its rails are -32768 and
#: +32752 (code 4095). Any sample at or beyond these values is treated as clipped.
CLIP_HIGH = 2047 * 16
CLIP_LOW = -32768

# IEC 61672-1:2013 Annex E pole frequencies in Hz (E.2, E.3)
_F1 = 20.598997
_F2 = 107.65265
_F3 = 737.86223
_F4 = 12194.217
# Normalisation so that A(1 kHz) = C(1 kHz) = 0 dB (Annex E: A1000 = -2.000 dB, C1000 = -0.062 dB)
_A1000 = -2.000
_C1000 = -0.062


def a_weighting_db(freq_hz: np.ndarray | float) -> np.ndarray:
    """A-weighting in dB at ``freq_hz`` (IEC 61672-1 Annex E, eq. E.6). -inf at 0 Hz."""
    f2 = np.square(np.asarray(freq_hz, dtype=float))
    with np.errstate(divide="ignore"):
        num = _F4**2 * f2**2
        den = (f2 + _F1**2) * np.sqrt((f2 + _F2**2) * (f2 + _F3**2)) * (f2 + _F4**2)
        return 20.0 * np.log10(num / den) - _A1000


def c_weighting_db(freq_hz: np.ndarray | float) -> np.ndarray:
    """C-weighting in dB at ``freq_hz`` (IEC 61672-1 Annex E, eq. E.1). -inf at 0 Hz."""
    f2 = np.square(np.asarray(freq_hz, dtype=float))
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(_F4**2 * f2 / ((f2 + _F1**2) * (f2 + _F4**2))) - _C1000


def rms_to_db(rms: np.ndarray) -> np.ndarray:
    """20 log10(rms / 32768), with rms floored at int16 quantisation noise (never -inf)."""
    return 20.0 * np.log10(np.maximum(rms, QUANTISATION_RMS) / FULL_SCALE)


def frame_features(samples: np.ndarray, rate_hz: float) -> dict[str, np.ndarray]:
    """Per-frame features of a batch of equal-length int16 frames.

    Parameters
    ----------
    samples : ndarray, shape (n_frames, n_samples), int16 counts
    rate_hz : float, the sample rate of every frame in the batch

    Returns
    -------
    dict of ndarrays, shape (n_frames,):
        ``dbfs`` (dB re full scale, Z), ``dbfs_a`` (A-weighted, dB re full scale),
        ``dominant_hz`` (NaN where undefined: silence or fewer than 4 samples),
        ``clip_frac`` (share of samples at the int16/ADC rails, 0..1),
        ``rms`` (counts, DC removed).
    """
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[np.newaxis, :]
    n_frames, n = x.shape
    clip_frac = (
        np.count_nonzero((x >= CLIP_HIGH) | (x <= CLIP_LOW), axis=1) / n
        if n
        else np.zeros(n_frames)
    )
    if n == 0:
        nan = np.full(n_frames, np.nan)
        floor = rms_to_db(np.zeros(n_frames))
        return {"dbfs": floor, "dbfs_a": floor.copy(), "dominant_hz": nan,
                "clip_frac": clip_frac, "rms": np.zeros(n_frames)}

    xf = x.astype(np.float64)
    xf -= xf.mean(axis=1, keepdims=True)  # the analog bias is never exactly mid-code
    rms = np.sqrt(np.mean(np.square(xf), axis=1))

    # Parseval on the one-sided spectrum: sum x^2 = (|X0|^2 + 2 sum |Xk|^2 + [|X_{n/2}|^2]) / n
    spec = np.fft.rfft(xf, axis=1)
    power = np.square(np.abs(spec))
    bin_weight = np.full(power.shape[1], 2.0)
    bin_weight[0] = 1.0
    if n % 2 == 0:
        bin_weight[-1] = 1.0
    freqs = np.fft.rfftfreq(n, d=1.0 / rate_hz)
    gain_a = np.zeros_like(freqs)
    gain_a[1:] = 10.0 ** (a_weighting_db(freqs[1:]) / 10.0)  # power gain |A(f)|^2
    rms_a = np.sqrt(power @ (bin_weight * gain_a) / n / n)

    return {
        "dbfs": rms_to_db(rms),
        "dbfs_a": rms_to_db(rms_a),
        "dominant_hz": dominant_frequency(xf, rate_hz, silent=rms < QUANTISATION_RMS),
        "clip_frac": clip_frac,
        "rms": rms,
    }


def dominant_frequency(
    x: np.ndarray, rate_hz: float, silent: np.ndarray | None = None
) -> np.ndarray:
    """Interpolated spectral peak in Hz, per frame.

    Hann window, then a parabola through the log-magnitude of the peak bin and its two
    neighbours: worst-case bias about 0.016 bin on a clean tone (shared/acoustics.md
    section 0). NaN for frames shorter than 4 samples or marked ``silent``.

    Parameters
    ----------
    x : ndarray, shape (n_frames, n_samples), DC removed
    rate_hz : float
    silent : ndarray of bool, shape (n_frames,), optional
    """
    n_frames, n = x.shape
    out = np.full(n_frames, np.nan)
    if n < 4:
        return out
    mag = np.abs(np.fft.rfft(x * np.hanning(n), axis=1))
    mag[:, 0] = 0.0  # DC is removed; its residue is never the "dominant frequency"
    k = np.argmax(mag, axis=1)
    rows = np.arange(n_frames)
    inner = (k > 0) & (k < mag.shape[1] - 1)
    delta = np.zeros(n_frames)
    if inner.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            lm = np.log(np.maximum(mag[rows[inner], k[inner] - 1], 1e-300))
            l0 = np.log(np.maximum(mag[rows[inner], k[inner]], 1e-300))
            lp = np.log(np.maximum(mag[rows[inner], k[inner] + 1], 1e-300))
            denom = lm - 2.0 * l0 + lp
            d = np.where(denom < 0, 0.5 * (lm - lp) / denom, 0.0)
        delta[inner] = np.clip(np.nan_to_num(d), -0.5, 0.5)
    out[:] = (k + delta) * rate_hz / n
    peak = mag[rows, k]
    out[peak <= 0] = np.nan
    if silent is not None:
        out[silent] = np.nan
    return out


def energetic_mean_db(levels_db: np.ndarray) -> float:
    """Leq of equal-duration levels: 10 log10(mean(10^(L/10))), never an arithmetic mean."""
    levels = np.asarray(levels_db, dtype=float)
    levels = levels[np.isfinite(levels)]
    if levels.size == 0:
        return float("nan")
    return float(10.0 * np.log10(np.mean(10.0 ** (levels / 10.0))))
