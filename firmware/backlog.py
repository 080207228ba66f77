"""What the device keeps while it cannot publish, and hands back oldest first.

Runs on MicroPython and CPython (the virtual device uses it too). Two bounded stores:

- ``FrameRing``: the most recent encoded frames, in RAM slots allocated once.
- ``RingFile``: older time as 16-byte records in a file of fixed size (flash on the board,
  so it also survives a reboot): per-second Leq records (protocol kind 2) made from the
  audio frames that no longer fit in RAM, and threshold records (kind 3) as they were.

``Backlog.keep(frame)`` stores a frame; when the RAM ring is full its oldest frame is
turned into level records first. ``Backlog.peek(boot)`` returns the next payload to publish,
oldest first: ring-file records grouped into kind-2/3 frames, then the RAM frames, with the
next frame counter (``seq``) in its header; after the broker acknowledged it,
``Backlog.pop()`` removes it and advances ``seq``. What ``peek`` returned does not change
until ``pop`` (a retry after a lost connection resends the same bytes under the same seq,
so the cloud can drop the duplicate): while it is in flight, a full RAM ring spills its
second-oldest frame instead, and a full ring file drops the incoming record.

A record the full ring file cannot keep is counted in ``dropped``; ``buffered()`` is the
number of frames plus records held. Nothing is lost silently: every frame kept is sent as
itself or as part of a level record, or counted in ``dropped``.
"""

import os
import struct

from firmware.frame import HEADER_SIZE, KIND_LEVELS, KIND_PCM, FrameWriter, next_seq
from firmware.levels import LevelAccumulator

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):  # type: ignore[misc]
        return value


FILE_MAGIC = b"SMRF"
FILE_VERSION = const(1)
FILE_HEADER_FMT = "<4sHHIII"  # magic, version, record size, capacity, head, count
FILE_HEADER_SIZE = const(20)
RECORD_FMT = "<qHBBHH"  # t0_ms, interval_ms, kind, 0, field a, field b (the protocol record)
RECORD_SIZE = const(16)
MAX_RECORDS_PER_FRAME = const(240)  # a 984-byte kind-2 frame: small enough for any board
LEVEL_INTERVAL_MS = const(1000)  # one Leq record per second, as the issue asks


class FrameRing:
    """A FIFO of at most ``slots`` encoded frames of up to ``slot_size`` bytes each."""

    def __init__(self, slots, slot_size, lazy=False):
        assert slots > 0 and slot_size > HEADER_SIZE
        self.slot_size = slot_size
        # A board allocates every slot now, before the heap fragments; the virtual device
        # (lazy) only when a slot is first used, so thousands of them stay cheap.
        empty = memoryview(bytearray(0))
        self.mvs = [empty if lazy else memoryview(bytearray(slot_size)) for _ in range(slots)]
        self.lens = [0] * slots
        self.head = 0
        self.count = 0

    def full(self):
        return self.count == len(self.mvs)

    def push(self, frame):
        n = len(frame)
        assert not self.full() and n <= self.slot_size
        i = (self.head + self.count) % len(self.mvs)
        if not len(self.mvs[i]):
            self.mvs[i] = memoryview(bytearray(self.slot_size))
        self.mvs[i][:n] = frame
        self.lens[i] = n
        self.count += 1

    def oldest(self):
        assert self.count
        return self.mvs[self.head][:self.lens[self.head]]

    def drop_oldest(self):
        assert self.count
        self.head = (self.head + 1) % len(self.mvs)
        self.count -= 1

    def second(self):
        assert self.count >= 2
        i = (self.head + 1) % len(self.mvs)
        return self.mvs[i][:self.lens[i]]

    def drop_second(self):
        """Forget the second-oldest frame; the oldest (being sent) stays, in the same buffer."""
        assert self.count >= 2
        n = len(self.mvs)
        h0, h1 = self.head, (self.head + 1) % n
        self.mvs[h0], self.mvs[h1] = self.mvs[h1], self.mvs[h0]
        self.lens[h0], self.lens[h1] = self.lens[h1], self.lens[h0]
        self.head = h1
        self.count -= 1


class RingFile:
    """A file of ``capacity`` fixed-size records used as a ring; the oldest is overwritten."""

    def __init__(self, path, capacity):
        assert capacity > 0
        self.path = path
        self.capacity = capacity
        self.head = 0
        self.count = 0
        self.rec = bytearray(RECORD_SIZE)
        self.hdr = bytearray(FILE_HEADER_SIZE)
        self.f = self._open()

    def _open(self):
        try:
            f = open(self.path, "r+b")
        except OSError:
            f = None
        if f is not None:
            n = f.readinto(self.hdr)
            if n == FILE_HEADER_SIZE:
                magic, version, size, cap, head, count = struct.unpack(FILE_HEADER_FMT, self.hdr)
                if (magic == FILE_MAGIC and version == FILE_VERSION and size == RECORD_SIZE
                        and cap == self.capacity and head < cap and count <= cap):
                    self.head = head
                    self.count = count
                    return f  # records kept from before a reboot
            f.close()
        f = open(self.path, "w+b")  # new (or unusable): reserve the whole ring now
        self._write_header(f)
        zeros = bytearray(RECORD_SIZE * 16)
        left = self.capacity
        while left > 0:
            k = 16 if left >= 16 else left
            f.write(zeros if k == 16 else zeros[:RECORD_SIZE * k])
            left -= k
        f.flush()
        return f

    def _write_header(self, f=None):
        f = f or self.f
        struct.pack_into(FILE_HEADER_FMT, self.hdr, 0, FILE_MAGIC, FILE_VERSION, RECORD_SIZE,
                         self.capacity, self.head, self.count)
        f.seek(0)
        f.write(self.hdr)
        f.flush()

    def full(self):
        return self.count == self.capacity

    def append(self, t0_ms, interval_ms, kind, a, b):
        """Write one record; return 1 if the oldest had to be overwritten, else 0."""
        lost = 0
        if self.full():
            self.head = (self.head + 1) % self.capacity
            self.count -= 1
            lost = 1
        pos = (self.head + self.count) % self.capacity
        struct.pack_into(RECORD_FMT, self.rec, 0, t0_ms, interval_ms, kind, 0, a & 0xFFFF, b)
        self.f.seek(FILE_HEADER_SIZE + RECORD_SIZE * pos)
        self.f.write(self.rec)
        self.count += 1
        self._write_header()
        return lost

    def get(self, i):
        """Record ``i`` counted from the oldest: ``(t0_ms, interval_ms, kind, a, b)``."""
        assert 0 <= i < self.count
        self.f.seek(FILE_HEADER_SIZE + RECORD_SIZE * ((self.head + i) % self.capacity))
        self.f.readinto(self.rec)
        t0_ms, interval_ms, kind, _, a, b = struct.unpack(RECORD_FMT, self.rec)
        return t0_ms, interval_ms, kind, a, b

    def pop(self, n):
        assert 0 < n <= self.count
        self.head = (self.head + n) % self.capacity
        self.count -= n
        self._write_header()

    def close(self):
        self.f.close()


def _s16(u):
    return u - 65536 if u >= 32768 else u


class Backlog:
    """The outage buffer: a RAM ring of recent frames over a ring file of older records."""

    def __init__(self, ram_frames, max_frame_bytes, path, file_records,
                 level_interval_ms=LEVEL_INTERVAL_MS, lazy=False):
        self.lazy = lazy
        self.ram = FrameRing(ram_frames, max_frame_bytes, lazy)
        self.path = path
        self.file_records = file_records
        # the ring file is opened now on a board (records kept from before a reboot go out
        # first); a lazy (virtual) device creates it at its first spill
        self._file = None if lazy else RingFile(path, file_records)
        self.levels = LevelAccumulator(level_interval_ms, self._level_record)
        self.writer = FrameWriter(2 * MAX_RECORDS_PER_FRAME)
        self.dropped = 0  # records the full ring file could not keep, since boot
        self.seq = 0  # the frame counter of the next frame sent (protocol: from 0 at boot)
        self._peeked = 0  # what peek() returned: -n = n file records, 1 = a RAM frame

    def resize(self, ram_frames, max_frame_bytes):
        """New RAM slots (a live config change); the frames held move to the ring file."""
        while self.ram.count:
            self._spill(self.ram.oldest())
            self.ram.drop_oldest()
        self.levels.flush()
        if self._peeked > 0:
            # the frame being sent is now in the levels too: a retry must not reuse its seq
            self._peeked = 0
            self.seq = next_seq(self.seq)
        self.ram.mvs = []  # free the old slots before allocating the new ones
        self.ram = FrameRing(ram_frames, max_frame_bytes, self.lazy)

    @property
    def file(self):
        if self._file is None:
            self._file = RingFile(self.path, self.file_records)
        return self._file

    def _file_count(self):
        return 0 if self._file is None else self._file.count

    def capacity(self):
        """``(ram_frames, file_records)``: what the backlog can hold."""
        return len(self.ram.mvs), self.file_records

    def buffered(self):
        """Frames and records held, not yet acknowledged by the broker."""
        return self.ram.count + self._file_count() + (0 if self.levels.empty() else 1)

    def empty(self):
        return self.ram.count == 0 and self._file_count() == 0 and self.levels.empty()

    def keep(self, frame):
        """Store an encoded frame; spill the oldest RAM frame to the ring file if full."""
        if self.ram.full():
            if self._peeked <= 0:
                self._spill(self.ram.oldest())
                self.ram.drop_oldest()
            elif self.ram.count >= 2:  # the oldest is being sent: spill the next one
                self._spill(self.ram.second())
                self.ram.drop_second()
            else:
                self._spill(frame)  # a one-slot ring, and that slot is being sent
                return
        self.ram.push(frame)

    def take_seq(self):
        """The seq for a frame sent straight away (not through the backlog)."""
        seq = self.seq
        self.seq = next_seq(seq)
        return seq

    def _spill(self, frame):
        kind = frame[3]
        if kind == KIND_PCM:
            self.levels.add_frame(frame)
            return
        t0_ms, rate, count = struct.unpack_from("<qHH", frame, 12)
        for i in range(count):
            a, b = struct.unpack_from("<HH", frame, HEADER_SIZE + 4 * i)
            self._append(t0_ms + i * rate if t0_ms else 0, rate, kind, a, b)

    def _level_record(self, t0_ms, interval_ms, cdb, flags):
        self._append(t0_ms, interval_ms, KIND_LEVELS, cdb, flags)

    def _append(self, t0_ms, interval_ms, kind, a, b):
        if self._peeked < 0 and self.file.full():
            self.dropped += 1  # the oldest records are being sent: this one cannot be kept
            return
        self.dropped += self.file.append(t0_ms, interval_ms, kind, a, b)  # 1: oldest overwritten

    def peek(self, boot):
        """The next payload to publish, oldest first, with ``self.seq`` and ``boot`` in it.

        A memoryview into the backlog's own buffers: publish (or copy) it before the next
        call. None when the backlog is empty.
        """
        seq = self.seq
        if self._peeked == 0:
            self.levels.flush()  # the partial second goes out before the RAM frames
        if self._peeked < 0 or (self._peeked == 0 and self._file_count()):
            t0, interval, kind, a, b = self.file.get(0)
            records = [(_s16(a) if kind == KIND_LEVELS else a, b)]
            # a retry resends exactly the records of the first attempt, under the same seq
            limit = -self._peeked if self._peeked < 0 else MAX_RECORDS_PER_FRAME
            n = 1
            while n < self.file.count and n < limit and t0:
                t1, i1, k1, a, b = self.file.get(n)
                if k1 != kind or i1 != interval or t1 != t0 + n * interval:
                    break
                records.append((_s16(a) if kind == KIND_LEVELS else a, b))
                n += 1
            self._peeked = -n
            if kind == KIND_LEVELS:
                return self.writer.levels(seq, boot, t0, interval, records)
            return self.writer.threshold(seq, boot, t0, interval, records)
        if self.ram.count:
            self._peeked = 1
            frame = self.ram.oldest()
            struct.pack_into("<II", frame, 4, seq, boot)
            return frame
        self._peeked = 0
        return None

    def pop(self):
        """Forget what the last ``peek()`` returned (the broker has it); advance ``seq``."""
        if self._peeked == 0:
            return  # resize() already moved it into the levels and used up its seq
        if self._peeked < 0:
            self.file.pop(-self._peeked)
        else:
            self.ram.drop_oldest()
        self._peeked = 0
        self.seq = next_seq(self.seq)

    def close(self):
        if self._file is not None:
            self._file.close()


def remove(path):
    """Delete a ring file (tests, factory reset); no error if it is not there."""
    try:
        os.remove(path)
    except OSError:
        pass
