"""Devices, their stored levels and their calibration offsets."""

from __future__ import annotations

from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from dashboard.deps import Authenticated, DeviceId, SettingsDep, StoreDep
from dashboard.views import present_device, time_range_ms
from soundmon.store import SQLiteStore, now_ms

router = APIRouter(prefix="/api/devices", tags=["devices"], dependencies=[Authenticated])


class CalibrationIn(BaseModel):
    """The calibration offset K of one device: sound level in dB = dBFS + K."""

    model_config = ConfigDict(extra="forbid")
    offset_db: float = Field(ge=-50.0, le=250.0, allow_inf_nan=False, examples=[100.4])


def _device_or_404(store: SQLiteStore, device_id: str) -> dict[str, Any]:
    device = store.device(device_id)
    if device is None:
        raise HTTPException(404, f"unknown device {device_id!r}")
    return present_device(device, now_ms())


@router.get("")
def list_devices(store: StoreDep) -> list[dict[str, Any]]:
    """Every known device, by id; ``online`` is false when not heard from for 60 s."""
    now = now_ms()
    return [present_device(d, now) for d in store.devices()]


@router.get("/{device_id}")
def get_device(device_id: DeviceId, store: StoreDep) -> dict[str, Any]:
    return _device_or_404(store, device_id)


@router.get("/{device_id}/levels")
def get_levels(
    device_id: DeviceId,
    store: StoreDep,
    start: Annotated[str | None, Query(description="ISO 8601 or Unix ms; default end-1h")] = None,
    end: Annotated[str | None, Query(description="ISO 8601 or Unix ms; default now")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> dict[str, Any]:
    """Stored levels with start <= t <= end, oldest first (naive ISO times are UTC)."""
    try:
        start_ms, end_ms = time_range_ms(start, end, now_ms())
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    _device_or_404(store, device_id)
    rows = store.levels(device_id, start_ms, end_ms, limit)
    return {"device": device_id, "levels": [row.api() for row in rows]}


@router.get("/{device_id}/stats")
def get_stats(
    device_id: DeviceId,
    store: StoreDep,
    settings: SettingsDep,
    start: Annotated[str | None, Query(description="ISO 8601 or Unix ms; default end-1h")] = None,
    end: Annotated[str | None, Query(description="ISO 8601 or Unix ms; default now")] = None,
    tz: Annotated[str | None, Query(description="IANA time zone of the Lden periods; "
                                                "default SOUNDMON_TIMEZONE")] = None,
) -> dict[str, Any]:
    """Energetic statistics of LAeq over start <= t < end, computed in the store.

    ``laeq`` (energetic), ``lamax``/``lamin`` (Fast), ``l10``/``l50``/``l90`` (percentiles of
    1 s LAeq), ``lden`` (null if the window is under 24 h), ``coverage`` (0..1).
    """
    try:
        start_ms, end_ms = time_range_ms(start, end, now_ms())
        zone = tz or settings.timezone
        ZoneInfo(zone)
    except (ValueError, ZoneInfoNotFoundError) as exc:
        raise HTTPException(422, str(exc) if not isinstance(exc, ZoneInfoNotFoundError)
                            else f"tz: unknown time zone {tz!r}") from exc
    _device_or_404(store, device_id)
    return {"device": device_id, **store.stats(device_id, start_ms, end_ms, zone)}


@router.get("/{device_id}/calibration")
def get_calibration(device_id: DeviceId, store: StoreDep) -> dict[str, Any]:
    device = _device_or_404(store, device_id)
    return {
        "device": device_id,
        "offset_db": device["calibration_db"],
        "calibrated": device["calibrated"],
        "history": store.calibration_history(device_id),
    }


@router.put("/{device_id}/calibration")
def put_calibration(device_id: DeviceId, body: CalibrationIn, store: StoreDep) -> dict[str, Any]:
    """Set K (creating the device if it was never seen); returns the device."""
    store.set_calibration(device_id, body.offset_db, "api")
    return _device_or_404(store, device_id)
