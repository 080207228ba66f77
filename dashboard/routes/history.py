"""``GET /api/devices/{id}/history``: levels over any range at a resolution that fits a chart."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from dashboard.deps import Authenticated, DeviceId, StoreDep
from dashboard.views import time_range_ms
from soundmon.store import now_ms

router = APIRouter(prefix="/api/devices", tags=["devices"], dependencies=[Authenticated])


@router.get("/{device_id}/history")
async def get_history(
    device_id: DeviceId,
    store: StoreDep,
    start: Annotated[str | None, Query(description="ISO 8601 or Unix ms; default end-1h")] = None,
    end: Annotated[str | None, Query(description="ISO 8601 or Unix ms; default now")] = None,
    points: Annotated[int, Query(ge=10, le=5000, description="most buckets to return "
                                                            "(about the chart's width in px)")] = 600,
) -> dict[str, Any]:
    """Levels over start <= t < end in at most ``points`` equal buckets, computed in SQL.

    Each bucket has ``t_ms`` (its start), ``laeq`` (energetic mean, dB(A)), ``lafmax`` and
    ``lafmin`` (extremes of the Fast detector) and ``n`` (rows); empty buckets are left out.
    """
    try:
        start_ms, end_ms = time_range_ms(start, end, now_ms())
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    if store.device(device_id) is None:
        raise HTTPException(404, f"unknown device {device_id!r}")
    result = await asyncio.to_thread(store.history, device_id, start_ms, end_ms, points)
    return {"device": device_id, "start_ms": start_ms, "end_ms": end_ms, **result}
