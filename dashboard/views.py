"""Pure helpers that shape store records into API JSON and parse query values.

Nothing here touches the network, the database or FastAPI, so the unit tests can call it
directly; the routes translate its ``ValueError`` into 422 responses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from soundmon.store import Alert

#: a device not heard from for this long is shown offline, whatever its last status said
#: (its last will may never have been delivered, e.g. the broker restarted meanwhile)
STALE_AFTER_MS = 60_000
#: Unix ms of 0001-01-01 and 9999-12-31, the range a datetime (and SQLite's int64) can hold
_MIN_MS, _MAX_MS = -62_135_596_800_000, 253_402_300_799_999


def present_device(device: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """The store's device dict with ``online`` cleared when ``last_seen`` is too old.

    The stored ``state`` is left as it is: it is what the device last said.
    A device that never sent a status (or whose status is "unknown") but streams frames
    counts as online while its frames are fresh.
    """
    last_seen = device.get("last_seen")
    fresh = last_seen is not None and now_ms - last_seen <= STALE_AFTER_MS
    said = device.get("state")
    online = bool(device.get("online")) or (said in (None, "unknown") and fresh)
    return {**device, "online": online and fresh}


def iso_z(t_ms: int | None) -> str | None:
    """Unix ms -> ISO 8601 UTC with millisecond precision and a ``Z``; None stays None."""
    if t_ms is None:
        return None
    dt = datetime.fromtimestamp(t_ms / 1000, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_dict(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "device": alert.device,
        "kind": alert.kind,
        "state": alert.state,
        "value": alert.value,
        "threshold": alert.threshold,
        "unit": alert.unit,
        "started": iso_z(alert.started_ms),
        "ended": iso_z(alert.ended_ms),
        "worst": alert.worst,
    }


def parse_time_ms(value: str, name: str) -> int:
    """A query time as Unix ms: an integer is Unix ms, anything else ISO 8601.

    An ISO time without ``Z`` or an offset is taken as UTC. Raises ``ValueError`` with a
    message naming the parameter.
    """
    text = value.strip()
    if text.lstrip("-").isdigit():
        t_ms = int(text)
        if not _MIN_MS <= t_ms <= _MAX_MS:
            raise ValueError(f"{name}: {value!r} is out of range for Unix milliseconds")
        return t_ms
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{name}: {value!r} is neither ISO 8601 (e.g. 2026-11-23T10:00:00Z) "
            "nor Unix milliseconds"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def time_range_ms(
    start: str | None, end: str | None, now_ms: int, default_span_ms: int = 3_600_000
) -> tuple[int, int]:
    """(start_ms, end_ms) from optional query values: end defaults to now, start to end - 1 h."""
    end_ms = now_ms if end is None else parse_time_ms(end, "end")
    start_ms = end_ms - default_span_ms if start is None else parse_time_ms(start, "start")
    if start_ms > end_ms:
        raise ValueError(f"start ({iso_z(start_ms)}) is after end ({iso_z(end_ms)})")
    return start_ms, end_ms


def gateway_stats(fields: dict[Any, Any]) -> dict[str, Any]:
    """The Redis hash ``soundmon:gateway:stats`` as ``{"gateways": ..., "totals": ...}``.

    Fields are ``"<gateway_id>:<counter>"``, split at the first colon (gateway ids have none;
    counters may, e.g. ``rejected:bad_magic``); a field without ``:`` or with a non-integer
    value is skipped (it is not ours).
    """
    gateways: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    for key, raw in sorted((_text(k), v) for k, v in fields.items()):
        gw_id, sep, counter = key.partition(":")
        try:
            n = int(raw)
        except (TypeError, ValueError):
            continue
        if not sep or not gw_id or not counter:
            continue
        gateways.setdefault(gw_id, {})[counter] = n
        totals[counter] = totals.get(counter, 0) + n
    return {"gateways": gateways, "totals": totals}


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
