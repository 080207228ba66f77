"""Sound level of a kind-1 frame, and per-interval Leq records (protocol kind 2).

Runs on MicroPython and CPython. Used when the outage buffer turns the oldest audio frames
into per-second levels (firmware.backlog). dBFS follows protocol.md section 3: rms after
removing the frame's mean, re 32768. Leq over an interval is energetic: the mean square of
all its samples, each frame's DC removed first (the analog front end's bias drifts).
"""

import math
import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):  # type: ignore[misc]
        return value


HEADER_SIZE = const(24)
KIND_PCM = const(1)
FLAG_CLIPPED = const(1)  # bit 0: a sample reached the int16 rails
FLAG_BELOW_FLOOR = const(2)  # bit 1: below the chain's noise floor
LEVEL_MIN_CDB = const(-32768)  # an all-DC (silent) interval: the lowest level_cdb there is
# A 12-bit ADC code is 16 int16 units (frame.py); its quantisation noise is 16/sqrt(12)
# = 4.6 units rms = -77 dBFS. Below that the level says nothing about the sound.
NOISE_FLOOR_CDB = const(-7700)
# The ADC rails as the cloud sees them: code 0 -> -32768, code 4095 -> +32752
CLIP_LOW = const(-32768)
CLIP_HIGH = const(32752)
FULL_SCALE_SQ = 32768.0 * 32768.0


def _samples(frame, count):
    """The int16 samples of a frame body, fast on CPython, allocation-free on MicroPython."""
    try:
        return memoryview(frame)[HEADER_SIZE:HEADER_SIZE + 2 * count].cast("h")
    except AttributeError:  # MicroPython memoryview has no cast(): decode little-endian bytes
        return None


def frame_energy(frame):
    """Return ``(t0_ms, rate, count, sum_sq, clipped)`` of a kind-1 frame.

    ``sum_sq`` is the sum over samples of (x - mean)^2 in int16 units squared (a float).
    """
    kind = frame[3]
    assert kind == KIND_PCM
    t0_ms, rate, count = struct.unpack_from("<qHH", frame, 12)
    view = _samples(frame, count)
    clipped = False
    total = 0
    if view is not None:
        total = sum(view)
        mean = total / count
        clipped = min(view) <= CLIP_LOW or max(view) >= CLIP_HIGH
        sum_sq = float(sum((x - mean) * (x - mean) for x in view))
        return t0_ms, rate, count, sum_sq, clipped
    end = HEADER_SIZE + 2 * count
    for off in range(HEADER_SIZE, end, 2):
        x = frame[off] | (frame[off + 1] << 8)
        if x >= 32768:
            x -= 65536
        total += x
        if x <= CLIP_LOW or x >= CLIP_HIGH:
            clipped = True
    mean = total // count  # integers: MicroPython floats are single precision
    sum_sq = 0
    for off in range(HEADER_SIZE, end, 2):
        x = frame[off] | (frame[off + 1] << 8)
        if x >= 32768:
            x -= 65536
        x -= mean
        sum_sq += x * x
    rem = total - mean * count  # correct for the integer mean: sum((x-m)^2) - rem^2/n
    return t0_ms, rate, count, float(sum_sq) - float(rem * rem) / count, clipped


def level_cdb(sum_sq, count):
    """Leq of ``count`` samples whose squared deviations sum to ``sum_sq``, in 0.01 dBFS."""
    if count <= 0 or sum_sq <= 0:
        return LEVEL_MIN_CDB
    cdb = int(round(1000.0 * math.log10(sum_sq / count / FULL_SCALE_SQ)))
    return cdb if cdb > LEVEL_MIN_CDB else LEVEL_MIN_CDB


class LevelAccumulator:
    """Sum kind-1 frames into Leq records of ``interval_ms`` (the last one may be shorter).

    ``emit(t0_ms, interval_ms, level_cdb, flags)`` is called for each finished record.
    Frames must come in time order; a gap, a rate change or an unsynced clock (t0 = 0)
    closes the current record early, so a record never spans missing audio.
    """

    def __init__(self, interval_ms, emit, floor_cdb=NOISE_FLOOR_CDB):
        assert interval_ms > 0
        self.interval_ms = interval_ms
        self.emit = emit
        self.floor_cdb = floor_cdb
        self._reset()

    def _reset(self):
        self.t0_ms = 0
        self.rate = 0
        self.samples = 0
        self.sum_sq = 0.0
        self.clipped = False

    def empty(self):
        return self.samples == 0

    def duration_ms(self):
        return self.samples * 1000 // self.rate if self.rate else 0

    def _follows(self, t0_ms, frame_ms):
        """A frame starting within half a frame of where the record ends continues it: a
        board reads its clock at each frame, and its ADC loop pauses between frames."""
        gap = t0_ms - (self.t0_ms + self.duration_ms())
        return -frame_ms // 2 <= gap <= frame_ms // 2

    def add_frame(self, frame):
        """Add one encoded kind-1 frame (bytes-like, header included)."""
        t0_ms, rate, count, sum_sq, clipped = frame_energy(frame)
        if not self.empty() and (rate != self.rate or t0_ms == 0 or self.t0_ms == 0
                                 or not self._follows(t0_ms, count * 1000 // rate)):
            self.flush()
        if self.empty():
            self.t0_ms = t0_ms
            self.rate = rate
        self.samples += count
        self.sum_sq += sum_sq
        self.clipped = self.clipped or clipped
        if self.t0_ms == 0 or self.duration_ms() >= self.interval_ms:
            self.flush()

    def flush(self):
        """Emit the record collected so far, if any."""
        if self.empty():
            return
        cdb = level_cdb(self.sum_sq, self.samples)
        flags = (FLAG_CLIPPED if self.clipped else 0) | (FLAG_BELOW_FLOOR if cdb < self.floor_cdb
                                                         else 0)
        interval = min(self.duration_ms(), 0xFFFF) or 1
        t0_ms = self.t0_ms
        self._reset()
        self.emit(t0_ms, interval, cdb, flags)
