"""Live events over Redis pub/sub: workers publish, every dashboard process fans them out.

One channel carries every event as JSON ``{"type": "level"|"alert"|"device", "data": ...}``.
A ``level`` event's data is a list of level dicts (one batch), so a busy pipeline publishes
one message per batch rather than one per frame.
"""

from __future__ import annotations

from typing import Any

import redis

from soundmon import jsonfast

CHANNEL = "soundmon:events"
EVENT_TYPES = ("level", "alert", "device")
#: Redis hash of gateway counters, one field per "<gateway_id>:<counter>"
GATEWAY_STATS_KEY = "soundmon:gateway:stats"
#: Redis key prefix of gateway heartbeats (value: JSON snapshot, expires when the gateway dies)
GATEWAY_HEARTBEAT_PREFIX = "soundmon:gateway:alive:"


def encode(event_type: str, data: Any) -> str:
    assert event_type in EVENT_TYPES, event_type
    return jsonfast.dumps({"type": event_type, "data": data})


def publish(client: redis.Redis, event_type: str, data: Any) -> None:
    """Publish one event; live events are best-effort (the store is the record)."""
    try:
        client.publish(CHANNEL, encode(event_type, data))
    except redis.RedisError:
        pass
