"""``GET /api/stream``: live events as Server-Sent Events (cookie auth works: EventSource)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Response
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event

from dashboard.deps import Authenticated, HubDep, StoreDep
from dashboard.hub import EventHub
from dashboard.views import present_device
from soundmon import jsonfast
from soundmon.store import SQLiteStore, now_ms

router = APIRouter(prefix="/api", tags=["live"], dependencies=[Authenticated])

#: how long a new client waits for the Redis subscription before getting its snapshot anyway
READY_WAIT_S = 2.0
#: what EventSource waits before reconnecting after the stream drops
RETRY_MS = 3000
#: a ``: ping`` comment after this long without events, so proxies keep the stream open
PING_S = 15.0


# the route returns its own EventSourceResponse: with response_class=EventSourceResponse
# FastAPI would encode and write every event on its own; the schema still names the type
@router.get("/stream", response_class=Response,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "Server-Sent Events"}})
async def stream(store: StoreDep, hub: HubDep) -> EventSourceResponse:
    """One ``device`` event per known device, then ``level``/``alert``/``device`` as they come.

    A ``level`` event is one frame (the Redis message's list is split). A ``: ping`` comment
    comes after 15 s without events, so proxies keep the stream open.
    """
    return EventSourceResponse(_events(store, hub),
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(store: SQLiteStore, hub: EventHub) -> AsyncIterator[bytes]:
    """The stream's bytes. Whatever is queued when the client is ready goes out in one write:
    a batch of real-time devices is one Redis message of ~50 levels, and an event per write
    (FastAPI's per-item SSE encoding) cost the dashboard 0.08 ms of CPU per level, most of
    what it spent (docs/performance.md)."""
    queue = hub.attach()  # before the snapshot: nothing published after it is missed
    try:
        await hub.wait_ready(READY_WAIT_S)
        devices = await asyncio.to_thread(store.devices)
        now = now_ms()
        yield format_sse_event(comment="soundmon live events", retry=RETRY_MS) + b"".join(
            format_sse_event(event="device", data_str=jsonfast.dumps(present_device(d, now)))
            for d in devices)
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), PING_S)
            except TimeoutError:
                yield KEEPALIVE_COMMENT
                continue
            chunk: list[bytes] = []
            while item is not None:  # None: the server is shutting down
                chunk.append(format_sse_event(event=item[0], data_str=item[1]))
                if queue.empty():
                    break
                item = queue.get_nowait()
            if chunk:
                yield b"".join(chunk)
            if item is None:
                return
    finally:
        hub.detach(queue)
