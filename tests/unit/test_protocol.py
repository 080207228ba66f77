"""The protocol-v1 decoder against every malformed case of protocol.md section 2."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from soundmon.protocol import (
    HEADER_SIZE,
    REJECT_REASONS,
    FrameError,
    decode_frame,
    encode_frame,
    parse_topic,
)
from tests.helpers import hand_frame


def _raw(kind=1, count=3, rate=8000, magic=b"SM", version=1, body=None):
    header = struct.pack("<2sBBIIqHH", magic, version, kind, 1, 2, 3, rate, count)
    size = 2 if kind == 1 else 4
    return header + (body if body is not None else b"\x01" * (count * size))


def test_header_is_24_bytes():
    """The header layout is struct '<2sBBIIqHH', 24 bytes."""
    assert HEADER_SIZE == 24


def test_valid_pcm_frame_decodes_every_field():
    """A kind-1 frame decodes seq, boot, t0_ms, rate, count and its int16 samples."""
    f = decode_frame(hand_frame(4294967295, 7, 1_700_000_000_123, 16000, [0, -32768, 32767]))
    assert (f.kind, f.seq, f.boot, f.t0_ms, f.rate, f.count) == (
        1, 4294967295, 7, 1_700_000_000_123, 16000, 3)
    assert f.samples().tolist() == [0, -32768, 32767]
    assert f.duration_ms == pytest.approx(3 / 16)


@pytest.mark.parametrize("kind", [2, 3])
def test_record_kinds_decode_with_4_byte_records(kind):
    """Kinds 2 and 3 carry 4-byte records and decode into structured arrays."""
    recs = np.array([(-2350, 4), (100, 1)], dtype=[("a", "<i2"), ("b", "<u2")])
    f = decode_frame(_raw(kind=kind, count=2, rate=1000, body=recs.tobytes()))
    assert f.count == 2 and len(f.records()) == 2
    if kind == 2:
        assert f.records()["level_cdb"].tolist() == [-2350, 100]


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"", "short_header"),
        (b"SM\x01\x01" + b"\x00" * 10, "short_header"),
        (_raw(magic=b"MS"), "bad_magic"),
        (_raw(version=0), "bad_version"),
        (_raw(version=2), "bad_version"),
        (_raw(kind=0), "bad_kind"),
        (_raw(kind=4), "bad_kind"),
        (_raw(rate=0), "zero_rate"),
        (_raw(count=0, body=b""), "zero_count"),
        (_raw(count=3, body=b"\x00" * 5), "bad_length"),
        (_raw(count=3, body=b"\x00" * 7), "bad_length"),
        (_raw(kind=2, count=2, body=b"\x00" * 6), "bad_length"),
        (_raw(kind=3, count=1, body=b"\x00" * 2), "bad_length"),
        (_raw(count=2, body=b"\x00" * 2), "bad_length"),
    ],
)
def test_malformed_frames_are_rejected_with_their_reason(payload, reason):
    """Each violation raises FrameError with a stable, counted reason."""
    with pytest.raises(FrameError) as err:
        decode_frame(payload)
    assert err.value.reason == reason
    assert err.value.reason in REJECT_REASONS


def test_encoder_round_trips():
    """encode_frame and decode_frame agree."""
    body = np.arange(-5, 5, dtype="<i2")
    f = decode_frame(encode_frame(1, 9, 8, 7, 8000, body))
    assert f.samples().tolist() == body.tolist() and f.seq == 9


@pytest.mark.parametrize("device", ["a", "kitchen-1", "x_y", "0" * 32])
def test_valid_device_ids(device):
    """Device ids matching ^[a-z0-9][a-z0-9_-]{0,31}$ are accepted."""
    assert parse_topic(f"soundmon/v1/{device}/frame") == (device, "frame")


@pytest.mark.parametrize("device", ["", "A", "-x", "_x", "a" * 33, "a.b", "a+b", "#", "ké"])
def test_invalid_device_ids(device):
    """Anything else is rejected as bad_device_id (or bad_topic when it breaks the levels)."""
    with pytest.raises(FrameError) as err:
        parse_topic(f"soundmon/v1/{device}/frame")
    assert err.value.reason in ("bad_device_id", "bad_topic")


@pytest.mark.parametrize("topic", ["soundmon/v2/a/frame", "other/v1/a/frame",
                                   "soundmon/v1/a/frame/x", "soundmon/v1/a/blob"])
def test_foreign_topics(topic):
    """Topics outside soundmon/v1/{device}/{frame,status,config,alert} are bad_topic."""
    with pytest.raises(FrameError) as err:
        parse_topic(topic)
    assert err.value.reason == "bad_topic"


def test_prefix_is_configurable():
    """The first topic level is configurable; v1 is not."""
    assert parse_topic("acme/v1/dev/status", prefix="acme") == ("dev", "status")
