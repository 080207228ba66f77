"""Device configuration: the file written at deploy time, and the live (retained) config.

Runs on MicroPython and CPython. ``/soundmon.json`` on the board holds the device id, the
Wi-Fi and broker secrets and the sensor settings (``soundmon deploy`` writes it; it is never
in the repository). The retained ``soundmon/v1/{device}/config`` message (protocol.md) may
change ``rate``, ``frame_ms``, ``sensor`` and the sensor settings live; anything else in it
is ignored, and a value out of range rejects the whole message.
"""

import json

CONFIG_PATH = "/soundmon.json"
FIRMWARE_VERSION = "1.0.0"
SENSORS = ("max4466", "lm393", "i2s")

#: sensor -> (lowest, highest, default) sample rate in Hz. lm393: the pin is polled at
#: ``rate`` Hz for the duty cycle (edges are counted by an IRQ at any rate).
RATES = {
    "max4466": (8000, 16000, 8000),  # machine.ADC in a paced loop; no DMA path in MicroPython
    "lm393": (100, 5000, 1000),
    "i2s": (16000, 48000, 16000),
}
FRAME_MS = (100, 2000)  # allowed frame lengths, ms; kind-3 records use frame_ms as interval
MAX_SAMPLES = 16000  # per frame: 32 kB + header, the largest frame a board must hold

DEFAULTS = {
    "device": "",
    "wifi_ssid": "",
    "wifi_password": "",
    "broker_host": "",
    "broker_port": 1883,
    "username": "",
    "password": "",
    "prefix": "soundmon",
    "sensor": "max4466",
    "rate": 8000,
    "frame_ms": 500,
    "gain": 25,  # MAX4466 trimmer setting, for the status only (the cloud holds calibration)
    "i2s_bits": 32,  # INMP441 / ICS-43434 send 24 bits in 32-bit slots
    # int16 sample = the 32-bit I2S slot (24-bit sample, left-aligned) >> i2s_shift. 16 keeps
    # the top 16 bits: int16 full scale = the microphone's full scale, as its datasheet
    # sensitivity (and the sensor profile's K) assumes. Each step below 16 adds 6 dB of gain.
    "i2s_shift": 16,
    "ram_frames": 6,  # outage RAM ring (6 x 8 kB at 8 kHz / 500 ms)
    "file_records": 3600,  # outage ring file: one hour of per-second levels, 57.6 kB of flash
    "ntp_host": "pool.ntp.org",
    "keepalive_s": 30,
    "wdt_ms": 30000,
}
LIVE_KEYS = ("sensor", "rate", "frame_ms", "gain", "i2s_shift")
SECRET_KEYS = ("wifi_password", "password")


class ConfigError(ValueError):
    """A configuration value is missing or out of range."""


def samples_per_frame(cfg):
    """Samples in one kind-1 frame (or polls per kind-3 record) for this config."""
    return cfg["rate"] * cfg["frame_ms"] // 1000


def validate(cfg):
    """Raise ConfigError if ``cfg`` cannot run; return it."""
    sensor = cfg.get("sensor")
    if sensor not in SENSORS:
        raise ConfigError("sensor must be one of " + ", ".join(SENSORS))
    low, high, _ = RATES[sensor]
    rate = cfg.get("rate")
    if not isinstance(rate, int) or not low <= rate <= high:
        raise ConfigError("rate for %s must be %d..%d Hz" % (sensor, low, high))
    frame_ms = cfg.get("frame_ms")
    if not isinstance(frame_ms, int) or not FRAME_MS[0] <= frame_ms <= FRAME_MS[1]:
        raise ConfigError("frame_ms must be %d..%d" % FRAME_MS)
    shift = cfg.get("i2s_shift", 16)
    if not isinstance(shift, int) or not 8 <= shift <= 24:
        raise ConfigError("i2s_shift must be 8..24")
    if samples_per_frame(cfg) > MAX_SAMPLES:
        raise ConfigError("rate x frame_ms gives more than %d samples per frame" % MAX_SAMPLES)
    return cfg


def merged(base, changes, keys=None):
    """A copy of ``base`` with ``changes`` applied (only ``keys`` if given), validated."""
    cfg = dict(base)
    for key in changes:
        if key in DEFAULTS and (keys is None or key in keys):
            cfg[key] = changes[key]
    if "sensor" in changes and "rate" not in changes and (keys is None or "sensor" in keys):
        low, high, default = RATES[cfg["sensor"]] if cfg["sensor"] in RATES else (0, 0, 0)
        if not low <= cfg["rate"] <= high:
            cfg["rate"] = default  # a new sensor alone brings its own default rate
    return validate(cfg)


def load(path=CONFIG_PATH):
    """The deploy-time config file merged over DEFAULTS; ConfigError if unusable."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError:
        raise ConfigError("no config file " + path + ": run `soundmon deploy`")
    except ValueError:
        raise ConfigError(path + " is not valid JSON")
    cfg = merged(DEFAULTS, data)
    for key in ("device", "broker_host"):
        if not cfg[key]:
            raise ConfigError(path + " has no " + key)
    return cfg


def apply_remote(cfg, payload):
    """The config after a retained config message; ``(new_cfg, changed_keys)``.

    ConfigError (and no change) if the message is not JSON or a value is out of range.
    """
    try:
        data = json.loads(payload)
    except ValueError:
        raise ConfigError("config message is not JSON")
    if not isinstance(data, dict):
        raise ConfigError("config message is not a JSON object")
    new = merged(cfg, data, LIVE_KEYS)
    changed = [k for k in LIVE_KEYS if new[k] != cfg[k]]
    return new, changed


def public(cfg):
    """The config without secrets, for logs."""
    return dict((k, ("***" if k in SECRET_KEYS and cfg[k] else cfg[k])) for k in cfg)
