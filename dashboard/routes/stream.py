"""``GET /api/stream``: live events as Server-Sent Events (cookie auth works: EventSource)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

from fastapi import APIRouter
from fastapi.sse import EventSourceResponse, ServerSentEvent

from dashboard.deps import Authenticated, HubDep, StoreDep
from dashboard.views import present_device
from soundmon.store import now_ms

router = APIRouter(prefix="/api", tags=["live"], dependencies=[Authenticated])

#: how long a new client waits for the Redis subscription before getting its snapshot anyway
READY_WAIT_S = 2.0
#: what EventSource waits before reconnecting after the stream drops
RETRY_MS = 3000


@router.get("/stream", response_class=EventSourceResponse)
async def stream(store: StoreDep, hub: HubDep) -> AsyncIterable[ServerSentEvent]:
    """One ``device`` event per known device, then ``level``/``alert``/``device`` as they come.

    A ``level`` event is one frame (the Redis message's list is split). FastAPI sends a
    ``: ping`` comment after 15 s without events, so proxies keep the stream open.
    """
    queue = hub.attach()  # before the snapshot: nothing published after it is missed
    try:
        await hub.wait_ready(READY_WAIT_S)
        devices = await asyncio.to_thread(store.devices)
        now = now_ms()
        yield ServerSentEvent(comment="soundmon live events", retry=RETRY_MS)
        for device in devices:
            yield ServerSentEvent(event="device", data=present_device(device, now))
        while (item := await queue.get()) is not None:  # None: the server is shutting down
            name, data = item
            yield ServerSentEvent(event=name, raw_data=data)
    finally:
        hub.detach(queue)
