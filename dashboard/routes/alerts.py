"""Alerts: ``GET /api/alerts``, ``GET /api/alerts/{id}`` (with its delivery log),
``POST /api/alerts/{id}/ack``, ``POST /api/alerts/{id}/resolve`` and
``DELETE /api/alerts/{id}`` (with its clip). The JSON of an
alert is ``soundmon.notifiers.alert_json``."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from dashboard.deps import Authenticated, RedisDep, SettingsDep, StoreDep
from dashboard.routes.tasks import celery_app
from dashboard.views import iso_z, parse_time_ms
from soundmon import events, notifiers, tasknames
from soundmon.protocol import DEVICE_ID
from soundmon.settings import Settings

log = logging.getLogger("soundmon.dashboard")
router = APIRouter(prefix="/api", tags=["alerts"], dependencies=[Authenticated])

AlertState = Literal["open", "acknowledged", "resolved"]
AlertId = Annotated[int, Path(ge=1, le=2**62, description="alert id")]


@router.get("/alerts")
def list_alerts(
    store: StoreDep,
    device: Annotated[str | None, Query(pattern=DEVICE_ID.pattern)] = None,
    state: AlertState | None = None,
    since: Annotated[str | None, Query(description="ISO 8601 or Unix ms")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[dict[str, Any]]:
    """Alerts, newest first. ``since``: only alerts still active or ended at/after that time."""
    try:
        since_ms = None if since is None else parse_time_ms(since, "since")
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return [notifiers.alert_json(a) for a in store.alerts(device, state, limit, since_ms)]


def _delivery(d: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {"id": d["id"], "event": d["event"], "n": d["n"], "channel": d["channel"],
            "channel_name": names.get(d["channel"], d["channel"]), "state": d["state"],
            "attempts": d["attempts"], "error": d["error"], "created": iso_z(d["created_ms"]),
            "updated": iso_z(d["updated_ms"])}


@router.get("/alerts/{alert_id}")
def get_alert(alert_id: AlertId, store: StoreDep) -> dict[str, Any]:
    """One alert with the frames that caused it and its delivery log."""
    alert = store.alert(alert_id)
    if alert is None:
        raise HTTPException(404, f"unknown alert {alert_id}")
    names = {f"channel:{c['id']}": c.get("name") or f"{c['kind']} {c['id']}"
             for c in store.channels()}
    return {**notifiers.alert_json(alert),
            "evidence_frames": alert.extra.get("frames", []),
            "deliveries": [_delivery(d, names) for d in store.deliveries(alert_id)]}


class Ack(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str | None = Field(None, min_length=1, max_length=64,
                           description="who acknowledges (default: the signed-in user, else 'api')")


class Resolve(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str | None = Field(None, min_length=1, max_length=64,
                           description="who resolves (default: the signed-in user, else 'api')")


@router.post("/alerts/{alert_id}/ack")
async def acknowledge(alert_id: AlertId, request: Request, store: StoreDep, redis: RedisDep,
                      body: Annotated[Ack | None, Body()] = None) -> dict[str, Any]:
    """Acknowledge an open alert: no more reminders; it still resolves by itself."""
    user = getattr(request.state, "user", None)
    by = user or (body.by if body and body.by else "api")
    alert, why = store.acknowledge(alert_id, by)
    if alert is None:
        raise HTTPException(404, f"unknown alert {alert_id}")
    if why == "acknowledged":
        raise HTTPException(409, f"alert {alert_id} was acknowledged already by {alert.acked_by} "
                                 f"at {iso_z(alert.acked_ms)}")
    if why != "ok":
        raise HTTPException(409, f"alert {alert_id} is {why}; only an open alert can be acknowledged")
    try:  # the live page updates at once; the store is the record
        await redis.publish(events.CHANNEL, json.dumps(
            {"type": "alert", "data": notifiers.protocol_payload(alert, "acknowledged")}))
    except Exception:  # noqa: BLE001 - live events are best-effort
        pass
    return notifiers.alert_json(alert)


def send_notify(settings: Settings, alert_id: int, event_ids: list[int]) -> None:
    """What the analyze task does after a resolve (``workers.app.analyse_levels``): the events
    to the notify queue, which also has the alert's whole clip cut after the post-roll."""
    celery_app(settings).send_task(tasknames.NOTIFY, args=[event_ids])


@router.post("/alerts/{alert_id}/resolve")
async def resolve(alert_id: AlertId, request: Request, store: StoreDep, settings: SettingsDep,
                  body: Annotated[Resolve | None, Body()] = None) -> dict[str, Any]:
    """Resolve an open or acknowledged alert by hand (who: ``resolved_by``; when: ``ended``).

    The channels get the one ``resolved`` message an automatic resolve sends; the analysis
    holds the rest of this excursion silently, so it neither opens a new alert for it nor
    resolves this one again (docs/alerts.md). 404 for an unknown id, 409 if already resolved.
    """
    user = getattr(request.state, "user", None)
    by = user or (body.by if body and body.by else "api")
    alert, why, event_id = store.resolve(alert_id, by)
    if alert is None:
        raise HTTPException(404, f"unknown alert {alert_id}")
    if why != "ok":
        who = f"by {alert.resolved_by}" if alert.resolved_by else "by itself"
        raise HTTPException(409, f"alert {alert_id} was resolved already ({who}) at "
                                 f"{iso_z(alert.ended_ms)}")
    if event_id:
        try:  # the event is in the store's outbox: if the queue is down, the workers resend it
            await asyncio.to_thread(send_notify, settings, alert_id, [event_id])
        except Exception as exc:  # noqa: BLE001 - kombu raises its own OperationalError family
            log.warning("alert %d resolved; its message waits for the notify queue: %s",
                        alert_id, exc)
    return notifiers.alert_json(alert)


@router.delete("/alerts/{alert_id}", status_code=204)
def delete_alert(alert_id: AlertId, store: StoreDep, settings: SettingsDep) -> Response:
    """Delete a resolved alert: its events, delivery log and audio clip go with it.

    404 for an unknown id; 409 while it is open or acknowledged (the rules still track it:
    resolve it first). Nothing else deletes a clip (docs/recording.md).
    """
    from dashboard.routes.recordings import recording

    alert, why = store.delete_alert(alert_id)
    if alert is None:
        raise HTTPException(404, f"unknown alert {alert_id}")
    if why != "ok":
        raise HTTPException(409, f"alert {alert_id} is {why}; only a resolved alert can be "
                                 "deleted (resolve it first)")
    recording(settings).delete_clip(alert_id)
    return Response(status_code=204)
