"""Per-process connections the tasks write through: the store, Redis events, MQTT alerts.

Each is created lazily in the process that uses it (Celery's prefork children), never
inherited across a fork.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import redis

from soundmon.handoff import Handoff
from soundmon.protocol import topic
from soundmon.settings import get_settings
from soundmon.store import SQLiteStore, open_store

log = logging.getLogger("soundmon.workers")

_lock = threading.Lock()
_cache: dict[str, Any] = {}


def _per_process(key: str, make: Any) -> Any:
    pid = os.getpid()
    with _lock:
        entry = _cache.get(key)
        if entry is None or entry[0] != pid:
            entry = (pid, make())
            _cache[key] = entry
        return entry[1]


def store() -> SQLiteStore:
    return _per_process("store", lambda: open_store(get_settings()))


def redis_client() -> redis.Redis:
    return _per_process("redis", lambda: redis.Redis.from_url(get_settings().redis_url))


def handoff() -> Handoff:
    """The ledger of batches the gateways accepted (``soundmon.handoff``)."""
    client = redis_client()  # outside _per_process's lock (it is not reentrant)
    return _per_process("handoff", lambda: Handoff(client, get_settings().visibility_timeout_s))


def _mqtt() -> mqtt.Client:
    s = get_settings()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"soundmon-alerts-{os.getpid()}")
    if s.mqtt_username:
        client.username_pw_set(s.mqtt_username, s.mqtt_password)
    client.reconnect_delay_set(1, 30)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.connect_async(s.mqtt_host, s.mqtt_port, keepalive=30)
    client.loop_start()
    # paho refuses to wait for a publish made before the connection is up
    if not connected.wait(5.0):
        log.warning("alert publisher not connected to mqtt://%s:%d yet", s.mqtt_host, s.mqtt_port)
    return client


def publish_alert(device: str, payload: dict[str, Any], timeout_s: float = 5.0) -> bool:
    """Publish an alert event on ``soundmon/v1/{device}/alert`` (QoS 1); False if not confirmed.

    The alert itself is already committed to the store; MQTT is a notification channel.
    """
    client = _per_process("mqtt", _mqtt)
    info = client.publish(topic(device, "alert", get_settings().mqtt_prefix),
                          json.dumps(payload), qos=1)
    try:
        info.wait_for_publish(timeout_s)
    except (RuntimeError, ValueError) as exc:
        log.warning("alert for %s not published on MQTT: %s", device, exc)
        return False
    if not info.is_published():
        log.warning("alert for %s not confirmed by the MQTT broker within %.0f s", device, timeout_s)
    return info.is_published()


def iso(ms: int | None) -> str | None:
    """Unix ms -> ISO 8601 UTC with a Z."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")
