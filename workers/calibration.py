"""Calibrator tone measurement (pure): K = L_ref - 20 log10(rms_tone / 32768).

The tone is measured narrow-band: its frequency from the Welch peak, then its amplitude by a
least-squares fit of a sinusoid at that frequency in each 0.5 s chunk. Hum, ADC noise and
harmonics do not inflate it as a broadband rms would (shared/acoustics.md section 5: broadband
noise 10 dB under the tone would bias K by 0.41 dB).

Errors
------
``CalibrationError`` (a ``ValueError``): the recording is refused, with a message saying why
and what to do (clipped, unsteady, off-frequency, too short, too noisy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from workers import spectrum
from workers.levels import FULL_SCALE, QUANTISATION_RMS

#: IEC 60942 class 1 calibrators are within +-1 % of their nominal frequency; we allow 2 % for
#: the ESP32's sample clock, which is not crystal-exact under MicroPython.
FREQUENCY_TOLERANCE = 0.02
#: A calibrator's level is stable to about 0.1 dB (IEC 60942); a spread of the 0.5 s chunk
#: levels beyond this means the coupler moved or the tone was switched mid-recording.
MAX_SPREAD_DB = 0.3
#: The tone must stand this far above everything else in the recording: at 20 dB even a
#: broadband rms would be biased by only 0.04 dB (acoustics.md section 5).
MIN_SNR_DB = 20.0
MIN_DURATION_S = 2.0  # IEC 61672 asks for a steady reading; 2 s gives 4 chunks at least
CHUNK_S = 0.5


class CalibrationError(ValueError):
    """The recording cannot calibrate the device; the message says why and what to do."""


@dataclass(frozen=True)
class ToneMeasurement:
    k_db: float  # the calibration offset: sound level in dB = dBFS + K
    reference_db: float
    tone_hz: float
    tone_dbfs: float  # narrow-band rms of the tone, dB re full scale
    spread_db: float  # max - min of the 0.5 s chunk levels
    snr_db: float  # tone over everything else
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) for k, v in asdict(self).items()}


def _chunk_amplitudes(x: np.ndarray, rate_hz: float, freq_hz: float, n_chunk: int) -> np.ndarray:
    """Least-squares amplitude of a sinusoid at ``freq_hz`` in each chunk (counts, peak)."""
    n_chunks = x.size // n_chunk
    t = np.arange(n_chunk) / rate_hz
    basis = np.stack([np.cos(2 * np.pi * freq_hz * t), np.sin(2 * np.pi * freq_hz * t),
                      np.ones(n_chunk)], axis=1)
    pinv = np.linalg.pinv(basis)  # (3, n_chunk): the same solve for every chunk
    coef = x[: n_chunks * n_chunk].reshape(n_chunks, n_chunk) @ pinv.T
    return np.hypot(coef[:, 0], coef[:, 1])


def measure_tone(x: np.ndarray, rate_hz: float, reference_db: float, expected_hz: float = 1000.0,
                 clip: tuple[float, float] = (-32768, 32752)) -> ToneMeasurement:
    """Measure a calibrator tone and derive K, or refuse the recording.

    Parameters
    ----------
    x : ndarray, shape (n,), counts (int16 scale)
    rate_hz : float
    reference_db : float, the calibrator's level in dB SPL (typically 94 or 114)
    expected_hz : float, the calibrator's nominal frequency (1000 Hz for most)
    clip : (low, high) counts at or beyond which a sample is clipped

    Raises
    ------
    CalibrationError
    """
    x = np.asarray(x, dtype=np.float64)
    duration = x.size / rate_hz
    if duration < MIN_DURATION_S:
        raise CalibrationError(f"only {duration:.2f} s of audio; record at least "
                               f"{MIN_DURATION_S:.0f} s of the calibrator tone")
    clipped = int(np.count_nonzero((x <= clip[0]) | (x >= clip[1])))
    if clipped:
        raise CalibrationError(
            f"clipped: {clipped} samples at full scale; lower the gain (or use a lower-level "
            "calibrator) so the tone stays inside the ADC's range, then calibrate again")
    xd = x - x.mean()
    if expected_hz >= rate_hz / 2:
        raise CalibrationError(f"a {expected_hz:g} Hz calibrator cannot be measured at "
                               f"{rate_hz:g} Hz sampling (Nyquist {rate_hz / 2:g} Hz)")
    tone_hz = spectrum.welch_peak_hz(xd, rate_hz)
    if not np.isfinite(tone_hz) or abs(tone_hz - expected_hz) > FREQUENCY_TOLERANCE * expected_hz:
        found = "no tone" if not np.isfinite(tone_hz) else f"the strongest tone is at {tone_hz:.1f} Hz"
        raise CalibrationError(
            f"off-frequency: {found}, expected {expected_hz:g} Hz +-{FREQUENCY_TOLERANCE:.0%}; "
            "is the calibrator on and seated on the microphone? (--frequency sets another "
            "nominal frequency)")
    n_chunk = int(round(CHUNK_S * rate_hz))
    amps = _chunk_amplitudes(xd, rate_hz, tone_hz, n_chunk)
    levels = 20 * np.log10(np.maximum(amps / np.sqrt(2), QUANTISATION_RMS) / FULL_SCALE)
    spread = float(levels.max() - levels.min())
    if spread > MAX_SPREAD_DB:
        raise CalibrationError(
            f"unsteady: the tone level varies by {spread:.2f} dB across the recording "
            f"(at most {MAX_SPREAD_DB} dB); hold the calibrator still and record again")
    tone_ms = float(np.mean(np.square(amps)) / 2)
    total_ms = float(np.mean(np.square(xd)))
    rest = max(total_ms - tone_ms, QUANTISATION_RMS**2)
    snr = 10 * np.log10(tone_ms / rest) if tone_ms > 0 else -np.inf
    if snr < MIN_SNR_DB:
        raise CalibrationError(
            f"too noisy: the tone is only {snr:.1f} dB above the rest of the signal (at least "
            f"{MIN_SNR_DB:.0f} dB); calibrate in a quieter place or with a louder calibrator")
    tone_dbfs = float(10 * np.log10(tone_ms / FULL_SCALE**2))
    return ToneMeasurement(k_db=reference_db - tone_dbfs, reference_db=reference_db,
                           tone_hz=float(tone_hz), tone_dbfs=tone_dbfs, spread_db=spread,
                           snr_db=float(snr), duration_s=duration)
