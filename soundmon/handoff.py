"""The handoff ledger: each batch the gateway accepted stays in Redis until its levels are stored.

Why it exists. kombu's Redis transport takes a task off the queue with ``BRPOP`` and only
afterwards records it as unacknowledged (a second round trip), so a worker SIGKILLed in
between loses the task for good; ``acks_late`` and ``reject_on_worker_lost`` never see it
(shared/reliability.md 1.3 and 1.5: celery#7950, #4354). ``tests/e2e/test_up.py`` caught it:
one batch of three frames lost in about a third of the runs that kill the preprocess worker.

So a Celery message never is the only copy of a batch:

1. the gateway writes the batch here first (Redis with ``appendfsync always``: on disk when
   the write returns) with a due time, ``now + redeliver_s``; that write is what "accepted"
   means, and only after it are the frames acknowledged to MQTT;
2. it then sends a ``preprocess`` task that carries only the batch id (a few dozen bytes,
   where the frames themselves would be base64-encoded twice on the way through kombu);
3. a preprocess worker reads the batch (``take``) and hands its levels to the store step,
   which stores them and only then deletes the batch (``done``);
4. ``sweep`` (run by the gateways, one at a time under a short lock) sends a task again for
   every batch past its due time, whichever way its task was lost: a killed consumer, a
   broker crash, a RabbitMQ node that lost a message. It waits while tasks queue in the
   broker, preprocess or store tasks (the overdue batch is most likely among them), and each
   re-send doubles the time to the next one (up to 64 x ``redeliver_s``), so workers that are
   down for an hour cost a handful of duplicate task messages per batch, not one per sweep.
5. A batch that the workers keep failing on (a poison batch) is moved aside to ``DEAD_KEY``
   after ``max_tries`` attempts and counted (``stats()["given_up"]``), never retried forever.

Redelivery is cheap and safe: a task whose batch is already gone returns at once, and the
store ignores levels it has (idempotent on (device, boot, seq)).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import redis

log = logging.getLogger("soundmon.handoff")

BATCHES_KEY = "soundmon:handoff:batches"  # hash: batch id -> msgpack [[device, recv_ms, frame]]
DUE_KEY = "soundmon:handoff:due"  # sorted set: batch id -> when to send it again (Unix ms)
SENDS_KEY = "soundmon:handoff:sends"  # hash: batch id -> how many times the sweep re-sent it
TRIES_KEY = "soundmon:handoff:tries"  # hash: batch id -> how many times a worker took it up
DEAD_KEY = "soundmon:handoff:dead"  # hash: batch id -> the batch, given up after max_tries
SWEEP_LOCK_KEY = "soundmon:handoff:sweep-lock"

#: Attempts by workers at one batch before it is set aside in DEAD_KEY. Celery's own retries
#: (``workers.app.RETRY``: 20, with backoff up to 30 s) count too, so this is a batch that
#: failed through more than two full rounds of retries.
MAX_TRIES = 50
#: The n-th re-send of a batch waits redeliver_s * 2**min(n, BACKOFF_CAP) (64 x: about an hour)
BACKOFF_CAP = 6
#: Batches re-sent per sweep at most (a sweep after a long outage works through the rest next time)
SWEEP_LIMIT = 500


def now_ms() -> int:
    return int(time.time() * 1000)


class Handoff:
    """The ledger on one Redis connection; every method is one round trip (a sweep that finds
    nothing overdue too)."""

    def __init__(self, client: redis.Redis, redeliver_s: float, max_tries: int = MAX_TRIES) -> None:
        self.r = client
        self.redeliver_ms = int(redeliver_s * 1000)
        self.max_tries = max_tries

    # ---- gateway -----------------------------------------------------------------------
    def put(self, frames: list[list[Any]], now: int | None = None) -> str:
        """Keep a batch (``[device, recv_ms, frame bytes]`` entries); returns its id."""
        batch_id = uuid.uuid4().hex
        blob = msgpack.packb(frames, use_bin_type=True)
        due = (now_ms() if now is None else now) + self.redeliver_ms
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(BATCHES_KEY, batch_id, blob)
        pipe.zadd(DUE_KEY, {batch_id: due})
        pipe.execute()
        return batch_id

    def due_now(self, batch_id: str) -> None:
        """Its task could not be sent: let the next sweep send it."""
        self.r.zadd(DUE_KEY, {batch_id: 0}, xx=True)

    def sweep(self, send: Callable[[str], None], now: int | None = None,
              backlog: int | Callable[[], int] = 0, limit: int = SWEEP_LIMIT) -> int:
        """Send a task again for each batch past its due time; returns how many were sent.

        ``backlog``: tasks waiting in the broker's preprocess queue (0 if unknown), or a
        function asked only when some batch is overdue; while there are any, nothing is
        re-sent. Only one process sweeps at a time (a lock that lapses by itself); the others
        return 0. ``send`` raising stops the sweep: the batches not sent stay due for the next.
        """
        if not callable(backlog) and backlog > 0:
            return 0
        now = now_ms() if now is None else now
        if not self.r.zcount(DUE_KEY, "-inf", now):
            return 0  # the usual case: one round trip
        if callable(backlog) and backlog() > 0:
            return 0
        if not self.r.set(SWEEP_LOCK_KEY, "1", nx=True, px=max(1000, self.redeliver_ms // 2)):
            return 0
        try:
            ids = [i.decode() if isinstance(i, bytes) else i
                   for i in self.r.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=limit)]
            for batch_id in ids:
                send(batch_id)
                sends = int(self.r.hincrby(SENDS_KEY, batch_id, 1))
                wait_ms = self.redeliver_ms * 2 ** min(sends, BACKOFF_CAP)
                if not self.r.zadd(DUE_KEY, {batch_id: now + wait_ms}, xx=True, ch=True):
                    self.r.hdel(SENDS_KEY, batch_id)  # stored meanwhile
            if ids:
                log.warning("sent %d batch(es) again whose levels were not stored in time",
                            len(ids))
            return len(ids)
        finally:
            self.r.delete(SWEEP_LOCK_KEY)

    # ---- worker ------------------------------------------------------------------------
    def take(self, batch_id: str) -> list[list[Any]] | None:
        """A worker starts on the batch: its frames, or None when there is nothing to do (it is
        stored already, a redelivered task; or it failed ``max_tries`` times and was set aside)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(TRIES_KEY, batch_id, 1).hget(BATCHES_KEY, batch_id)
        tries, blob = pipe.execute()
        if blob is None:
            self.r.hdel(TRIES_KEY, batch_id)
            return None
        if int(tries) > self.max_tries:
            self._give_up(batch_id, blob, int(tries) - 1)
            return None
        return msgpack.unpackb(blob, raw=False)

    def get(self, batch_id: str) -> list[list[Any]] | None:
        """The batch's frames (None if it is not in the ledger), without counting a try."""
        blob = self.r.hget(BATCHES_KEY, batch_id)
        return None if blob is None else msgpack.unpackb(blob, raw=False)

    def done(self, batch_id: str) -> None:
        """Its levels are stored: forget it."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(BATCHES_KEY, batch_id).zrem(DUE_KEY, batch_id)
        pipe.hdel(SENDS_KEY, batch_id).hdel(TRIES_KEY, batch_id)
        pipe.execute()

    def _give_up(self, batch_id: str, blob: bytes, tries: int) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(DEAD_KEY, batch_id, blob)
        pipe.hdel(BATCHES_KEY, batch_id).zrem(DUE_KEY, batch_id)
        pipe.hdel(SENDS_KEY, batch_id).hdel(TRIES_KEY, batch_id)
        pipe.execute()
        log.error("batch %s failed %d times; set aside in Redis %s for inspection (the worker "
                  "log says why it fails)", batch_id, tries, DEAD_KEY)

    # ---- health ------------------------------------------------------------------------
    def stats(self, now: int | None = None) -> dict[str, Any]:
        """Batches waiting to be stored, how many are overdue, and how many were given up."""
        now = now_ms() if now is None else now
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(DUE_KEY).zcount(DUE_KEY, "-inf", now).hlen(DEAD_KEY)
        pending, overdue, dead = pipe.execute()
        return {"pending": int(pending), "overdue": int(overdue), "given_up": int(dead)}
