"""Live events: one Redis pub/sub subscriber per process, fanned out to every SSE client.

Workers publish JSON ``{"type": "level"|"alert"|"device", "data": ...}`` on
``soundmon.events.CHANNEL`` (a ``level`` message carries a list, one item per frame). The hub
splits each message into SSE-sized events ``(event_name, json_text)``, serialised once, and
offers them to a bounded ``asyncio.Queue`` per connected client.

Slow clients: when a client's queue is full the OLDEST event is dropped to make room, so a
client that falls behind catches up on the newest values instead of replaying a backlog; the
drop is counted in ``dropped``. Live events are best-effort by design: the store is the record,
and the page reloads the device list on reconnect.

The subscriber task starts with the first client and runs until ``stop()`` (the app lifespan);
if Redis goes away it retries with backoff while the clients stay connected. ``close_clients()``
ends every open stream (a ``None`` in its queue), so a server can shut down without waiting on
streams that never end by themselves; EventSource reconnects to the next server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.exceptions import RedisError

from soundmon import events, jsonfast

log = logging.getLogger(__name__)

#: per-client backlog in events: about 8 s of 16 devices at 2 frames/s, enough to ride out a
#: slow phone, small enough that nothing shown after a catch-up is old
QUEUE_SIZE = 256
BACKOFF_MAX_S = 10.0

Event = tuple[str, str]  # (SSE event name, JSON text of its data)


def split_message(raw: str | bytes) -> list[Event]:
    """One Redis message -> SSE events; a malformed message gives none (and is logged)."""
    try:
        msg = jsonfast.loads(raw)
        kind, data = msg["type"], msg["data"]
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("live events: ignoring malformed message (%s): %.200r", exc, raw)
        return []
    if kind not in events.EVENT_TYPES:
        log.warning("live events: ignoring unknown event type %.40r", kind)
        return []
    items: list[Any] = data if kind == "level" and isinstance(data, list) else [data]
    return [(kind, jsonfast.dumps(item)) for item in items]


class EventHub:
    """Fan-out of the Redis event channel to per-client queues (see the module docstring)."""

    def __init__(self, redis_client: Any, queue_size: int = QUEUE_SIZE) -> None:
        self._redis = redis_client
        self._queue_size = queue_size
        self._clients: set[asyncio.Queue[Event | None]] = set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.dropped = 0

    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def attach(self) -> asyncio.Queue[Event | None]:
        """A new client's queue (None in it means: end the stream); starts the subscriber."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(self._queue_size)
        if self._closing:
            queue.put_nowait(None)
        self._clients.add(queue)
        if not self.running and self._redis is not None:
            self._task = asyncio.create_task(self._run(), name="soundmon-live-events")
        return queue

    def detach(self, queue: asyncio.Queue[Event | None]) -> None:
        self._clients.discard(queue)

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the subscription is live (so no event after this is missed)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        return self._ready.is_set()

    def publish_local(self, raw: str | bytes) -> None:
        """Offer one channel message to every client (the subscriber calls this)."""
        if self._closing:
            return
        for event in split_message(raw):
            for queue in list(self._clients):
                self._offer(queue, event)

    def close_clients(self) -> None:
        """End every open stream now and any stream opened later (server shutdown)."""
        self._closing = True
        for queue in list(self._clients):
            self._offer(queue, None)

    def _offer(self, queue: asyncio.Queue[Event | None], item: Event | None) -> None:
        while True:
            try:
                queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                queue.get_nowait()  # drop the oldest: the client gets the newest
                self.dropped += 1

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._ready.clear()

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(events.CHANNEL)
                self._ready.set()
                backoff = 0.5
                async for message in pubsub.listen():
                    self.publish_local(message["data"])
            except (RedisError, OSError) as exc:
                log.warning("live events: redis subscriber failed (%s), retrying in %.1f s",
                            exc, backoff)
            finally:
                self._ready.clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
