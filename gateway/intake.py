"""The gateway's pure core: classify MQTT messages, drop duplicates, batch, and count.

No sockets here. ``Intake`` is driven by the MQTT adapter (``gateway.service``):

* ``offer(topic, payload, mid, recv_ms)`` is called for each message and says whether the
  message can be acknowledged at once (rejected, or a duplicate of a frame already handed
  to Celery) or was queued for forwarding.
* ``take_batch()`` hands out the next batch; after Celery accepted it, ``committed(batch)``
  returns the MQTT message ids that may now be acknowledged. After a failed send,
  ``requeue(batch)`` puts it back in front.

Acknowledgement rule: an MQTT message is acknowledged only when its frame (or an identical
one) is in the Celery broker, so a gateway killed at any instant loses nothing; the broker
redelivers what was not acknowledged. Message ids belong to one MQTT connection, so ids
collected before a reconnect are never acknowledged on the new connection (``new_session``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from soundmon.protocol import FrameError, decode_frame, parse_topic

log = logging.getLogger("soundmon.gateway")

ACK_NOW = "ack"  # reject or known duplicate: acknowledge immediately
QUEUED = "queued"  # waits for its batch to be accepted


@dataclass
class Pending:
    kind: str  # "frame" or "status"
    key: tuple[str, int, int] | None  # (device, boot, seq) for frames
    body: list[Any]  # frame: [device, recv_ms, payload]; status: [device, dict, recv_ms]
    mids: list[tuple[int, int]] = field(default_factory=list)  # (session, mid)


@dataclass
class Batch:
    frames: list[Pending]
    statuses: list[Pending]
    accepted: bool = False  # the frames are in the handoff ledger (soundmon.handoff)

    def __len__(self) -> int:
        return len(self.frames) + len(self.statuses)


class Intake:
    """Thread-safe: ``offer`` runs on the MQTT network thread, the rest on the flusher."""

    def __init__(self, prefix: str = "soundmon", max_batch: int = 64,
                 remember: int = 200_000) -> None:
        self.prefix = prefix
        self.max_batch = max_batch
        self.remember = remember
        self.counters: Counter[str] = Counter()
        self.session = 0
        self._queue: OrderedDict[tuple, Pending] = OrderedDict()
        self._done: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self._logged: set[tuple[str, str]] = set()
        self._oldest_ms: float | None = None
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)

    # ---- network thread ----------------------------------------------------------------
    def offer(self, topic: str, payload: bytes, mid: int, recv_ms: int, now: float) -> str:
        """Classify one message; ``now`` is a monotonic time in s for batch ageing."""
        with self.lock:
            self.counters["received"] += 1
            try:
                device, leaf = parse_topic(topic, self.prefix)
                if leaf == "frame":
                    frame = decode_frame(payload)
                    key = (device, frame.boot, frame.seq)
                    if key in self._done:
                        self.counters["duplicates"] += 1
                        return ACK_NOW
                    item = self._queue.get(key)
                    if item is not None:  # same frame again before its batch went out
                        self.counters["duplicates"] += 1
                        item.mids.append((self.session, mid))
                        return QUEUED
                    self._queue[key] = Pending("frame", key, [device, recv_ms, bytes(payload)],
                                               [(self.session, mid)])
                elif leaf == "status":
                    status = _parse_status(payload)
                    skey = ("status", device, self.counters["received"])
                    self._queue[skey] = Pending("status", None, [device, status, recv_ms],
                                                [(self.session, mid)])
                else:  # config/alert are ours to send, not to forward
                    raise FrameError("bad_topic", topic)
            except FrameError as exc:
                self._reject(topic, exc)
                return ACK_NOW
            if self._oldest_ms is None:
                self._oldest_ms = now
            if len(self._queue) >= self.max_batch:
                self.ready.notify()
            return QUEUED

    def _reject(self, topic: str, exc: FrameError) -> None:
        self.counters[f"rejected:{exc.reason}"] += 1
        self.counters["rejected"] += 1
        parts = topic.split("/")
        device = parts[2] if len(parts) > 2 else topic
        if (device, exc.reason) not in self._logged and len(self._logged) < 100_000:
            self._logged.add((device, exc.reason))
            log.warning("rejected message from %r on %s: %s (logged once per device and "
                        "reason; see the gateway counters)", device[:40], topic[:80], exc)

    def new_session(self) -> None:
        """A new MQTT connection: message ids of the old one are void."""
        with self.lock:
            self.session += 1

    # ---- flusher thread ----------------------------------------------------------------
    def wait_batch(self, max_wait_s: float, now_fn: Any, stop: threading.Event) -> Batch | None:
        """Block until a batch is full or its oldest message waited ``max_wait_s``."""
        with self.lock:
            while not stop.is_set():
                if len(self._queue) >= self.max_batch:
                    break
                if self._queue and self._oldest_ms is not None:
                    left = self._oldest_ms + max_wait_s - now_fn()
                    if left <= 0:
                        break
                    self.ready.wait(left)
                else:
                    self.ready.wait(0.2)
            if not self._queue:
                return None
            return self._take()

    def _take(self) -> Batch:
        frames, statuses = [], []
        while self._queue and len(frames) + len(statuses) < self.max_batch:
            _, item = self._queue.popitem(last=False)
            (frames if item.kind == "frame" else statuses).append(item)
        self._oldest_ms = None if not self._queue else self._oldest_ms
        return Batch(frames, statuses)

    def committed(self, batch: Batch) -> list[int]:
        """The batch is in the Celery broker: remember its frames, return ids to acknowledge."""
        with self.lock:
            for item in batch.frames:
                assert item.key is not None
                self._done[item.key] = None
            while len(self._done) > self.remember:
                self._done.popitem(last=False)
            self.counters["forwarded"] += len(batch.frames)
            self.counters["status"] += len(batch.statuses)
            self.counters["batches"] += 1
            items = [*batch.frames, *batch.statuses]
            return [mid for item in items for (session, mid) in item.mids
                    if session == self.session]

    def requeue(self, batch: Batch, now: float) -> None:
        """Sending failed: put the batch back in front, to be tried again."""
        with self.lock:
            self.counters["send_errors"] += 1
            rest = list(self._queue.items())
            self._queue.clear()
            for item in [*batch.frames, *batch.statuses]:
                key = item.key if item.key is not None else ("status", id(item))
                self._queue[key] = item
            for key, item in rest:
                if key in self._queue:  # a duplicate arrived meanwhile: keep both ids
                    self._queue[key].mids.extend(item.mids)
                else:
                    self._queue[key] = item
            self._oldest_ms = now

    def queued(self) -> int:
        with self.lock:
            return len(self._queue)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            snap = dict(self.counters)
            snap["queued"] = len(self._queue)
            return snap


#: Longest batch window while the workers are behind (see ``batch_wait_s``)
BACKLOG_MAX_WAIT_S = 0.25


def batch_wait_s(base_wait_s: float, queued_tasks: int) -> float:
    """How long a batch may wait to fill, given the batches already waiting for a worker.

    With an idle queue a frame waits at most ``base_wait_s`` (``SOUNDMON_BATCH_MAX_WAIT_MS``),
    which keeps latency low. Batches that queue up behind busy workers gain nothing by going
    out early, and small ones cost the workers more per frame (each task has its own Celery
    handling, transaction and Redis round trips: measured, a batch of 2 frames costs the
    preprocess worker about 3 times as much per frame as a batch of 64), so a backlog could
    feed itself. So the window grows with the backlog, one ``base_wait_s`` per queued task, up
    to ``BACKLOG_MAX_WAIT_S``; a full batch still goes at once.
    """
    if queued_tasks <= 0:
        return base_wait_s
    return max(base_wait_s, min(BACKLOG_MAX_WAIT_S, base_wait_s * (1 + queued_tasks)))


def _parse_status(payload: bytes) -> dict[str, Any]:
    try:
        status = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError("bad_status", str(exc)[:80]) from exc
    if not isinstance(status, dict):
        raise FrameError("bad_status", "not a JSON object")
    return status
