"""Checks of the firmware's pure modules that run unchanged on MicroPython and CPython.

``tests/unit/test_firmware_micropython.py`` runs every ``check_*`` function here twice:
under CPython (in-process) and under the real MicroPython (the npm WebAssembly build).
Plain ``assert`` only: no pytest on MicroPython.
"""

import json
import math
import struct
from array import array

from firmware import config
from firmware.backlog import Backlog, RingFile, remove
from firmware.frame import HEADER_FMT, FrameWriter
from firmware.levels import LevelAccumulator, frame_energy, level_cdb

PATH = "/backlog-check.bin"  # the CPython run points this into a temporary directory


def _tone(amplitude, n, offset=0):
    return array("h", [offset + int(round(amplitude * math.sin(2 * math.pi * i / 16)))
                       for i in range(n)])


def _records(payload):
    count = struct.unpack_from("<H", payload, 22)[0]
    return [struct.unpack_from("<hH", payload, 24 + 4 * i) for i in range(count)]


def check_level_of_a_full_scale_square_is_0_dbfs():
    """A full-scale square wave is 0 dBFS (protocol.md section 3), and it sits on the rails."""
    w = FrameWriter(64)
    square = array("h", [32767 if i % 2 else -32767 for i in range(64)])
    t0, rate, count, sum_sq, clipped = frame_energy(w.pcm(0, 1, 5000, 8000, square))
    assert (t0, rate, count, clipped) == (5000, 8000, 64, True)
    assert abs(level_cdb(sum_sq, count)) <= 1


def check_level_removes_dc_and_flags_clipping():
    """A sine rides on a DC offset: the level ignores the offset; a rail sample flags clipping."""
    w = FrameWriter(160)
    t0, rate, n, sum_sq, clipped = frame_energy(w.pcm(0, 1, 0, 8000, _tone(1000, 160, 3000)))
    expected = 20 * math.log10(1000 / math.sqrt(2) / 32768) * 100
    assert abs(level_cdb(sum_sq, n) - expected) < 2 and not clipped
    tone = _tone(1000, 160)
    tone[5] = -32768
    assert frame_energy(w.pcm(0, 1, 0, 8000, tone))[4]


def check_accumulator_makes_per_second_records_and_splits_at_gaps():
    """Two 500 ms frames make one 1 s record; a gap in time closes a record early."""
    out = []
    acc = LevelAccumulator(1000, lambda *r: out.append(r))
    w = FrameWriter(4000)
    for t0 in (10000, 10500, 11000, 20000):
        acc.add_frame(w.pcm(0, 1, t0, 8000, _tone(1000, 4000)))
    acc.flush()
    assert [(r[0], r[1]) for r in out] == [(10000, 1000), (11000, 500), (20000, 500)]
    assert len(set(r[2] for r in out)) == 1 and all(r[3] == 0 for r in out)


def check_backlog_sends_levels_then_recent_frames_oldest_first():
    """Past the RAM ring, old frames become level records; all come back oldest first."""
    remove(PATH)
    b = Backlog(3, 24 + 2 * 4000, PATH, 100)
    w = FrameWriter(4000)
    for k in range(8):  # 4 s of 500 ms frames
        b.keep(w.pcm(0, 7, 1000000 + 500 * k, 8000, _tone(2000, 4000)))
    assert b.buffered() == 3 + 2 + 1  # 3 frames in RAM, 2 full seconds, half a second
    sent = []
    b.seq = 40
    while not b.empty():
        p = b.peek(9)
        sent.append(struct.unpack_from(HEADER_FMT, p) + (_records(p) if p[3] == 2 else [],))
        b.pop()
    kinds = [s[2] for s in sent]
    assert kinds == [2, 2, 1, 1, 1]
    assert [s[3] for s in sent] == [40, 41, 42, 43, 44] and all(s[4] == 9 for s in sent)
    assert (sent[0][5], sent[0][6], sent[0][7]) == (1000000, 1000, 2)  # t0, interval, count
    assert (sent[1][5], sent[1][6], sent[1][7]) == (1002000, 500, 1)  # the partial second
    assert [s[5] for s in sent[2:]] == [1002500, 1003000, 1003500]
    assert b.dropped == 0 and b.buffered() == 0
    b.close()


def check_full_ring_file_overwrites_oldest_and_counts_it():
    """A full ring file drops its oldest record, counts it, and survives a reopen."""
    remove(PATH)
    b = Backlog(1, 24 + 2 * 4000, PATH, 2)
    w = FrameWriter(4000)
    for k in range(9):  # 1 frame in RAM, 8 frames -> 4 records, 2 kept
        b.keep(w.pcm(0, 7, 2000000 + 500 * k, 8000, _tone(500, 4000)))
    assert b.dropped == 2 and b.file.count == 2
    b.close()
    again = RingFile(PATH, 2)  # what a reboot finds in flash
    assert again.count == 2 and again.get(0)[0] == 2002000 and again.get(1)[0] == 2003000
    again.close()


def check_threshold_frames_spill_as_threshold_records():
    """LM393 frames past the RAM ring keep their (duty, edges) records, never a level."""
    remove(PATH)
    b = Backlog(1, 64, PATH, 10)
    w = FrameWriter(8)
    b.keep(w.threshold(0, 1, 5000, 500, [(2500, 3)]))
    b.keep(w.threshold(0, 1, 5500, 500, [(10000, 0)]))
    first = b.peek(1)
    assert first[3] == 3 and _records(first) == [(2500, 3)]
    b.close()


def check_retry_resends_the_same_records_under_the_same_seq():
    """What arrives while a payload is in flight never changes it: the retry is identical."""
    remove(PATH)
    b = Backlog(1, 24 + 2 * 4000, PATH, 2)
    w = FrameWriter(4000)
    for k in range(5):  # 1 frame in RAM, 2 full seconds in the file
        b.keep(w.pcm(0, 7, 3000000 + 500 * k, 8000, _tone(500, 4000)))
    first = bytes(b.peek(1))
    for k in range(5, 9):  # 2 more seconds: the file is full and its records are in flight
        b.keep(w.pcm(0, 7, 3000000 + 500 * k, 8000, _tone(500, 4000)))
    assert bytes(b.peek(1)) == first and b.dropped == 2  # the newer records were not kept
    b.pop()
    frame = bytes(b.peek(1))  # the RAM frame; while it is in flight the next one spills
    b.keep(w.pcm(0, 7, 3000000 + 500 * 9, 8000, _tone(500, 4000)))
    assert bytes(b.peek(1)) == frame and b.seq == 1
    b.close()


def check_config_limits_and_live_changes():
    """The config file merges over defaults; a live config changes only live keys, in range."""
    cfg = config.merged(config.DEFAULTS, {"device": "d1", "broker_host": "h"})
    assert config.samples_per_frame(cfg) == 4000
    new, changed = config.apply_remote(cfg, b'{"frame_ms": 250, "password": "x"}')
    assert changed == ["frame_ms"] and new["password"] == ""
    new, changed = config.apply_remote(cfg, json.dumps({"sensor": "i2s"}))
    assert (new["sensor"], new["rate"]) == ("i2s", 16000)
    for bad in (b'{"rate": 48000}', b'{"frame_ms": 5}', b"nope", b"[1]"):
        try:
            config.apply_remote(cfg, bad)
        except config.ConfigError:
            continue
        raise AssertionError(bad)
    assert config.public(dict(cfg, password="s"))["password"] == "***"


CHECKS = [v for k, v in sorted(globals().items()) if k.startswith("check_")]


def run_all():
    for check in CHECKS:
        check()
        print("ok", check.__name__)
