"""``GET /api/export/levels`` and ``GET /api/export/alerts``: CSV or JSON for a time range.

Levels are streamed from the database page by page, so a week of data does not sit in memory.
Times are ``t_ms`` (Unix ms) plus ``time`` (ISO 8601 UTC) for spreadsheets.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from dashboard.deps import Authenticated, StoreDep
from dashboard.views import iso_z, time_range_ms
from soundmon.notifiers import alert_json
from soundmon.protocol import DEVICE_ID
from soundmon.store import LevelRow, now_ms

router = APIRouter(prefix="/api/export", tags=["export"], dependencies=[Authenticated])

Format = Literal["csv", "json"]
LEVEL_FIELDS = ("device", "time", "t_ms", "laeq", "lafmax", "lafmin", "lzeq", "lceq", "lcpeak",
                "dbfs", "dominant_hz", "centroid_hz", "k_db", "flags")
ALERT_FIELDS = ("id", "device", "rule", "kind", "severity", "state", "value", "threshold", "unit",
                "worst", "started", "ended", "duration_s", "acknowledged_by", "acknowledged")
_MEDIA = {"csv": "text/csv; charset=utf-8", "json": "application/json"}
_EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}, "application/json": {}},
          "description": "the rows, as a download"}}


def _range(start: str | None, end: str | None) -> tuple[int, int]:
    try:
        return time_range_ms(start, end, now_ms())
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc


def _level(row: LevelRow) -> dict[str, Any]:
    api = row.api()
    out = {k: api.get(k) for k in LEVEL_FIELDS}
    out.update(device=row.device, time=iso_z(row.t_ms), k_db=row.k_db)
    return out


def _csv(fields: tuple[str, ...], rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for i, row in enumerate(rows, 1):
        if isinstance(row.get("flags"), list):
            row = {**row, "flags": "|".join(row["flags"])}
        writer.writerow(row)
        if i % 1000 == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def _json(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    yield "["
    for i, row in enumerate(rows):
        yield ("," if i else "") + json.dumps(row, separators=(",", ":"))
    yield "]\n"


def _download(kind: str, fmt: Format, device: str | None, start_ms: int, end_ms: int,
              fields: tuple[str, ...], rows: Iterator[dict[str, Any]]) -> StreamingResponse:
    name = f"soundmon-{kind}-{device or 'all'}-{start_ms}-{end_ms}.{fmt}"
    body = _csv(fields, rows) if fmt == "csv" else _json(rows)
    return StreamingResponse(body, media_type=_MEDIA[fmt], headers={
        "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


DeviceQuery = Annotated[str | None, Query(pattern=DEVICE_ID.pattern,
                                          description="one device; default every device")]
StartQuery = Annotated[str | None, Query(description="ISO 8601 or Unix ms; default end-1h")]
EndQuery = Annotated[str | None, Query(description="ISO 8601 or Unix ms; default now")]


@router.get("/levels", response_class=StreamingResponse, responses=_EXPORT_RESPONSES)
def export_levels(store: StoreDep, device: DeviceQuery = None, start: StartQuery = None,
                  end: EndQuery = None, format: Format = "csv") -> StreamingResponse:
    """Every stored level with start <= t < end, oldest first, as CSV (flags joined by ``|``)
    or a JSON array."""
    start_ms, end_ms = _range(start, end)
    rows = (_level(r) for r in store.iter_levels(device, start_ms, end_ms))
    return _download("levels", format, device, start_ms, end_ms, LEVEL_FIELDS, rows)


@router.get("/alerts", response_class=StreamingResponse, responses=_EXPORT_RESPONSES)
def export_alerts(store: StoreDep, device: DeviceQuery = None, start: StartQuery = None,
                  end: EndQuery = None, format: Format = "csv") -> StreamingResponse:
    """Alerts that overlap [start, end), oldest first, as CSV or a JSON array."""
    start_ms, end_ms = _range(start, end)
    rows = (alert_json(a) for a in store.alerts_between(device, start_ms, end_ms))
    return _download("alerts", format, device, start_ms, end_ms, ALERT_FIELDS, rows)
