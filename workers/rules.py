"""Alert rules: the model, its defaults, validation and per-device overrides (pure, no I/O).

A *rule set* holds four rules and the reminder interval:

* ``level``: LAeq over a sliding window of ``window_s`` seconds (or each frame's LAFmax)
  against ``min_db``/``max_db`` (inclusive), with a minimum time out of bounds (``open_s``),
  hysteresis in dB and a time back inside (``resolve_s``) before the alert resolves;
* ``quiet_hours``: other level bounds between ``start`` and ``end`` local time, in ``timezone``;
* ``frequency``: the dominant frequency against ``min_hz``/``max_hz`` (above fs/2 the upper
  edge is *not verifiable*, never "in band": see ``workers.analysis``);
* ``threshold``: an LM393 threshold sensor's duty cycle above ``duty_pct`` for ``for_s``.

The stored defaults start as the settings' bounds (``default_rules``). A device override is a
*partial* rule set, deep-merged over the defaults (``effective``). Everything is validated by
pydantic, so the API answers a bad rule with a 422 naming the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime, time
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from soundmon.settings import Settings

Severity = Literal["info", "warning", "critical"]
RuleName = Literal["level", "frequency", "threshold"]
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
RULE_NAMES: tuple[str, ...] = ("level", "frequency", "threshold")
#: longest sliding window: the window's levels are kept in the analyser's state
MAX_WINDOW_S = 300.0
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_DB = dict(ge=-50.0, le=200.0)  # dB(A): anything outside is a typo, not a bound
_SECONDS = dict(ge=0.0, le=86_400.0)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ordered(low: float | None, high: float | None, what: str) -> None:
    if low is not None and high is not None and low > high:
        raise ValueError(f"{what}: the lower bound {low} is above the upper bound {high}")


class LevelRule(_Model):
    enabled: bool = True
    metric: Literal["laeq", "lafmax"] = "laeq"
    window_s: float = Field(5.0, ge=0.0, le=MAX_WINDOW_S)  # 0: each level on its own
    min_db: float | None = Field(60.0, **_DB)  # None: no lower bound
    max_db: float | None = Field(80.0, **_DB)  # None: no upper bound
    open_s: float = Field(2.0, **_SECONDS)
    resolve_s: float = Field(5.0, **_SECONDS)
    hysteresis_db: float = Field(1.0, ge=0.0, le=20.0)
    severity: Severity = "warning"

    @model_validator(mode="after")
    def _check(self) -> LevelRule:
        _ordered(self.min_db, self.max_db, "level")
        return self


class QuietHours(_Model):
    enabled: bool = False
    start: str = "22:00"  # local time, HH:MM; the quiet period may run past midnight
    end: str = "07:00"
    timezone: str = "UTC"  # IANA name
    min_db: float | None = Field(None, **_DB)
    max_db: float | None = Field(45.0, **_DB)

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError(f"{v!r} is not a time of day as HH:MM (00:00-23:59)")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name, e.g. Europe/Berlin)") from None
        return v

    @model_validator(mode="after")
    def _check(self) -> QuietHours:
        _ordered(self.min_db, self.max_db, "quiet_hours")
        if self.start == self.end:
            raise ValueError("quiet_hours: start and end are the same time")
        return self


class FrequencyRule(_Model):
    enabled: bool = True
    min_hz: float = Field(20.0, ge=0.0, le=100_000.0)
    max_hz: float = Field(20_000.0, ge=0.0, le=100_000.0)
    open_s: float = Field(2.0, **_SECONDS)
    resolve_s: float = Field(5.0, **_SECONDS)
    severity: Severity = "warning"

    @model_validator(mode="after")
    def _check(self) -> FrequencyRule:
        _ordered(self.min_hz, self.max_hz, "frequency")
        return self


class ThresholdRule(_Model):
    enabled: bool = True
    duty_pct: float = Field(50.0, ge=0.0, le=100.0)  # LM393 output active more than this share
    for_s: float = Field(10.0, **_SECONDS)
    resolve_s: float = Field(5.0, **_SECONDS)
    severity: Severity = "warning"


class RuleSet(_Model):
    level: LevelRule = LevelRule()
    quiet_hours: QuietHours = QuietHours()
    frequency: FrequencyRule = FrequencyRule()
    threshold: ThresholdRule = ThresholdRule()
    #: remind the channels every this many seconds while an alert is open and unacknowledged
    reminder_s: float = Field(3600.0, ge=0.0, le=7 * 86_400.0)  # 0: no reminders

    def severity(self, rule: str) -> str:
        return str(getattr(self, rule).severity)

    def level_bounds(self, t_ms: int) -> tuple[float | None, float | None, bool]:
        """(min_db, max_db, quiet) in force at Unix time ``t_ms``."""
        q = self.quiet_hours
        if q.enabled and in_quiet_hours(t_ms, q):
            return q.min_db, q.max_db, True
        return self.level.min_db, self.level.max_db, False


class RuleError(ValueError):
    """A rule set that does not validate; the message names the field."""


def in_quiet_hours(t_ms: int, q: QuietHours) -> bool:
    """Whether ``t_ms`` falls in [start, end) local time (wrapping past midnight)."""
    local = datetime.fromtimestamp(t_ms / 1000, ZoneInfo(q.timezone)).time()
    start, end = time.fromisoformat(q.start), time.fromisoformat(q.end)
    if start < end:
        return start <= local < end
    return local >= start or local < end


def default_rules(s: Settings) -> RuleSet:
    """The rule set before anyone edited it: the settings' bounds and timers."""
    return RuleSet(
        level=LevelRule(min_db=s.level_min_db, max_db=s.level_max_db, open_s=s.alert_open_s,
                        resolve_s=s.alert_resolve_s, hysteresis_db=s.alert_hysteresis_db),
        quiet_hours=QuietHours(timezone=s.timezone),
        frequency=FrequencyRule(min_hz=s.freq_min_hz, max_hz=s.freq_max_hz,
                                open_s=s.alert_open_s, resolve_s=s.alert_resolve_s),
    )


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` deep-merged over ``base`` (dicts merge, anything else replaces)."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def validate(data: Any) -> RuleSet:
    """A rule set from JSON-like data; ``RuleError`` with a readable message if it is bad."""
    if not isinstance(data, dict):
        raise RuleError("a rule set is a JSON object")
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        raise RuleError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "rules"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def effective(defaults: RuleSet, override: dict[str, Any] | None) -> RuleSet:
    """The defaults with a device's partial override merged over them."""
    if not override:
        return defaults
    return validate(merge(defaults.model_dump(), override))


def load(store: Any, device: str | None, settings: Settings) -> RuleSet:
    """A device's effective rules (or the defaults, for ``device=None``) from the store.

    A stored set that no longer validates (say, an override whose bounds cross new defaults)
    is skipped rather than stopping the analysis; the API shows the same fallback.

    The stored sets are read every time (an edit through the API counts from the next
    batch); only building and validating the models is remembered, keyed by what went in.
    The analyze worker calls this for every device in every batch, and with real-time devices
    (one frame per device per batch) the pydantic work was about 10 % of its CPU.
    """
    return load_many(store, [device], settings)[device]


def load_many(store: Any, devices: Iterable[str | None], settings: Settings) -> dict[str | None, RuleSet]:
    """``load`` for several devices, with one read of the stored sets for all of them."""
    wanted = list(dict.fromkeys(devices))
    sets = store.rule_sets(["", *(d for d in wanted if d is not None)])
    stored = sets[""]
    base = (_settings_key(settings), _json_key(stored))
    out: dict[str | None, RuleSet] = {}
    for device in wanted:
        override = None if device is None else sets[device]
        key = (*base, _json_key(override))
        found = _LOADED.get(key)
        if found is None:
            found = _load(stored, override, settings)
            if len(_LOADED) >= _LOADED_MAX:
                _LOADED.clear()
            _LOADED[key] = found
        out[device] = found
    return out


#: (settings, stored defaults, device override) -> the effective RuleSet; RuleSets are only read
_LOADED: dict[tuple[Any, ...], RuleSet] = {}
_LOADED_MAX = 4096


def _settings_key(s: Settings) -> tuple[Any, ...]:
    return (s.level_min_db, s.level_max_db, s.alert_open_s, s.alert_resolve_s,
            s.alert_hysteresis_db, s.timezone, s.freq_min_hz, s.freq_max_hz)


def _json_key(data: dict[str, Any] | None) -> str | None:
    return None if not data else json.dumps(data, sort_keys=True)


def _load(stored: dict[str, Any] | None, override: dict[str, Any] | None,
          settings: Settings) -> RuleSet:
    defaults = default_rules(settings)
    if stored:
        try:
            defaults = validate(merge(defaults.model_dump(), stored))
        except RuleError:
            pass
    try:
        return effective(defaults, override)
    except RuleError:
        return defaults
