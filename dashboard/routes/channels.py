"""Notification channels: ``GET/POST /api/channels``, ``DELETE /api/channels/{id}`` and
``POST /api/notifications/test``. Models and senders: ``soundmon.notifiers``."""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from dashboard.deps import Authenticated, RedisDep, SettingsDep, StoreDep
from soundmon import events, notifiers

router = APIRouter(prefix="/api", tags=["notifications"], dependencies=[Authenticated])

BUILTIN_CHANNELS = [
    {"id": "live", "kind": "live", "name": "live page", "builtin": True,
     "events": ["opened", "reminder", "resolved"]},
    {"id": "mqtt", "kind": "mqtt", "name": "MQTT soundmon/v1/{device}/alert", "builtin": True,
     "events": ["opened", "resolved"]},
]


@router.get("/channels")
def list_channels(store: StoreDep) -> list[dict[str, Any]]:
    """The built-in channels, then the stored ones (secrets and passwords masked)."""
    return BUILTIN_CHANNELS + [{**notifiers.public(c), "builtin": False} for c in store.channels()]


@router.post("/channels", status_code=201)
def add_channel(channel: notifiers.ChannelModel, store: StoreDep) -> dict[str, Any]:
    """Add a channel. A webhook without a ``secret`` gets one, shown in this answer only."""
    config = channel.model_dump()
    if config["kind"] == "webhook" and not config.get("secret"):
        config["secret"] = secrets.token_urlsafe(24)
    kind = config.pop("kind")
    channel_id = store.add_channel(kind, config)
    return {"id": channel_id, "kind": kind, **config, "builtin": False}


@router.delete("/channels/{channel_id}", status_code=204)
def delete_channel(channel_id: Annotated[int, Path(ge=1, le=2**62)], store: StoreDep) -> None:
    if not store.delete_channel(channel_id):
        raise HTTPException(404, f"unknown channel {channel_id}")


class TestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: int | str = Field(description="a stored channel's id, or a built-in channel: "
                                           "'live' or 'mqtt'")


@router.post("/notifications/test")
async def test_notification(req: TestRequest, store: StoreDep, redis: RedisDep,
                            settings: SettingsDep) -> dict[str, Any]:
    """Send a test message (``event`` = ``test``) to one channel now; 502 with the reason if
    the channel did not take it. ``live``: an alert event on the live stream; ``mqtt``:
    protocol.md's alert message on ``soundmon/v1/soundmon-test/alert`` of soundmon's broker."""
    alert = notifiers.test_alert()
    if req.channel == "live":
        await redis.publish(events.CHANNEL, json.dumps(
            {"type": "alert", "data": notifiers.protocol_payload(alert, "test")}))
        return {"ok": True, "channel": "live"}
    if req.channel == "mqtt":
        try:
            topic = await run_in_threadpool(notifiers.send_builtin_mqtt, settings, alert, "test",
                                            secrets.token_hex(4), settings.notify_timeout_s)
        except notifiers.DeliveryError as exc:
            raise HTTPException(502, f"built-in mqtt channel (mqtt://{settings.mqtt_host}:"
                                     f"{settings.mqtt_port}): {exc}") from None
        return {"ok": True, "channel": "mqtt", "topic": topic}
    try:
        channel_id = int(req.channel)
    except ValueError:
        raise HTTPException(422, f"channel: {req.channel!r} is neither 'live', 'mqtt' nor a "
                                 "channel id") from None
    channel = store.channel(channel_id)
    if channel is None:
        raise HTTPException(404, f"unknown channel {channel_id}")
    try:
        await run_in_threadpool(notifiers.send, channel, alert, "test",
                                f"test-{secrets.token_hex(4)}", settings.notify_timeout_s)
    except notifiers.DeliveryError as exc:
        raise HTTPException(502, f"{channel['kind']} channel {channel_id}: {exc}") from None
    return {"ok": True, "channel": channel_id}
