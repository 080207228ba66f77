"""Alert rules: the model, and rule evaluation as pure functions (property tests with hypothesis)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soundmon.settings import Settings
from workers import rules
from workers.analysis import analyse, window_laeq
from workers.rules import LevelRule, QuietHours, RuleSet, ThresholdRule

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FRAME_MS = 500


def lv(i, laeq, hz=250.0, rate=8000, kind=1, **extra):
    return {"device": "d", "boot": 1, "seq": i, "idx": 0, "t_ms": T0 + FRAME_MS * i, "kind": kind,
            "rate": rate, "n": rate // 2, "laeq": laeq, "dominant_hz": hz, "flags": 0, **extra}


def run_batches(values, ruleset, cuts=()):
    """Evaluate ``values`` (one 500 ms frame each) in batches split at ``cuts``, carrying the
    state and the open alerts between batches as the store does. Returns (opened, resolved)."""
    levels = [lv(i, v) for i, v in enumerate(values)]
    bounds = sorted({0, len(levels), *(c for c in cuts if 0 < c < len(levels))})
    state: dict = {}
    open_alerts: dict = {}
    opened, resolved = [], []
    next_id = 1
    for a, b in zip(bounds, bounds[1:], strict=False):
        out = analyse("d", levels[a:b], -1, state, open_alerts, ruleset, 0)
        state = out.state
        for alert in out.opened:
            alert.id, next_id = next_id, next_id + 1
            opened.append(alert)
            if alert.ended_ms is None:
                open_alerts[alert.kind] = alert
            else:
                resolved.append((alert.id, alert.ended_ms))
        for alert_id, ended in out.resolved:
            resolved.append((alert_id, ended))
            open_alerts = {k: v for k, v in open_alerts.items() if v.id != alert_id}
    return opened, resolved


PER_FRAME = RuleSet(level=LevelRule(window_s=0.0))  # 60-80 dB(A), open 2 s, resolve 5 s, 1 dB
OPEN_FRAMES = 4  # 2 s of 500 ms frames
RESOLVE_FRAMES = 10  # 5 s
cuts = st.lists(st.integers(1, 400), max_size=8)


# ---- properties -------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(wobble=st.lists(st.one_of(st.floats(79.01, 80.0), st.floats(80.0, 110.0)), min_size=1,
                      max_size=200),
       band=st.lists(st.floats(79.01, 80.0), min_size=1, max_size=60), cut=cuts,
       window_s=st.sampled_from([0.0, 5.0]))
def test_no_flapping_inside_the_hysteresis_band(wobble, band, cut, window_s):
    """Once open, a level wobbling in (max - hysteresis, max] or above never resolves or reopens it."""
    wobble = band + wobble + band
    r = RuleSet(level=LevelRule(window_s=window_s))
    opened, resolved = run_batches([90.0] * OPEN_FRAMES + wobble, r, cut)
    assert [a.kind for a in opened] == ["level_high"] and resolved == []


@settings(max_examples=150, deadline=None)
@given(wobble=st.lists(st.one_of(st.floats(60.0, 60.99), st.floats(20.0, 60.0)), min_size=1,
                      max_size=200),
       band=st.lists(st.floats(60.0, 60.99), min_size=1, max_size=60), cut=cuts,
       window_s=st.sampled_from([0.0, 5.0]))
def test_no_flapping_inside_the_hysteresis_band_on_the_low_side(wobble, band, cut, window_s):
    """Once open, a level wobbling in [min, min + hysteresis) or below never resolves or reopens
    level_low (the mirror of the high side)."""
    wobble = band + wobble + band
    r = RuleSet(level=LevelRule(window_s=window_s))
    opened, resolved = run_batches([40.0] * OPEN_FRAMES + wobble, r, cut)
    assert [a.kind for a in opened] == ["level_low"] and resolved == []


def test_an_excursion_resolved_by_hand_is_held_until_it_ends():
    """After a manual resolve (the alert leaves the open set) the same excursion opens nothing
    and resolves nothing; once back inside for resolve_s, the next excursion alerts again."""
    loud = [lv(i, 90.0) for i in range(OPEN_FRAMES + 2)]
    out = analyse("d", loud, -1, {}, {}, PER_FRAME, 0)
    (first,) = out.opened
    first.id = 1
    # resolved by hand: the next call no longer sees it open, and the level stays loud
    n = len(loud)
    still_loud = [lv(n + i, 95.0) for i in range(3 * OPEN_FRAMES)]
    out = analyse("d", still_loud, -1, out.state, {}, PER_FRAME, 0)
    assert out.opened == [] and out.resolved == []
    n += len(still_loud)
    # inside by the hysteresis, but not for resolve_s: a loud stretch now is still the same one
    out = analyse("d", [lv(n + i, 70.0) for i in range(RESOLVE_FRAMES - 2)]
                  + [lv(n + RESOLVE_FRAMES - 2 + i, 95.0) for i in range(OPEN_FRAMES + 1)],
                  -1, out.state, {}, PER_FRAME, 0)
    assert out.opened == [] and out.resolved == []
    n += RESOLVE_FRAMES - 2 + OPEN_FRAMES + 1
    # inside for resolve_s ends the held excursion silently; the next one opens a new alert
    quiet = [lv(n + i, 70.0) for i in range(RESOLVE_FRAMES)]
    out = analyse("d", quiet, -1, out.state, {}, PER_FRAME, 0)
    assert out.opened == [] and out.resolved == []
    n += RESOLVE_FRAMES
    out = analyse("d", [lv(n + i, 90.0) for i in range(OPEN_FRAMES)], -1, out.state, {},
                  PER_FRAME, 0)
    assert [a.kind for a in out.opened] == ["level_high"]
    assert out.opened[0].started_ms == T0 + FRAME_MS * n


excursion = st.tuples(st.lists(st.floats(80.5, 110.0), min_size=OPEN_FRAMES, max_size=30),
                      st.integers(0, 20))


@settings(max_examples=150, deadline=None)
@given(excursions=st.lists(excursion, min_size=1, max_size=5), cut=cuts,
       window_s=st.sampled_from([0.0, 2.0, 5.0]), quiet=st.floats(61.0, 78.0))
def test_exactly_one_alert_per_excursion(excursions, cut, window_s, quiet):
    """k loud stretches, each long enough, apart by enough quiet: k alerts, each resolved once."""
    r = RuleSet(level=LevelRule(window_s=window_s))
    window_frames = int(window_s * 1000 / FRAME_MS)
    gap = RESOLVE_FRAMES + window_frames + 2  # the window drains, then 5 s inside
    values: list[float] = [quiet] * gap
    for loud, extra in excursions:
        # an excursion of the windowed level: loud long enough to fill the window, then 2 s more
        values += [loud[0]] * window_frames + loud + [quiet] * (gap + extra)
    opened, resolved = run_batches(values, r, cut)
    assert [a.kind for a in opened] == ["level_high"] * len(excursions)
    assert sorted(i for i, _ in resolved) == [a.id for a in opened]


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.sampled_from([70.0, 90.0]), min_size=1, max_size=120), cut=cuts)
def test_minimum_duration_is_respected(values, cut):
    """An alert opens exactly when a run of frames above the bound lasts open_s (4 frames)."""
    opened, _ = run_batches(values, PER_FRAME, cut)
    # reference: the start of every run of >= 4 loud frames, where no alert is open yet
    starts, run, open_ = [], 0, False
    quiet_run = 0
    for i, v in enumerate(values):
        if v > 80:
            run, quiet_run = run + 1, 0
            if run == OPEN_FRAMES and not open_:
                starts.append(i - OPEN_FRAMES + 1)
                open_ = True
        else:
            run, quiet_run = 0, quiet_run + 1
            if open_ and quiet_run == RESOLVE_FRAMES:
                open_ = False
    assert [a.started_ms for a in opened] == [T0 + FRAME_MS * s for s in starts]
    for a in opened:
        assert a.last_out_ms - a.started_ms >= 2000  # at least open_s out of bounds


# ---- the level rule ---------------------------------------------------------------------------
def test_sliding_window_is_the_energy_average():
    """LAeq over 5 s of ten 500 ms frames: 90 then nine at 70 average to 80.37 dB(A)."""
    window: list = []
    values = [window_laeq(window, lv(i, v), T0 + FRAME_MS * (i + 1), 5.0)
              for i, v in enumerate([90.0] + [70.0] * 10)]
    assert values[0] == pytest.approx(90.0)
    assert values[9] == pytest.approx(10 * math.log10((1e9 + 9e7) / 10), abs=1e-9)  # 80.37
    assert values[10] == pytest.approx(70.0)  # the loud frame left the window


def test_window_smooths_a_short_bang_into_an_alert_only_when_the_energy_is_there():
    """A 1 s bang at 100 dB(A) keeps LAeq,5s above 80 for 5 s: one alert with the window value."""
    opened, _ = run_batches([70.0] * 12 + [100.0] * 2 + [70.0] * 20, RuleSet())
    (a,) = opened
    assert a.kind == "level_high" and a.extra["window_s"] == 5.0 and a.extra["metric"] == "laeq"
    # worst: the window holding 4 s at 70 and the 1 s at 100
    assert a.worst == pytest.approx(10 * math.log10((4e7 + 1e10) / 5), abs=0.01)  # 93.03
    assert a.last_out_ms - a.started_ms == 5500  # until the bang has left the 5 s window
    assert a.threshold == 80.0 and a.rule == "level" and a.severity == "warning"


def test_lafmax_metric_uses_each_frames_fast_maximum():
    """metric=lafmax judges LAFmax, not LAeq."""
    r = RuleSet(level=LevelRule(metric="lafmax"))
    levels = [lv(i, 70.0, lafmax=85.0) for i in range(6)]
    (a,) = analyse("d", levels, -1, {}, {}, r, 0).opened
    assert a.value == 85.0 and a.extra["metric"] == "lafmax"


def test_quiet_hours_apply_their_own_bounds_in_local_time():
    """22:00-07:00 Europe/Berlin: 50 dB(A) at 23:30 Berlin (22:30 UTC) is too loud, at noon fine."""
    r = RuleSet(level=LevelRule(window_s=0.0, min_db=None),
                quiet_hours=QuietHours(enabled=True, timezone="Europe/Berlin", max_db=45.0))
    night = int(datetime(2026, 1, 1, 22, 30, tzinfo=UTC).timestamp() * 1000)
    noon = int(datetime(2026, 1, 1, 12, 0, tzinfo=UTC).timestamp() * 1000)
    for t, expected in ((night, ["level_high"]), (noon, [])):
        levels = [{**lv(i, 50.0), "t_ms": t + FRAME_MS * i} for i in range(6)]
        out = analyse("d", levels, -1, {}, {}, r, 0)
        assert [a.kind for a in out.opened] == expected
        if expected:
            assert out.opened[0].threshold == 45.0 and out.opened[0].extra["quiet_hours"]
    assert rules.in_quiet_hours(night, r.quiet_hours)
    assert not rules.in_quiet_hours(night, QuietHours(timezone="UTC", start="23:00", end="06:00"))


def test_disabled_level_rule_raises_nothing_and_resolves_what_is_open():
    """enabled=false: loud frames raise nothing."""
    r = RuleSet(level=LevelRule(enabled=False))
    assert analyse("d", [lv(i, 95.0) for i in range(20)], -1, {}, {}, r, 0).opened == []


# ---- the frequency and threshold rules --------------------------------------------------------
def test_frequency_above_nyquist_is_not_verifiable():
    """A max_hz above fs/2 never raises freq_high, whatever the frame says."""
    r = RuleSet(frequency=rules.FrequencyRule(max_hz=3000.0))
    high = [lv(i, 70.0, hz=3500.0) for i in range(8)]  # 8 kHz: fs/2 = 4 kHz > 3 kHz: decidable
    assert [a.kind for a in analyse("d", high, -1, {}, {}, r, 0).opened] == ["freq_high"]
    r = RuleSet(frequency=rules.FrequencyRule(max_hz=5000.0))  # above fs/2: not verifiable
    assert analyse("d", [lv(i, 70.0, hz=3999.0) for i in range(8)], -1, {}, {}, r, 0).opened == []


def test_threshold_rule_on_lm393_duty():
    """duty above 30 % for 3 s opens duty_high; at or below for 5 s resolves it."""
    r = RuleSet(threshold=ThresholdRule(duty_pct=30.0, for_s=3.0, severity="critical"))
    recs = [{**lv(i, None, kind=3, rate=500), "duty": d, "n": 1}
            for i, d in enumerate([10.0] * 2 + [50.0] * 6 + [30.0] * 12)]
    (a,) = analyse("d", recs, -1, {}, {}, r, 0).opened
    assert (a.kind, a.rule, a.unit, a.severity, a.worst) == ("duty_high", "threshold", "%",
                                                             "critical", 50.0)
    assert a.state == "resolved"


def test_alert_records_its_frames_worst_and_duration():
    """An alert keeps boot, first and last seq out of bounds, worst value and how long it lasted."""
    levels = [lv(i, v) for i, v in enumerate([70, 85, 88, 91, 86, 85, 70])]
    (a,) = analyse("d", levels, -1, {}, {}, PER_FRAME, 0).opened
    assert (a.boot, a.first_seq, a.last_seq) == (1, 1, 5)
    assert a.worst == 91 and a.last_out_ms - a.started_ms == 2500


# ---- the model --------------------------------------------------------------------------------
def test_defaults_come_from_the_settings():
    """The default rule set is the settings' bounds: 60-80 dB(A), 20-20000 Hz, 5 s window."""
    r = rules.default_rules(Settings(level_max_db=85.0, timezone="Europe/Paris"))
    assert (r.level.min_db, r.level.max_db, r.level.window_s) == (60.0, 85.0, 5.0)
    assert (r.frequency.min_hz, r.frequency.max_hz) == (20.0, 20000.0)
    assert r.quiet_hours.timezone == "Europe/Paris" and not r.quiet_hours.enabled


@pytest.mark.parametrize(("patch", "message"), [
    ({"level": {"min_db": 90.0}}, "above the upper bound"),
    ({"level": {"window_s": -1}}, "level.window_s"),
    ({"level": {"metric": "lcpeak"}}, "level.metric"),
    ({"quiet_hours": {"start": "25:00"}}, "HH:MM"),
    ({"quiet_hours": {"timezone": "Mars/Olympus"}}, "unknown time zone"),
    ({"frequency": {"min_hz": 500, "max_hz": 100}}, "frequency"),
    ({"threshold": {"duty_pct": 120}}, "threshold.duty_pct"),
    ({"level": {"severity": "panic"}}, "level.severity"),
    ({"levle": {}}, "levle"),
])
def test_bad_rules_are_refused_with_a_message(patch, message):
    """Each mistake gives a RuleError naming what is wrong."""
    with pytest.raises(rules.RuleError, match=message):
        rules.effective(RuleSet(), patch)


def test_device_override_merges_over_the_defaults():
    """A partial override changes only what it names."""
    r = rules.effective(RuleSet(), {"level": {"max_db": 70.0}, "reminder_s": 0})
    assert (r.level.min_db, r.level.max_db, r.reminder_s) == (60.0, 70.0, 0)
