"""Sensor profiles: the default calibration offset K and noise floor of each supported front end.

K maps dBFS (protocol.md section 3) to dB SPL: ``L = dBFS + K``. A profile's K is a datasheet
estimate, so levels computed with it carry the ``uncalibrated`` flag until the device gets
its own K (``soundmon calibrate``, or ``PUT /api/devices/{id}/calibration``).

How the defaults were derived (see hardware.md and shared acoustics.md section 4.4):

* max4466: -44 dBV/Pa electret, gain x125 (the breakout's usual trimmer setting),
  ESP32 ADC at 11 dB attenuation (about 0.8 mV per 12-bit code, so int16 full scale,
  2048 codes * 16, is about 1.64 V rms for a square wave). 94 dB SPL gives 0.79 V rms
  = -6.4 dBFS, so K = 100.4 dB. Noise floor: about 3 LSB rms of ADC noise = 48 int16
  counts = -56.7 dBFS.
* inmp441 / ics43434: -26 dBFS sensitivity (sine-referenced) at 94 dB SPL, i.e. -29.0 dBFS
  in our RMS convention, so K = 123.0 dB. Floor = self-noise (33 / 29 dB(A)) - K.
* lm393: a comparator, it has no level at all (``no_level``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SensorProfile:
    name: str
    default_k_db: float | None  # None: the sensor gives no level
    noise_floor_dbfs: float | None
    note: str


PROFILES: dict[str, SensorProfile] = {
    p.name: p
    for p in (
        SensorProfile("max4466", 100.4, -56.7, "electret + MAX4466 at gain x125 on ESP32 ADC1"),
        # the same chain at the trimmer's other settings: K rises by 20 lg(125 / gain); the
        # floor in dBFS is the ADC's noise, so it does not move with the gain
        SensorProfile("max4466_x125", 100.4, -56.7, "MAX4466 at gain x125 (trimmer fully up)"),
        SensorProfile("max4466_x75", 104.8, -56.7, "MAX4466 at gain x75 (trimmer mid-way)"),
        SensorProfile("max4466_x25", 114.4, -56.7, "MAX4466 at gain x25 (trimmer fully down)"),
        SensorProfile("inmp441", 123.0, -90.0, "I2S MEMS, -26 dBFS @ 94 dB SPL, SNR 61 dB(A)"),
        SensorProfile("ics43434", 123.0, -94.0, "I2S MEMS, -26 dBFS @ 94 dB SPL, SNR 65 dB(A)"),
        SensorProfile("lm393", None, None, "comparator module: duty and edges, never dB"),
    )
}
#: used for a device that has not told us its sensor yet
DEFAULT_PROFILE = PROFILES["max4466"]


def profile_for(sensor: str | None) -> SensorProfile:
    """The profile for a status message's ``sensor`` value (unknown -> the max4466 default)."""
    if sensor and sensor.lower() in PROFILES:
        return PROFILES[sensor.lower()]
    if sensor and sensor.lower() in ("i2s",):
        return PROFILES["inmp441"]
    return DEFAULT_PROFILE
