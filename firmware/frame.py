"""Protocol-v1 frame encoder, shared by the ESP32 firmware and the device simulator.

The same file runs on the board (MicroPython 1.27) and on CPython 3.11, where the device
simulator (``soundmon simulate``) and the tests import it: what the simulator publishes is
byte for byte what a board publishes. It therefore uses only ``struct`` and ``array``, no
f-strings, dataclasses, typing or numpy.

Memory on an ESP32 is tight and the heap fragments, so a ``FrameWriter`` allocates its one
buffer when it is built and encodes every frame into it with ``struct.pack_into``. Each
encode returns a ``memoryview`` of the frame inside that buffer: publish it (or copy it)
before encoding the next frame, which overwrites it.

The wire format is ``shared/protocol.md`` section 2: a 24-byte little-endian header
``<2sBBIIqHH`` (magic, version, kind, seq, boot, t0_ms, rate, count), then ``count`` int16
samples (kind 1) or ``count`` 4-byte records (kinds 2 and 3).
"""

import struct
from array import array

try:
    from micropython import const
except ImportError:  # CPython: const() is a MicroPython compile-time hint, a no-op here

    def const(value):  # type: ignore[misc]
        return value


HEADER_FMT = "<2sBBIIqHH"
HEADER_SIZE = const(24)
MAGIC = b"SM"
VERSION = const(1)

KIND_PCM = const(1)
KIND_LEVELS = const(2)
KIND_THRESHOLD = const(3)

SAMPLE_SIZE = const(2)  # kind 1: one int16 per sample
RECORD_SIZE = const(4)  # kinds 2 and 3: two 16-bit fields per record
U16_MAX = const(0xFFFF)  # rate and count are u16
U32_MAX = 0xFFFFFFFF  # seq and boot are u32 (too wide for const() on a 32-bit port)
DUTY_FULL_BP = const(10000)  # kind 3: duty in basis points, 10000 = always active

# The ESP32 ADC gives 12-bit codes 0..4095. The front end is biased at about mid-code, so
# code 2048 is the nominal zero and a shift of 4 bits (x16) fills the int16 range:
# code 0 -> -32768, code 4095 -> +32752 (the ADC rails as the cloud sees them).
ADC_MAX_CODE = const(4095)
ADC_MID_CODE = const(2048)
ADC_TO_INT16 = const(16)


def next_seq(seq):
    """The frame counter after ``seq``: +1, wrapping from 2**32 - 1 to 0."""
    assert 0 <= seq <= U32_MAX
    return 0 if seq == U32_MAX else seq + 1


def adc_to_int16(code):
    """Map one 12-bit ADC code (0..4095) to an int16 sample: ``(code - 2048) * 16``."""
    assert 0 <= code <= ADC_MAX_CODE
    return (code - ADC_MID_CODE) * ADC_TO_INT16


def adc_codes_to_pcm(codes, out):
    """Map 12-bit ADC codes to int16 samples in ``out``, without allocating.

    ``codes`` is any sequence of ints (e.g. ``array('H')``). ``out`` is a preallocated
    ``array('h')`` (one item per sample) or a writable bytes-like buffer such as
    ``FrameWriter.body(n)`` (two little-endian bytes per sample), so the samples can be
    written straight into the frame. Returns the number of samples written.
    """
    n = len(codes)
    if isinstance(out, array):
        assert len(out) >= n
        for i in range(n):
            out[i] = (codes[i] - ADC_MID_CODE) * ADC_TO_INT16
    else:
        assert len(out) >= SAMPLE_SIZE * n
        for i in range(n):
            struct.pack_into("<h", out, SAMPLE_SIZE * i, (codes[i] - ADC_MID_CODE) * ADC_TO_INT16)
    return n


class FrameWriter:
    """Encode protocol-v1 frames into one buffer allocated once.

    ``max_samples`` bounds kind-1 frames; kinds 2 and 3 fit ``max_samples // 2`` records
    (a record is two samples wide). ``buf`` is the bytearray, ``mv`` a memoryview of it.
    """

    def __init__(self, max_samples):
        assert 0 < max_samples <= U16_MAX
        self.max_samples = max_samples
        self.buf = bytearray(HEADER_SIZE + SAMPLE_SIZE * max_samples)
        self.mv = memoryview(self.buf)

    def body(self, count):
        """The writable body bytes of a ``count``-sample PCM frame, to fill in place."""
        assert 0 < count <= self.max_samples
        return self.mv[HEADER_SIZE:HEADER_SIZE + SAMPLE_SIZE * count]

    def pcm(self, seq, boot, t0_ms, rate, samples):
        """Encode a kind-1 frame; return a memoryview of exactly its bytes.

        ``samples`` is bytes-like little-endian int16 (bytes, bytearray, a byte memoryview)
        or an ``array('h')``; ``rate`` is in samples per second.
        """
        if isinstance(samples, array):
            count = len(samples)
            assert 0 < count <= self.max_samples
            end = HEADER_SIZE + SAMPLE_SIZE * count
            try:
                # CPython copies any buffer into a bytearray slice, byte for byte. The
                # buffer is exported (self.mv), so a size mismatch raises instead of resizing.
                self.buf[HEADER_SIZE:end] = samples
            except ValueError:
                # MicroPython only copies between buffers of equal item size. array('h') is
                # in native order, and the ESP32 (Xtensa and RISC-V) is little-endian.
                for i in range(count):
                    struct.pack_into("<h", self.buf, HEADER_SIZE + SAMPLE_SIZE * i, samples[i])
        else:
            assert len(samples) % SAMPLE_SIZE == 0
            count = len(samples) // SAMPLE_SIZE
            assert 0 < count <= self.max_samples
            self.mv[HEADER_SIZE:HEADER_SIZE + SAMPLE_SIZE * count] = samples
        return self.pcm_in_place(seq, boot, t0_ms, rate, count)

    def pcm_in_place(self, seq, boot, t0_ms, rate, count):
        """Encode a kind-1 frame whose ``count`` samples are already in ``body(count)``."""
        assert 0 < count <= self.max_samples
        self._header(KIND_PCM, seq, boot, t0_ms, rate, count)
        return self.mv[:HEADER_SIZE + SAMPLE_SIZE * count]

    def levels(self, seq, boot, t0_ms, interval_ms, records):
        """Encode a kind-2 frame from ``(level_cdb, flags)`` records.

        ``level_cdb`` is the Leq of one interval in hundredths of a dBFS (int16), ``flags``
        the u16 bit field of protocol.md; ``interval_ms`` is each record's length in ms.
        """
        off = self._records_start(records)
        for level_cdb, flags in records:
            assert -32768 <= level_cdb <= 32767 and 0 <= flags <= U16_MAX
            struct.pack_into("<hH", self.buf, off, level_cdb, flags)
            off += RECORD_SIZE
        self._header(KIND_LEVELS, seq, boot, t0_ms, interval_ms, len(records))
        return self.mv[:off]

    def threshold(self, seq, boot, t0_ms, interval_ms, records):
        """Encode a kind-3 frame from ``(duty_bp, edges)`` records (comparator output).

        ``duty_bp`` is the active share of the interval in basis points (0..10000),
        ``edges`` the rising edges counted in it; ``interval_ms`` is each record's length.
        """
        off = self._records_start(records)
        for duty_bp, edges in records:
            assert 0 <= duty_bp <= DUTY_FULL_BP and 0 <= edges <= U16_MAX
            struct.pack_into("<HH", self.buf, off, duty_bp, edges)
            off += RECORD_SIZE
        self._header(KIND_THRESHOLD, seq, boot, t0_ms, interval_ms, len(records))
        return self.mv[:off]

    def _records_start(self, records):
        assert 0 < len(records) and HEADER_SIZE + RECORD_SIZE * len(records) <= len(self.buf)
        return HEADER_SIZE

    def _header(self, kind, seq, boot, t0_ms, rate, count):
        # t0_ms is an i64, but a negative time is never a valid Unix time (0 = clock not synced)
        assert 0 <= seq <= U32_MAX and 0 <= boot <= U32_MAX and t0_ms >= 0
        assert 0 < rate <= U16_MAX and 0 < count <= U16_MAX
        struct.pack_into(HEADER_FMT, self.buf, 0, MAGIC, VERSION, kind, seq, boot, t0_ms, rate,
                         count)
