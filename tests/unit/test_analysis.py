"""The bounds rules and the alert state machine, on level sequences with known answers."""

from __future__ import annotations

from soundmon.metrics import FLAG_BIT
from soundmon.store import Alert
from workers.analysis import Bounds, analyse

B = Bounds()  # 60-80 dB(A), 20-20000 Hz, open after 1 s, resolve after 2 s


def lv(i, laeq, hz=1000.0, rate=8000, flags=0, t0=1_000_000):
    return {"device": "d", "boot": 1, "seq": i, "t_ms": t0 + 500 * i, "kind": 1, "rate": rate,
            "n": rate // 2, "laeq": laeq, "dominant_hz": hz, "flags": flags}


def run(levels, hwm=-1, state=None, open_alerts=None):
    return analyse("d", levels, hwm, state or {}, open_alerts or {}, B)


def test_in_bounds_raises_nothing():
    """60.0 and 80.0 are inside (inclusive bounds)."""
    out = run([lv(i, v) for i, v in enumerate([60.0, 70.0, 80.0, 60.0, 80.0])])
    assert out.opened == [] and out.resolved == []


def test_one_loud_frame_is_not_an_alert():
    """A single 500 ms frame above 80 dB(A) does not last the 1 s minimum."""
    out = run([lv(0, 70), lv(1, 90), lv(2, 70)])
    assert out.opened == []


def test_loud_stretch_opens_exactly_one_alert():
    """Two seconds above 80 dB(A) open one level_high alert with its worst value and frames."""
    out = run([lv(i, v) for i, v in enumerate([70, 85, 88, 91, 86, 70])])
    assert [a.kind for a in out.opened] == ["level_high"]
    a = out.opened[0]
    assert a.value == 88 and a.worst == 91 and a.threshold == 80.0 and a.unit == "dB(A)"
    assert a.started_ms == 1_000_000 + 500
    assert [1, 1] in a.extra["frames"] and [1, 2] in a.extra["frames"]


def test_alert_resolves_after_two_seconds_back_inside():
    """An open alert resolves once the level has been inside for 2 s, not before."""
    opened = Alert(7, "d", "level_high", "open", 88, 80, "dB(A)", 1000, None, 91)
    out = run([lv(i, 70) for i in range(3)], open_alerts={"level_high": opened})
    assert out.resolved == []
    out = run([lv(i, 70) for i in range(4)], open_alerts={"level_high": opened})
    assert out.resolved == [(7, 1_000_000 + 2000)]


def test_no_storm_while_alert_is_open():
    """While an alert is open, more loud frames update its worst value instead of opening more."""
    opened = Alert(7, "d", "level_high", "open", 88, 80, "dB(A)", 1000, None, 91)
    out = run([lv(i, 95 - i) for i in range(6)], open_alerts={"level_high": opened})
    assert out.opened == [] and out.worst == [(7, 95.0)]


def test_quiet_opens_level_low():
    """Below 60 dB(A) for a second opens level_low."""
    out = run([lv(i, 45) for i in range(3)])
    assert [a.kind for a in out.opened] == ["level_low"]


def test_frequency_rules_and_nyquist():
    """freq_low fires below 20 Hz; freq_high is not verifiable at 8 kHz (fs/2 < 20 kHz)."""
    out = run([lv(i, 70, hz=12.0) for i in range(3)])
    assert [a.kind for a in out.opened] == ["freq_low"]
    out = run([lv(i, 70, hz=3999.0) for i in range(6)])
    assert out.opened == []
    out = run([lv(i, 70, hz=21000.0, rate=48000) for i in range(3)])
    assert [a.kind for a in out.opened] == ["freq_high"]


def test_frequency_is_not_judged_below_the_noise_floor():
    """The dominant frequency of a frame below the noise floor raises nothing."""
    quiet = FLAG_BIT["below_noise_floor"]
    out = run([lv(i, 70, hz=5.0, flags=quiet) for i in range(6)])
    assert out.opened == []


def test_redelivered_levels_are_skipped():
    """Levels at or before the high-water mark were analysed already: no second alert."""
    levels = [lv(i, 90) for i in range(4)]
    first = run(levels)
    again = run(levels, hwm=first.hwm_t_ms, state=first.state)
    assert len(first.opened) == 1 and again.opened == [] and again.hwm_t_ms == first.hwm_t_ms


def test_state_carries_across_batches():
    """Out-of-bounds time accumulates across batches (one frame per batch)."""
    out = run([lv(0, 90)])
    assert out.opened == []
    out2 = run([lv(1, 90)], hwm=out.hwm_t_ms, state=out.state)
    assert [a.kind for a in out2.opened] == ["level_high"]


def test_a_gap_breaks_continuity():
    """Two loud frames 10 s apart are not one second of loudness."""
    out = run([lv(0, 90), lv(20, 90)])
    assert out.opened == []
