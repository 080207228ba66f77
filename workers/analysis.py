"""Rule evaluation and the alert state machine (pure: no broker, no database).

The rules come from ``workers.rules`` (a device's effective rule set); each yields alert kinds,
both bounds inclusive:

* ``level_high`` / ``level_low`` (rule ``level``): the LAeq over a sliding window of
  ``window_s`` seconds (energy average of the levels in it), or each frame's LAFmax, above
  ``max_db`` / below ``min_db``; during quiet hours the quiet bounds apply instead.
* ``freq_low`` / ``freq_high`` (rule ``frequency``): dominant frequency below ``min_hz`` /
  above ``max_hz``, judged only on frames above the sensor's noise floor (the "dominant
  frequency" of noise is meaningless). When fs/2 < ``max_hz`` the upper edge cannot be
  observed, so ``freq_high`` is never decided from such a frame (it is *not verifiable*,
  never "in band").
* ``duty_high`` (rule ``threshold``): an LM393 threshold record's duty cycle above ``duty_pct``.

An alert opens once a condition has held continuously for the rule's minimum time and
resolves once the device has been back inside, by ``hysteresis_db`` for the level rule,
continuously for ``resolve_s``; at most one alert per device, rule and kind is open at any
time. Each alert keeps its worst value, how long it was out (``last_out_ms``) and the frames
(boot, first and last seq) that caused it.

Resolved by hand. An alert someone resolves (``POST /api/alerts/{id}/resolve``) leaves the
open set between two calls; the kind's state still says it was alerting, so the excursion
is *held*: it goes on silently, as if the alert were still open, and opens no new alert and
announces no second resolve. The hold ends where the alert would have resolved by itself
(back inside by the hysteresis for ``resolve_s``); the next excursion alerts again.

Order and idempotency. Levels are evaluated in frame order per (device, boot): each boot
keeps the next expected ``seq``. A frame already evaluated (a redelivered batch) is skipped.
A frame that arrives ahead of a missing one (two batches processed in parallel finished out
of order) waits in ``pending`` until the gap fills, or until ``gap_wait_ms`` of wall-clock
time passed (the device itself dropped frames), so parallel preprocess workers never make
the rules skip or reorder data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from soundmon.metrics import FLAG_BIT
from soundmon.store import Alert
from workers.rules import FrequencyRule, LevelRule, RuleSet

#: A silence longer than this between two levels breaks "continuously out of bounds".
MAX_GAP_MS = 5_000
#: How long evaluation waits for a missing frame before going on without it.
GAP_WAIT_MS = 3_000
#: At most this many levels wait per boot; beyond it the gap is given up at once.
MAX_PENDING = 512
#: Boots remembered per device (a reboot starts a new sequence).
MAX_BOOTS = 4


@dataclass(frozen=True)
class Bounds:
    """The settings' bounds and timers; ``rules()`` makes the equivalent rule set."""

    level_min_db: float = 60.0
    level_max_db: float = 80.0
    freq_min_hz: float = 20.0
    freq_max_hz: float = 20000.0
    open_s: float = 2.0
    resolve_s: float = 5.0
    hysteresis_db: float = 1.0
    window_s: float = 5.0

    def rules(self) -> RuleSet:
        return RuleSet(
            level=LevelRule(min_db=self.level_min_db, max_db=self.level_max_db,
                            open_s=self.open_s, resolve_s=self.resolve_s,
                            hysteresis_db=self.hysteresis_db, window_s=self.window_s),
            frequency=FrequencyRule(min_hz=self.freq_min_hz, max_hz=self.freq_max_hz,
                                    open_s=self.open_s, resolve_s=self.resolve_s),
        )


@dataclass(frozen=True)
class Check:
    """One alert kind: which rule it belongs to, its value and its bound.

    ``limit(rules, t_ms)`` is the bound in force (None: no bound now, the level is inside);
    ``high`` kinds are out above the bound, the others below it. Back inside means inside by
    ``margin`` (the level hysteresis).
    """

    kind: str
    rule: str
    unit: str
    high: bool
    value: Callable[[dict[str, Any], RuleSet, dict[str, Any]], float | None]  # None: undecidable
    limit: Callable[[RuleSet, int], float | None]
    margin: Callable[[RuleSet], float] = lambda r: 0.0

    def out(self, value: float, limit: float) -> bool:
        return value > limit if self.high else value < limit

    def back_in(self, value: float, limit: float, rules: RuleSet) -> bool:
        m = self.margin(rules)
        return value <= limit - m if self.high else value >= limit + m

    def worse(self, a: float, b: float) -> float:
        return max(a, b) if self.high else min(a, b)


def _level_value(level: dict[str, Any], r: RuleSet, st: dict[str, Any]) -> float | None:
    if r.level.metric == "lafmax":
        return level.get("lafmax")
    return st.get("windowed")


def _freq(level: dict[str, Any], r: RuleSet, st: dict[str, Any]) -> float | None:
    if level.get("flags", 0) & (FLAG_BIT["below_noise_floor"] | FLAG_BIT["no_level"]):
        return None
    return level.get("dominant_hz")


def _freq_high(level: dict[str, Any], r: RuleSet, st: dict[str, Any]) -> float | None:
    rate = level.get("rate") or 0
    if level.get("kind") != 1 or rate / 2.0 < r.frequency.max_hz:
        return None  # the band edge lies above Nyquist: not verifiable
    return _freq(level, r, st)


def _duty(level: dict[str, Any], r: RuleSet, st: dict[str, Any]) -> float | None:
    return level.get("duty") if level.get("kind") == 3 else None


CHECKS: tuple[Check, ...] = (
    Check("level_high", "level", "dB(A)", True, _level_value,
          lambda r, t: r.level_bounds(t)[1], lambda r: r.level.hysteresis_db),
    Check("level_low", "level", "dB(A)", False, _level_value,
          lambda r, t: r.level_bounds(t)[0], lambda r: r.level.hysteresis_db),
    Check("freq_low", "frequency", "Hz", False, _freq, lambda r, t: r.frequency.min_hz),
    Check("freq_high", "frequency", "Hz", True, _freq_high, lambda r, t: r.frequency.max_hz),
    Check("duty_high", "threshold", "%", True, _duty, lambda r, t: r.threshold.duty_pct),
)
ALERT_KINDS = tuple(c.kind for c in CHECKS)


def _timers(rules: RuleSet, rule: str) -> tuple[float, float]:
    """(seconds out before opening, seconds back inside before resolving) of a rule."""
    if rule == "threshold":
        return rules.threshold.for_s, rules.threshold.resolve_s
    section = rules.level if rule == "level" else rules.frequency
    return section.open_s, section.resolve_s


def window_laeq(window: list[list[float]], level: dict[str, Any], end: int, window_s: float,
                ) -> float | None:
    """Energy-average LAeq over the last ``window_s`` seconds up to ``end`` (Unix ms).

    ``window`` holds ``[t_ms, duration_ms, laeq]`` of recent levels and is trimmed in place.
    A window of 0 s is the level itself. Levels are weighted by the part of their duration
    inside the window, so frames of any length average correctly.
    """
    laeq = level.get("laeq")
    if laeq is None:
        return None
    if window_s <= 0:
        window.clear()
        return float(laeq)
    window.append([level["t_ms"], duration_ms(level), laeq])
    start = end - window_s * 1000.0
    kept = []
    energy = weight = 0.0
    for w in window:  # one pass: trim, and sum each level's part inside (this runs per level)
        t, dur, value = w
        stop = t + dur
        if stop <= start:
            continue
        kept.append(w)
        covered = (stop if stop < end else end) - (t if t > start else start)
        if covered > 0:
            energy += covered * 10.0 ** (value / 10.0)
            weight += covered
    window[:] = kept
    if weight <= 0:
        return float(laeq)
    return 10.0 * math.log10(energy / weight)


@dataclass
class Outcome:
    hwm_t_ms: int
    state: dict[str, Any]
    opened: list[Alert] = field(default_factory=list)
    resolved: list[tuple[int, int]] = field(default_factory=list)  # (alert id, ended_ms)
    resolved_alerts: list[Alert] = field(default_factory=list)
    worst: list[tuple[int, float]] = field(default_factory=list)  # (alert id, worst value)
    #: (alert id, last_out_ms, last_seq): how far an open alert's excursion reaches now
    extended: list[tuple[int, int, int]] = field(default_factory=list)
    evaluated: int = 0
    #: ids of the alert events (opened/resolved) the store wrote; set by ``run_analysis``
    events: list[int] = field(default_factory=list)


def duration_ms(level: dict[str, Any]) -> int:
    """Time a level covers: a kind-1 frame n/rate s, a kind-2/3 record ``rate`` ms."""
    if level.get("kind") == 1 and level.get("rate"):
        return int(round(1000 * level["n"] / level["rate"]))
    return int(level.get("rate") or 0)


def release_in_order(state: dict[str, Any], levels: Iterable[dict[str, Any]],
                     now_ms: int) -> list[dict[str, Any]]:
    """Levels ready for evaluation, in frame order per boot (see the module docstring)."""
    boots: dict[str, dict[str, Any]] = state.setdefault("boots", {})
    incoming: dict[str, list[dict[str, Any]]] = {}
    for lv in levels:
        incoming.setdefault(str(lv.get("boot", 0)), []).append(lv)
    ready: list[dict[str, Any]] = []
    for boot, items in incoming.items():
        bs = boots.get(boot)
        if bs is None:
            bs = boots[boot] = {"next": min(lv["seq"] for lv in items), "pending": [],
                                "gap_since": None}
        have = {(lv["seq"], lv.get("idx", 0)) for lv in bs["pending"]}
        for lv in items:
            key = (lv["seq"], lv.get("idx", 0))
            if lv["seq"] < bs["next"] or key in have:
                state["skipped"] = state.get("skipped", 0) + 1  # evaluated already
                continue
            have.add(key)
            bs["pending"].append(lv)
        bs["touched"] = now_ms
    for bs in boots.values():
        pending = sorted(bs["pending"], key=lambda lv: (lv["seq"], lv.get("idx", 0)))
        while pending:
            seq = pending[0]["seq"]
            if seq > bs["next"]:  # a frame is missing: wait for it, for a while
                if bs["gap_since"] is None:
                    bs["gap_since"] = now_ms
                if now_ms - bs["gap_since"] < GAP_WAIT_MS and len(pending) <= MAX_PENDING:
                    break
                state["gaps"] = state.get("gaps", 0) + seq - bs["next"]
            bs["gap_since"] = None
            while pending and pending[0]["seq"] == seq:
                ready.append(pending.pop(0))
            bs["next"] = seq + 1
        bs["pending"] = pending
    for old in sorted(boots, key=lambda b: boots[b].get("touched", 0))[:-MAX_BOOTS]:
        del boots[old]
    return sorted(ready, key=lambda lv: lv["t_ms"])


def analyse(
    device: str,
    levels: Iterable[dict[str, Any]],
    hwm_t_ms: int,
    state: dict[str, Any],
    open_alerts: dict[str, Alert],
    bounds: Bounds | RuleSet,
    now_ms: int = 0,
    *,
    owned: bool = False,
) -> Outcome:
    """Run the rules over one device's new levels; ``state`` is what the last call returned.

    ``bounds`` is the device's effective rule set (``workers.rules``), or the settings'
    ``Bounds``. ``open_alerts`` maps alert kind to the device's open alert. ``owned``: the
    caller hands ``state`` over (the store decodes it afresh for each call), so it is
    updated in place instead of copied first.
    """
    rules = bounds.rules() if isinstance(bounds, Bounds) else bounds
    if not owned:
        state = {k: (dict(v) if isinstance(v, dict) else v) for k, v in state.items()}
        state["boots"] = {b: dict(v) for b, v in state.get("boots", {}).items()}
        state["window"] = [list(w) for w in state.get("window", [])]
    else:
        state.setdefault("boots", {})
        state.setdefault("window", [])
    rules_state: dict[str, dict[str, Any]] = state.setdefault("rules", {})
    for kind, st in rules_state.items():
        if st.get("alerting") and kind not in open_alerts:
            st["alerting"], st["held"] = False, True  # resolved by hand: see the module docstring
    fresh = release_in_order(state, levels, now_ms)
    out = Outcome(hwm_t_ms=hwm_t_ms, state=state, evaluated=len(fresh))
    open_now = dict(open_alerts)
    worst: dict[int, float] = {}
    reach: dict[int, tuple[int, int]] = {}
    for level in fresh:
        t, end = level["t_ms"], level["t_ms"] + duration_ms(level)
        ctx: dict[str, Any] = {}
        if level.get("laeq") is not None:
            if state.get("window_end") is not None and t - state["window_end"] > MAX_GAP_MS:
                state["window"].clear()  # a gap: the window starts again
            ctx["windowed"] = window_laeq(state["window"], level, end, rules.level.window_s)
            state["window_end"] = end
        frame = [level.get("boot"), level.get("seq")]
        for check in CHECKS:
            value = check.value(level, rules, ctx)
            if value is None:
                continue
            st = rules_state.setdefault(check.kind, {"out_since": None, "in_since": None,
                                                     "last": None})
            if st["last"] is not None and t - st["last"] > MAX_GAP_MS:
                st["out_since"] = st["in_since"] = None  # a gap breaks continuity
            st["last"] = end
            alert = open_now.get(check.kind)
            enabled = getattr(rules, check.rule).enabled
            limit = check.limit(rules, t) if enabled else None  # None: nothing to be out of
            open_s, resolve_s = _timers(rules, check.rule)
            if limit is not None and check.out(value, limit):
                st["in_since"] = None
                if st["out_since"] is None:
                    st["out_since"], st["frames"], st["worst"] = t, [], value
                st.setdefault("frames", []).append(frame)
                del st["frames"][:-50]  # keep the evidence bounded
                st["worst"] = check.worse(st.get("worst", value), value)
                if alert is not None and not alert.id:  # opened earlier in this batch
                    alert.worst = round(check.worse(alert.worst, value), 2)
                    alert.last_out_ms, alert.last_seq = end, level.get("seq")
                elif alert is not None:
                    st["alerting"] = True
                    worst[alert.id] = check.worse(worst.get(alert.id, alert.worst), value)
                    reach[alert.id] = (end, level.get("seq", 0))
                elif st.get("held"):
                    pass  # this excursion's alert was resolved by hand: no second one
                elif end - st["out_since"] >= open_s * 1000:
                    frames = list(st["frames"])
                    alert = Alert(
                        id=0, device=device, kind=check.kind, state="open", value=round(value, 2),
                        threshold=limit, unit=check.unit, started_ms=st["out_since"],
                        ended_ms=None, worst=round(st["worst"], 2),
                        extra={"frames": frames, "rate": level.get("rate"),
                               "quiet_hours": check.rule == "level" and rules.level_bounds(t)[2],
                               **({"metric": rules.level.metric,
                                   "window_s": rules.level.window_s}
                                  if check.rule == "level" else {})},
                        rule=check.rule, severity=rules.severity(check.rule),
                        boot=frames[0][0], first_seq=frames[0][1], last_seq=level.get("seq"),
                        last_out_ms=end,
                    )
                    open_now[check.kind] = alert
                    out.opened.append(alert)
                    st["alerting"] = True
                continue
            st["out_since"] = None
            st.pop("worst", None)
            st.pop("frames", None)
            if alert is None and not st.get("held"):
                continue
            if limit is not None and not check.back_in(value, limit, rules):
                st["in_since"] = None  # inside, but within the hysteresis band
                continue
            if st["in_since"] is None:
                st["in_since"] = t
            if end - st["in_since"] >= resolve_s * 1000:
                st["in_since"], st["alerting"] = None, False
                if alert is None:  # the held excursion is over, silently
                    st["held"] = False
                    continue
                alert.state, alert.ended_ms = "resolved", end
                if alert.id:
                    out.resolved.append((alert.id, end))
                    out.resolved_alerts.append(alert)
                del open_now[check.kind]
        out.hwm_t_ms = max(out.hwm_t_ms, t)
    out.worst = [(k, round(v, 2)) for k, v in worst.items()]
    out.extended = [(k, end, seq) for k, (end, seq) in reach.items()]
    return out
