"""Measurement fields and flags, declared once; the store, the API and the page follow this table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str
    unit: str
    label: str


#: per-frame values, in the order the API returns them
LEVEL_METRICS: tuple[Metric, ...] = (
    Metric("dbfs", "dBFS", "RMS level re full scale, DC removed"),
    Metric("lzeq", "dB", "Z-weighted (unweighted) equivalent level, calibrated"),
    Metric("laeq", "dB(A)", "A-weighted equivalent level, calibrated"),
    Metric("lceq", "dB(C)", "C-weighted equivalent level, calibrated"),
    Metric("lafmax", "dB(A)", "maximum of the Fast (125 ms) A-weighted level in the frame"),
    Metric("lafmin", "dB(A)", "minimum of the Fast (125 ms) A-weighted level in the frame"),
    Metric("lcpeak", "dB(C)", "C-weighted peak sound level"),
    Metric("dominant_hz", "Hz", "interpolated spectral peak"),
    Metric("centroid_hz", "Hz", "spectral centroid (power-weighted mean frequency)"),
    Metric("bands_db", "dB", "unweighted 1/3-octave band levels at bands_hz, calibrated"),
    Metric("duty", "%", "threshold output active share (LM393)"),
)

#: data-quality flags (protocol.md section 3), stored as a bit mask
FLAGS: tuple[str, ...] = (
    "clipped",
    "below_noise_floor",
    "nyquist_limited",
    "uncalibrated",
    "no_level",
)
FLAG_BIT = {name: 1 << i for i, name in enumerate(FLAGS)}


def flags_to_mask(names: set[str] | list[str]) -> int:
    mask = 0
    for name in names:
        mask |= FLAG_BIT[name]
    return mask


def mask_to_flags(mask: int) -> list[str]:
    return [name for name in FLAGS if mask & FLAG_BIT[name]]
