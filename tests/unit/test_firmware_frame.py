"""The firmware's frame encoder against the gateway's decoder and protocol.md itself."""

from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np
import pytest

from firmware import frame as fw
from soundmon.protocol import HEADER_SIZE, decode_frame
from tests.helpers import hand_frame
from tests.micropython import run_micropython

T0_MS = 1_795_446_447_079  # a Unix time in ms, past 2**32 so the i64 field matters
BOOT = 0xDEADBEEF


def test_header_constants_match_the_protocol():
    """The firmware's header format and size are protocol.md's."""
    assert fw.HEADER_FMT == "<2sBBIIqHH"
    assert fw.HEADER_SIZE == HEADER_SIZE == 24
    assert (fw.KIND_PCM, fw.KIND_LEVELS, fw.KIND_THRESHOLD) == (1, 2, 3)


def test_pcm_frame_round_trips_through_the_decoder():
    """A kind-1 frame decodes to the same header fields and samples."""
    samples = np.array([0, 1, -1, 32752, -32768, 1234], dtype="<i2")
    payload = fw.FrameWriter(16).pcm(41, BOOT, T0_MS, 8000, samples.tobytes())
    frame = decode_frame(payload)
    assert (frame.kind, frame.seq, frame.boot, frame.t0_ms, frame.rate, frame.count) == (
        1, 41, BOOT, T0_MS, 8000, 6)
    np.testing.assert_array_equal(frame.samples(), samples)


def test_pcm_frame_is_byte_for_byte_the_protocol_layout():
    """The encoder's bytes equal a frame built by hand from protocol.md."""
    samples = [5, -6, 7, -32768]
    payload = fw.FrameWriter(4).pcm(3, BOOT, T0_MS, 16000, array("h", samples))
    assert bytes(payload) == hand_frame(3, BOOT, T0_MS, 16000, samples)


def test_pcm_accepts_bytes_and_array_alike():
    """bytes, bytearray, a byte memoryview and array('h') give the same frame."""
    samples = array("h", [100, -200, 300])
    writer = fw.FrameWriter(3)
    expected = bytes(writer.pcm(1, 2, 3, 8000, samples))
    for body in (samples.tobytes(), bytearray(samples.tobytes()),
                 memoryview(samples.tobytes())):
        assert bytes(writer.pcm(1, 2, 3, 8000, body)) == expected


def test_levels_frame_round_trips_through_the_decoder():
    """A kind-2 frame decodes to the same (level_cdb, flags) records and interval."""
    records = [(-2350, 0b100), (-9000, 0b010), (0, 0b001)]
    frame = decode_frame(fw.FrameWriter(8).levels(7, BOOT, T0_MS, 125, records))
    assert (frame.kind, frame.seq, frame.boot, frame.t0_ms, frame.rate, frame.count) == (
        2, 7, BOOT, T0_MS, 125, 3)
    assert [tuple(map(int, r)) for r in frame.records()] == records


def test_threshold_frame_round_trips_through_the_decoder():
    """A kind-3 frame decodes to the same (duty_bp, edges) records and interval."""
    records = [(10000, 65535), (0, 0), (2500, 12)]
    frame = decode_frame(fw.FrameWriter(8).threshold(8, BOOT, 0, 1000, records))
    assert (frame.kind, frame.seq, frame.t0_ms, frame.rate, frame.count) == (3, 8, 0, 1000, 3)
    assert [tuple(map(int, r)) for r in frame.records()] == records


def test_seq_wraps_at_2_to_the_32():
    """next_seq counts up by one and wraps from 2**32 - 1 to 0; both ends encode."""
    assert fw.next_seq(0) == 1
    assert fw.next_seq(2**32 - 2) == 2**32 - 1
    assert fw.next_seq(2**32 - 1) == 0
    writer = fw.FrameWriter(1)
    assert decode_frame(writer.pcm(2**32 - 1, BOOT, T0_MS, 8000, b"\0\0")).seq == 2**32 - 1
    assert decode_frame(writer.pcm(fw.next_seq(2**32 - 1), BOOT, T0_MS, 8000, b"\0\0")).seq == 0


def test_adc_codes_map_around_mid_code():
    """12-bit code c maps to (c - 2048) * 16: 0 -> -32768, 2048 -> 0, 4095 -> 32752."""
    assert [fw.adc_to_int16(c) for c in (0, 2047, 2048, 2049, 4095)] == [
        -32768, -16, 0, 16, 32752]
    with pytest.raises(AssertionError):
        fw.adc_to_int16(4096)


def test_adc_codes_to_pcm_fills_an_array_or_the_frame_body_alike():
    """Mapping into array('h') or straight into the frame body gives the same samples."""
    codes = array("H", [0, 1000, 2048, 4095])
    pcm = array("h", [0] * 4)
    assert fw.adc_codes_to_pcm(codes, pcm) == 4
    writer = fw.FrameWriter(4)
    fw.adc_codes_to_pcm(codes, writer.body(4))
    frame = decode_frame(writer.pcm_in_place(0, BOOT, T0_MS, 8000, 4))
    assert list(frame.samples()) == list(pcm) == [fw.adc_to_int16(c) for c in codes]


def test_the_writer_reuses_one_buffer():
    """Every encode writes into the buffer allocated at construction and returns a view."""
    writer = fw.FrameWriter(4)
    buf, first_id = writer.buf, id(writer.buf)
    a = writer.pcm(0, 1, 2, 8000, b"\1\0\2\0")
    b = writer.levels(1, 1, 2, 125, [(-100, 0)])
    c = writer.pcm(2, 1, 2, 8000, array("h", [9, 9, 9, 9]))
    assert a.obj is b.obj is c.obj is buf and id(writer.buf) == first_id
    assert len(buf) == 24 + 2 * 4
    # the views alias the buffer: the first frame now shows the last one's bytes, which is
    # why a frame must be published (or copied) before the next one is encoded
    assert bytes(a) == bytes(c)[:len(a)]


def test_frames_larger_than_the_buffer_are_refused():
    """More samples or records than the buffer holds fail an assertion, not a resize."""
    writer = fw.FrameWriter(2)
    with pytest.raises(AssertionError):
        writer.pcm(0, 1, 2, 8000, b"\0" * 6)
    with pytest.raises(AssertionError):
        writer.levels(0, 1, 2, 125, [(0, 0)] * 2)  # 2 records = 8 bytes > 4-byte body
    assert len(writer.buf) == 28


_MICROPYTHON_SCRIPT = """
from array import array
from firmware import frame
w = frame.FrameWriter(4)
print(bytes(w.pcm(frame.next_seq(0xFFFFFFFF), 0xDEADBEEF, 1795446447079, 8000,
                  array("h", [1, -1, -32768, 32752]))).hex())
print(bytes(w.levels(1, 2, 3, 125, [(-2350, 4), (0, 1)])).hex())
print(bytes(w.threshold(1, 2, 3, 1000, [(10000, 65535), (0, 0)])).hex())
"""


def test_encoder_gives_the_same_bytes_under_micropython(tmp_path: Path):
    """firmware/frame.py runs unchanged on MicroPython 1.27 and encodes the same bytes."""
    script = tmp_path / "frames.py"
    script.write_text(_MICROPYTHON_SCRIPT)
    done = run_micropython(script)
    assert done.returncode == 0, done.stderr
    out = done.stdout.split()
    w = fw.FrameWriter(4)
    assert out == [
        bytes(w.pcm(0, 0xDEADBEEF, 1795446447079, 8000, array("h", [1, -1, -32768, 32752]))).hex(),
        bytes(w.levels(1, 2, 3, 125, [(-2350, 4), (0, 1)])).hex(),
        bytes(w.threshold(1, 2, 3, 1000, [(10000, 65535), (0, 0)])).hex(),
    ]
