"""``GET /api/alerts``: stored alerts, newest first."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from dashboard.deps import Authenticated, StoreDep
from dashboard.views import alert_dict
from soundmon.protocol import DEVICE_ID

router = APIRouter(prefix="/api", tags=["alerts"], dependencies=[Authenticated])

AlertState = Literal["open", "acknowledged", "resolved"]


@router.get("/alerts")
def list_alerts(
    store: StoreDep,
    device: Annotated[str | None, Query(pattern=DEVICE_ID.pattern)] = None,
    state: AlertState | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[dict[str, Any]]:
    """Alerts, newest first; ``started``/``ended`` are ISO 8601 UTC (``ended`` null if open)."""
    return [alert_dict(a) for a in store.alerts(device, state, limit)]
