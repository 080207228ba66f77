"""Bounds checking and the alert state machine (pure: no broker, no database).

Default rules (shared/protocol.md section 3), both ends inclusive:

* ``level_high`` / ``level_low``: LAeq of a frame above ``level_max_db`` / below ``level_min_db``.
* ``freq_low`` / ``freq_high``: dominant frequency below ``freq_min_hz`` / above ``freq_max_hz``,
  judged only on frames above the sensor's noise floor (the "dominant frequency" of noise is
  meaningless). When fs/2 < ``freq_max_hz`` the upper edge cannot be observed, so
  ``freq_high`` is never decided from such a frame (it is *not verifiable*, not "in band").

An alert opens once a condition has held continuously for ``open_s`` and resolves once the
device has been back inside continuously for ``resolve_s``; at most one alert per device and
kind is open at any time. Levels at or before the device's high-water mark were analysed
already (a redelivered batch) and are skipped, so analysis is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from soundmon.metrics import FLAG_BIT
from soundmon.store import Alert

#: A silence longer than this between two levels breaks "continuously out of bounds".
MAX_GAP_MS = 5_000


@dataclass(frozen=True)
class Bounds:
    level_min_db: float = 60.0
    level_max_db: float = 80.0
    freq_min_hz: float = 20.0
    freq_max_hz: float = 20000.0
    open_s: float = 1.0
    resolve_s: float = 2.0


@dataclass(frozen=True)
class Rule:
    kind: str
    unit: str
    threshold: Callable[[Bounds], float]
    value: Callable[[dict[str, Any], Bounds], float | None]  # None: not decidable now
    out: Callable[[float, Bounds], bool]
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
         lambda v, b: v > b.level_max_db, max),
    Rule("level_low", "dB(A)", lambda b: b.level_min_db, _laeq,
         lambda v, b: v < b.level_min_db, min),
    Rule("freq_low", "Hz", lambda b: b.freq_min_hz, _freq,
         lambda v, b: v < b.freq_min_hz, min),
    Rule("freq_high", "Hz", lambda b: b.freq_max_hz, _freq_high,
         lambda v, b: v > b.freq_max_hz, max),
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


def duration_ms(level: dict[str, Any]) -> int:
    """Time a level covers: a kind-1 frame n/rate s, a kind-2/3 record ``rate`` ms."""
    if level.get("kind") == 1 and level.get("rate"):
        return int(round(1000 * level["n"] / level["rate"]))
    return int(level.get("rate") or 0)


def analyse(
    device: str,
    levels: Iterable[dict[str, Any]],
    hwm_t_ms: int,
    state: dict[str, Any],
    open_alerts: dict[str, Alert],
    bounds: Bounds,
) -> Outcome:
    """Run the rules over one device's new levels (any order; sorted here by time)."""
    fresh = sorted((lv for lv in levels if lv["t_ms"] > hwm_t_ms), key=lambda lv: lv["t_ms"])
    state = {k: dict(v) for k, v in state.items()}
    out = Outcome(hwm_t_ms=hwm_t_ms, state=state)
    open_now = dict(open_alerts)
    worst: dict[int, float] = {}
    for level in fresh:
        t, end = level["t_ms"], level["t_ms"] + duration_ms(level)
        for rule in RULES:
            value = rule.value(level, bounds)
            if value is None:
                continue
            st = state.setdefault(rule.kind, {"out_since": None, "in_since": None, "last": None})
            if st["last"] is not None and t - st["last"] > MAX_GAP_MS:
                st["out_since"] = st["in_since"] = None  # a gap breaks continuity
            st["last"] = end
            alert = open_now.get(rule.kind)
            if rule.out(value, bounds):
                st["in_since"] = None
                if st["out_since"] is None:
                    st["out_since"] = t
                    st["frames"] = []
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
                        extra={"frames": st["frames"], "rate": level.get("rate")},
                    )
                    open_now[rule.kind] = alert
                    out.opened.append(alert)
            else:
                st["out_since"] = None
                st.pop("worst", None)
                st.pop("frames", None)
                if alert is not None:
                    if st["in_since"] is None:
                        st["in_since"] = t
                    if end - st["in_since"] >= bounds.resolve_s * 1000:
                        if alert.id:
                            out.resolved.append((alert.id, end))
                            alert.state, alert.ended_ms = "resolved", end
                            out.resolved_alerts.append(alert)
                        else:  # opened and resolved within this batch
                            alert.state, alert.ended_ms = "resolved", end
                        del open_now[rule.kind]
                        st["in_since"] = None
        out.hwm_t_ms = max(out.hwm_t_ms, t)
    out.worst = [(k, round(v, 2)) for k, v in worst.items()]
    return out
