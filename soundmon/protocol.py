"""soundmon wire protocol v1: topics, the binary frame, and strict decoding.

This module is the cloud side of ``shared/protocol.md``. It is pure (no I/O) so the
gateway, the workers, the simulator and the tests all share one reading of the contract.

Errors
------
``FrameError`` is the only exception raised here. Its ``reason`` is one of ``REJECT_REASONS``,
a short stable token the gateway counts and logs (``bad_magic``, ``bad_length`` ...).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import numpy as np

HEADER = struct.Struct("<2sBBIIqHH")
HEADER_SIZE = HEADER.size  # 24 bytes
MAGIC = b"SM"
VERSION = 1

KIND_PCM = 1
KIND_LEVELS = 2
KIND_THRESHOLD = 3
KINDS = (KIND_PCM, KIND_LEVELS, KIND_THRESHOLD)
#: bytes per sample (kind 1) or per record (kinds 2 and 3)
ITEM_SIZE = {KIND_PCM: 2, KIND_LEVELS: 4, KIND_THRESHOLD: 4}

LEVEL_RECORD = np.dtype([("level_cdb", "<i2"), ("flags", "<u2")])
THRESHOLD_RECORD = np.dtype([("duty_bp", "<u2"), ("edges", "<u2")])
#: kind-2 record flag bits (protocol.md section 2)
LEVEL_FLAG_CLIPPED = 1 << 0
LEVEL_FLAG_BELOW_FLOOR = 1 << 1
LEVEL_FLAG_A_WEIGHTED = 1 << 2

DEVICE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
DEFAULT_PREFIX = "soundmon"

#: Every reason a frame or status message can be rejected for, declared once.
REJECT_REASONS = {
    "bad_topic": "topic is not soundmon/v1/{device}/frame|status",
    "bad_device_id": "device id does not match ^[a-z0-9][a-z0-9_-]{0,31}$",
    "short_header": "payload shorter than the 24-byte header",
    "bad_magic": "magic is not b'SM'",
    "bad_version": "version is not 1",
    "bad_kind": "kind is not 1, 2 or 3",
    "zero_rate": "rate is 0",
    "zero_count": "count is 0",
    "bad_length": "payload length is not 24 + count * item size",
    "bad_status": "status payload is not a JSON object",
}


class FrameError(ValueError):
    """A payload or topic that breaks protocol v1; ``reason`` is a key of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REJECT_REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail or REJECT_REASONS[reason]}")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded protocol-v1 frame. ``body`` is the raw little-endian payload after the header."""

    kind: int
    seq: int
    boot: int
    t0_ms: int
    rate: int
    count: int
    body: bytes

    @property
    def duration_ms(self) -> float:
        """Time covered by the frame in ms (kind 1: count/rate s; kinds 2, 3: count*rate ms)."""
        if self.kind == KIND_PCM:
            return 1000.0 * self.count / self.rate
        return float(self.count * self.rate)

    def samples(self) -> np.ndarray:
        """Kind 1 only: the int16 samples, shape (count,)."""
        assert self.kind == KIND_PCM
        return np.frombuffer(self.body, dtype="<i2")

    def records(self) -> np.ndarray:
        """Kinds 2 and 3: structured records, shape (count,)."""
        dtype = LEVEL_RECORD if self.kind == KIND_LEVELS else THRESHOLD_RECORD
        assert self.kind in (KIND_LEVELS, KIND_THRESHOLD)
        return np.frombuffer(self.body, dtype=dtype)


def decode_frame(payload: bytes) -> Frame:
    """Decode a frame strictly; raise FrameError with a counted reason on any violation."""
    if len(payload) < HEADER_SIZE:
        raise FrameError("short_header", f"{len(payload)} bytes")
    magic, version, kind, seq, boot, t0_ms, rate, count = HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise FrameError("bad_magic", repr(magic))
    if version != VERSION:
        raise FrameError("bad_version", str(version))
    if kind not in KINDS:
        raise FrameError("bad_kind", str(kind))
    if rate == 0:
        raise FrameError("zero_rate")
    if count == 0:
        raise FrameError("zero_count")
    expected = HEADER_SIZE + count * ITEM_SIZE[kind]
    if len(payload) != expected:
        raise FrameError("bad_length", f"{len(payload)} bytes, expected {expected}")
    return Frame(kind, seq, boot, t0_ms, rate, count, bytes(payload[HEADER_SIZE:]))


def encode_frame(
    kind: int, seq: int, boot: int, t0_ms: int, rate: int, body: bytes | np.ndarray
) -> bytes:
    """Build a frame (for tests and tools; the firmware has its own MicroPython encoder)."""
    data = body.tobytes() if isinstance(body, np.ndarray) else bytes(body)
    count = len(data) // ITEM_SIZE[kind]
    return HEADER.pack(MAGIC, VERSION, kind, seq, boot, t0_ms, rate, count) + data


def topic(device: str, leaf: str, prefix: str = DEFAULT_PREFIX) -> str:
    """``{prefix}/v1/{device}/{leaf}``."""
    return f"{prefix}/v1/{device}/{leaf}"


def parse_topic(name: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
    """Split a topic into (device, leaf); raise FrameError for anything not ours."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != prefix or parts[1] != "v1":
        raise FrameError("bad_topic", name)
    device, leaf = parts[2], parts[3]
    if not DEVICE_ID.match(device):
        raise FrameError("bad_device_id", device[:40])
    if leaf not in ("frame", "status", "config", "alert"):
        raise FrameError("bad_topic", name)
    return device, leaf
