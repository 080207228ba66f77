"""The bounds rules and the alert state machine, on level sequences with known answers."""

from __future__ import annotations

from soundmon.metrics import FLAG_BIT
from soundmon.store import Alert
from workers.analysis import GAP_WAIT_MS, Bounds, analyse

# 60-80 dB(A), 20-20000 Hz, open after 2 s, resolve after 5 s, 1 dB hysteresis. These tests
# judge each frame's LAeq on its own (window 0 s); the sliding window has its own tests in
# tests/unit/test_rules.py.
B = Bounds(window_s=0.0)
T0 = 1_000_000


def lv(i, laeq, hz=1000.0, rate=8000, flags=0, boot=1):
    return {"device": "d", "boot": boot, "seq": i, "idx": 0, "t_ms": T0 + 500 * i, "kind": 1,
            "rate": rate, "n": rate // 2, "laeq": laeq, "dominant_hz": hz, "flags": flags}


def run(levels, state=None, open_alerts=None, now=0):
    return analyse("d", levels, -1, state or {}, open_alerts or {}, B, now)


def series(values, start=0, **kw):
    return [lv(start + i, v, **kw) for i, v in enumerate(values)]


def test_in_bounds_raises_nothing():
    """60.0 and 80.0 are inside (inclusive bounds)."""
    out = run(series([60.0, 70.0, 80.0, 60.0, 80.0] * 4))
    assert out.opened == [] and out.resolved == [] and out.evaluated == 20


def test_a_short_loud_burst_is_not_an_alert():
    """1.5 s above 80 dB(A) does not last the 2 s minimum."""
    assert run(series([70, 90, 90, 90, 70])).opened == []


def test_loud_stretch_opens_exactly_one_alert():
    """Two seconds above 80 dB(A) open one level_high alert with its worst value and frames."""
    out = run(series([70, 85, 88, 91, 86, 85, 70]))
    assert [a.kind for a in out.opened] == ["level_high"]
    a = out.opened[0]
    assert a.value == 86 and a.worst == 91 and a.threshold == 80.0 and a.unit == "dB(A)"
    assert a.started_ms == T0 + 500
    assert [[1, s] for s in (1, 2, 3, 4)] == a.extra["frames"]


def _open_alert():
    return Alert(7, "d", "level_high", "open", 88, 80, "dB(A)", T0, None, 91)


def test_alert_resolves_after_five_seconds_back_inside():
    """An open alert resolves once the level has been inside for 5 s, not before."""
    out = run(series([70] * 9), open_alerts={"level_high": _open_alert()})
    assert out.resolved == []
    out = run(series([70] * 10), open_alerts={"level_high": _open_alert()})
    assert out.resolved == [(7, T0 + 5000)]


def test_hysteresis_keeps_the_alert_open_just_below_the_bound():
    """79.5 dB(A) is inside but within the 1 dB hysteresis: the alert stays open."""
    out = run(series([79.5] * 20), open_alerts={"level_high": _open_alert()})
    assert out.resolved == []


def test_no_storm_while_alert_is_open():
    """While an alert is open, more loud frames update its worst value instead of opening more."""
    out = run(series([95 - i for i in range(6)]), open_alerts={"level_high": _open_alert()})
    assert out.opened == [] and out.worst == [(7, 95.0)]


def test_opened_and_resolved_in_one_batch():
    """An alert can open and resolve within one batch; it is returned resolved."""
    out = run(series([90] * 6 + [70] * 12))
    (a,) = out.opened
    assert a.state == "resolved" and a.ended_ms == T0 + 500 * 6 + 5000


def test_quiet_opens_level_low():
    """Below 60 dB(A) for two seconds opens level_low."""
    assert [a.kind for a in run(series([45] * 5)).opened] == ["level_low"]


def test_frequency_rules_and_nyquist():
    """freq_low fires below 20 Hz; freq_high is not verifiable at 8 kHz (fs/2 < 20 kHz)."""
    assert [a.kind for a in run(series([70] * 5, hz=12.0)).opened] == ["freq_low"]
    assert run(series([70] * 8, hz=3999.0)).opened == []
    out = run(series([70] * 5, hz=21000.0, rate=48000))
    assert [a.kind for a in out.opened] == ["freq_high"]


def test_frequency_is_not_judged_below_the_noise_floor():
    """The dominant frequency of a frame below the noise floor raises nothing."""
    quiet = FLAG_BIT["below_noise_floor"]
    assert run(series([70] * 8, hz=5.0, flags=quiet)).opened == []


def test_redelivered_levels_are_skipped():
    """Levels evaluated already (a redelivered batch) change nothing: no second alert."""
    levels = series([90] * 6)
    first = run(levels)
    again = analyse("d", levels, -1, first.state, {"level_high": first.opened[0]}, B, 0)
    assert len(first.opened) == 1 and again.opened == [] and again.evaluated == 0


def test_state_carries_across_batches():
    """Out-of-bounds time accumulates across batches (one frame per batch)."""
    state: dict = {}
    opened: list = []
    for i in range(8):
        out = run([lv(i, 90)], state=state, open_alerts={a.kind: a for a in opened})
        state, opened = out.state, opened + out.opened
    assert [a.kind for a in opened] == ["level_high"]


def test_batches_out_of_order_are_evaluated_in_order():
    """A later batch that arrives first waits for the earlier one; nothing is skipped."""
    first = run(series([90] * 5, start=0))
    alert = first.opened[0]
    alert.id = 7  # as the store numbers it
    late = series([70] * 12, start=8)
    middle = series([95, 95, 95], start=5)
    out = run(late, state=first.state, open_alerts={"level_high": alert})
    assert out.evaluated == 0  # frames 5-7 are missing: wait for them
    out = run(middle, state=out.state, open_alerts={"level_high": alert})
    assert out.evaluated == 15
    assert out.worst == [(7, 95.0)] and out.resolved == [(7, T0 + 500 * 8 + 5000)]


def test_a_missing_frame_is_given_up_after_a_while():
    """A frame the device never sent holds evaluation back only for GAP_WAIT_MS."""
    first = run(series([70, 70], start=0), now=0)
    out = run(series([70, 70], start=5), state=first.state, now=1000)
    assert out.evaluated == 0
    out = run(series([70], start=7), state=out.state, now=1000 + GAP_WAIT_MS)
    assert out.evaluated == 3 and out.state["gaps"] == 3


def test_a_new_boot_starts_a_new_sequence():
    """After a reboot seq starts at 0 again and is evaluated, whatever the old boot reached."""
    first = run(series([70] * 10, boot=1))
    out = run(series([70] * 3, boot=2), state=first.state)
    assert out.evaluated == 3


def test_a_gap_breaks_continuity():
    """Two loud stretches 10 s apart are not one stretch of loudness."""
    out = run([lv(0, 90), lv(1, 90), lv(30, 90), lv(31, 90)], now=10 ** 9)
    assert out.opened == []
