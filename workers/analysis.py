"""Bounds checking and the alert state machine (pure: no broker, no database).

Default rules (shared/protocol.md section 3), both ends inclusive:

* ``level_high`` / ``level_low``: LAeq of a frame above ``level_max_db`` / below ``level_min_db``.
* ``freq_low`` / ``freq_high``: dominant frequency below ``freq_min_hz`` / above ``freq_max_hz``,
  judged only on frames above the sensor's noise floor (the "dominant frequency" of noise is
  meaningless). When fs/2 < ``freq_max_hz`` the upper edge cannot be observed, so
  ``freq_high`` is never decided from such a frame (it is *not verifiable*, not "in band").

An alert opens once a condition has held continuously for ``open_s`` and resolves once the
device has been back inside, by ``hysteresis_db`` for the level rules, continuously for
``resolve_s``; at most one alert per device and kind is open at any time.

Order and idempotency. Levels are evaluated in frame order per (device, boot): each boot
keeps the next expected ``seq``. A frame already evaluated (a redelivered batch) is skipped.
A frame that arrives ahead of a missing one (two batches processed in parallel finished out
of order) waits in ``pending`` until the gap fills, or until ``gap_wait_ms`` of wall-clock
time passed (the device itself dropped frames), so parallel preprocess workers never make
the rules skip or reorder data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from soundmon.metrics import FLAG_BIT
from soundmon.store import Alert

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
    level_min_db: float = 60.0
    level_max_db: float = 80.0
    freq_min_hz: float = 20.0
    freq_max_hz: float = 20000.0
    open_s: float = 2.0
    resolve_s: float = 5.0
    hysteresis_db: float = 1.0


@dataclass(frozen=True)
class Rule:
    kind: str
    unit: str
    threshold: Callable[[Bounds], float]
    value: Callable[[dict[str, Any], Bounds], float | None]  # None: not decidable now
    out: Callable[[float, Bounds], bool]
    back_in: Callable[[float, Bounds], bool]  # inside, past the hysteresis
    worse: Callable[[float, float], float]


def _laeq(level: dict[str, Any], b: Bounds) -> float | None:
    return level.get("laeq")


def _freq(level: dict[str, Any], b: Bounds) -> float | None:
    if level.get("flags", 0) & (FLAG_BIT["below_noise_floor"] | FLAG_BIT["no_level"]):
        return None
    return level.get("dominant_hz")


def _freq_high(level: dict[str, Any], b: Bounds) -> float | None:
    rate = level.get("rate") or 0
    if level.get("kind") != 1 or rate / 2.0 < b.freq_max_hz:
        return None  # the band edge lies above Nyquist: not verifiable
    return _freq(level, b)


RULES: tuple[Rule, ...] = (
    Rule("level_high", "dB(A)", lambda b: b.level_max_db, _laeq,
         lambda v, b: v > b.level_max_db, lambda v, b: v <= b.level_max_db - b.hysteresis_db, max),
    Rule("level_low", "dB(A)", lambda b: b.level_min_db, _laeq,
         lambda v, b: v < b.level_min_db, lambda v, b: v >= b.level_min_db + b.hysteresis_db, min),
    Rule("freq_low", "Hz", lambda b: b.freq_min_hz, _freq,
         lambda v, b: v < b.freq_min_hz, lambda v, b: v >= b.freq_min_hz, min),
    Rule("freq_high", "Hz", lambda b: b.freq_max_hz, _freq_high,
         lambda v, b: v > b.freq_max_hz, lambda v, b: v <= b.freq_max_hz, max),
)
ALERT_KINDS = tuple(r.kind for r in RULES)


@dataclass
class Outcome:
    hwm_t_ms: int
    state: dict[str, Any]
    opened: list[Alert] = field(default_factory=list)
    resolved: list[tuple[int, int]] = field(default_factory=list)  # (alert id, ended_ms)
    resolved_alerts: list[Alert] = field(default_factory=list)
    worst: list[tuple[int, float]] = field(default_factory=list)  # (alert id, worst value)
    evaluated: int = 0


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
    bounds: Bounds,
    now_ms: int = 0,
) -> Outcome:
    """Run the rules over one device's new levels; ``state`` is what the last call returned."""
    state = {k: (dict(v) if isinstance(v, dict) else v) for k, v in state.items()}
    state["boots"] = {b: dict(v) for b, v in state.get("boots", {}).items()}
    rules_state: dict[str, dict[str, Any]] = state.setdefault("rules", {})
    fresh = release_in_order(state, levels, now_ms)
    out = Outcome(hwm_t_ms=hwm_t_ms, state=state, evaluated=len(fresh))
    open_now = dict(open_alerts)
    worst: dict[int, float] = {}
    for level in fresh:
        t, end = level["t_ms"], level["t_ms"] + duration_ms(level)
        for rule in RULES:
            value = rule.value(level, bounds)
            if value is None:
                continue
            st = rules_state.setdefault(rule.kind, {"out_since": None, "in_since": None,
                                                    "last": None})
            if st["last"] is not None and t - st["last"] > MAX_GAP_MS:
                st["out_since"] = st["in_since"] = None  # a gap breaks continuity
            st["last"] = end
            alert = open_now.get(rule.kind)
            if rule.out(value, bounds):
                st["in_since"] = None
                if st["out_since"] is None:
                    st["out_since"], st["frames"], st["worst"] = t, [], value
                st.setdefault("frames", []).append([level.get("boot"), level.get("seq")])
                del st["frames"][:-50]  # keep the evidence bounded
                st["worst"] = rule.worse(st.get("worst", value), value)
                if alert is not None and not alert.id:  # opened earlier in this batch
                    alert.worst = round(rule.worse(alert.worst, value), 2)
                elif alert is not None:
                    worst[alert.id] = rule.worse(worst.get(alert.id, alert.worst), value)
                elif end - st["out_since"] >= bounds.open_s * 1000:
                    alert = Alert(
                        id=0, device=device, kind=rule.kind, state="open", value=round(value, 2),
                        threshold=rule.threshold(bounds), unit=rule.unit,
                        started_ms=st["out_since"], ended_ms=None, worst=round(st["worst"], 2),
                        extra={"frames": list(st["frames"]), "rate": level.get("rate")},
                    )
                    open_now[rule.kind] = alert
                    out.opened.append(alert)
                continue
            st["out_since"] = None
            st.pop("worst", None)
            st.pop("frames", None)
            if alert is None:
                continue
            if not rule.back_in(value, bounds):  # inside, but within the hysteresis band
                st["in_since"] = None
                continue
            if st["in_since"] is None:
                st["in_since"] = t
            if end - st["in_since"] >= bounds.resolve_s * 1000:
                alert.state, alert.ended_ms = "resolved", end
                if alert.id:
                    out.resolved.append((alert.id, end))
                    out.resolved_alerts.append(alert)
                del open_now[rule.kind]
                st["in_since"] = None
        out.hwm_t_ms = max(out.hwm_t_ms, t)
    out.worst = [(k, round(v, 2)) for k, v in worst.items()]
    return out
