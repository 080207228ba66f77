"""IEC 61260-1 1/3-octave bands as soundmon stores them: centres per sample rate, int16 centi-dB.

Shared by the DSP (``workers.spectrum`` computes the levels) and the store/API (which decode
them); pure numpy, no scipy.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: IEC 61260-1 base-10 1/3-octave bands 20 Hz .. 20 kHz: exact centres 1000 * 10^(k/10)
BAND_INDEX = tuple(range(-17, 14))
#: their nominal labels (IEC 61260-1 Annex E), in the same order
NOMINAL_HZ = (20, 25, 31.5, 40, 50, 63, 80, 100, 125, 160, 200, 250, 315, 400, 500, 630, 800,
              1000, 1250, 1600, 2000, 2500, 3150, 4000, 5000, 6300, 8000, 10000, 12500, 16000,
              20000)
#: Band levels are floored here: below int16 quantisation noise in even the narrowest band
#: (-101 dBFS spread over 4 kHz leaves about -125 dBFS in the 20 Hz band). Fits int16 centi-dB.
BAND_FLOOR_DB = -150.0


@lru_cache(maxsize=32)
def band_centres_hz(rate_hz: float) -> tuple[float, ...]:
    """Nominal centres of the bands whose upper edge is at or below fs/2 (complete bands)."""
    return tuple(nom for k, nom in zip(BAND_INDEX, NOMINAL_HZ, strict=True)
                 if 1000.0 * 10 ** ((k + 0.5) / 10) <= rate_hz / 2)


def encode_bands(bands_db: np.ndarray) -> bytes:
    """Band levels in dB -> little-endian int16 centi-dB (0.01 dB steps, -327.68..327.67 dB)."""
    return encode_bands_array(bands_db).tobytes()


def encode_bands_array(bands_db: np.ndarray) -> np.ndarray:
    """``encode_bands`` of many frames at once: the int16 array (last axis: the bands), whose
    rows' ``tobytes()`` are each frame's blob."""
    cdb = np.clip(np.round(np.asarray(bands_db, dtype=float) * 100.0), -32768, 32767)
    return cdb.astype("<i2")


def decode_bands(blob: bytes | None) -> list[float] | None:
    """The inverse of ``encode_bands``: a list of dB values (None stays None)."""
    if blob is None:
        return None
    return [v / 100.0 for v in np.frombuffer(blob, dtype="<i2").tolist()]
