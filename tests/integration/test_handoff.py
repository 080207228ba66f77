"""The handoff ledger (soundmon.handoff) on a real redis-server, and a lost task recovered end to end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from amqp.exceptions import ChannelError

from soundmon.celeryconf import make_celery
from soundmon.handoff import BATCHES_KEY, DEAD_KEY, SENDS_KEY, SWEEP_LOCK_KEY, TRIES_KEY, Handoff
from soundmon.settings import Settings
from tests.conftest import BROKER_STORE_PAIRS, Stack, wait_until
from tests.helpers import Publisher, hand_frame, sine

pytestmark = pytest.mark.integration

RATE, N = 8000, 4000


@pytest.fixture
def r(redis_port: int) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_port)
    yield client
    client.close()


def test_a_batch_is_kept_until_done(r: redis.Redis) -> None:
    """put keeps the frames byte for byte; done forgets them; get of a done batch is None."""
    h = Handoff(r, redeliver_s=60)
    frames = [["kitchen", 1700000000000, b"SM\x01\x01" + bytes(range(256)) * 4]]
    bid = h.put(frames)
    assert h.get(bid) == frames
    assert h.stats()["pending"] == 1
    h.done(bid)
    assert h.get(bid) is None
    assert h.stats() == {"pending": 0, "overdue": 0, "given_up": 0}


def test_sweep_sends_only_overdue_batches_and_backs_off(r: redis.Redis) -> None:
    """A batch past its due time is sent again, the next time after twice the wait, and so on;
    a fresh batch is not sent; a stored one no more."""
    h = Handoff(r, redeliver_s=10)
    old = h.put([["a", 1, b"x"]], now=1_000)  # due at 11 000
    fresh = h.put([["b", 2, b"y"]], now=100_000)
    sent: list[str] = []
    assert h.sweep(sent.append, now=20_000) == 1 and sent == [old]  # next due: 20 000 + 2 x 10 s
    assert h.sweep(sent.append, now=39_000) == 0
    assert h.sweep(sent.append, now=40_000) == 1  # next due: 40 000 + 4 x 10 s
    assert h.sweep(sent.append, now=79_000) == 0
    assert h.sweep(sent.append, now=80_000) == 1 and sent == [old] * 3
    h.done(old)
    assert h.sweep(sent.append, now=200_000) == 1 and sent[-1] == fresh


def test_nothing_is_sent_again_while_tasks_wait_in_the_broker(r: redis.Redis) -> None:
    """With tasks queued (workers busy or down) the overdue batch is most likely among them."""
    h = Handoff(r, redeliver_s=10)
    bid = h.put([["a", 1, b"x"]], now=0)
    sent: list[str] = []
    assert h.sweep(sent.append, now=50_000, backlog=3) == 0 and sent == []
    asked: list[int] = []

    def depth() -> int:  # the gateway's queue-depth probe, asked only when a batch is overdue
        asked.append(1)
        return 2

    assert h.sweep(sent.append, now=5_000, backlog=depth) == 0 and asked == []  # not overdue
    assert h.sweep(sent.append, now=50_000, backlog=depth) == 0 and asked == [1] and sent == []
    assert h.sweep(sent.append, now=50_000, backlog=0) == 1 and sent == [bid]


def test_sweep_that_cannot_send_leaves_the_batch_due(r: redis.Redis) -> None:
    """A broker that refuses the task: the batch stays due and goes with the next sweep."""
    h = Handoff(r, redeliver_s=10)
    bid = h.put([["a", 1, b"x"]], now=0)

    def refuse(_: str) -> None:
        raise redis.ConnectionError("broker down")

    with pytest.raises(redis.ConnectionError):
        h.sweep(refuse, now=20_000)
    assert r.get(SWEEP_LOCK_KEY) is None  # the lock is released on the way out
    sent: list[str] = []
    assert h.sweep(sent.append, now=20_001) == 1 and sent == [bid]


def test_only_one_process_sweeps_at_a_time(r: redis.Redis) -> None:
    """While another gateway holds the sweep lock, a sweep sends nothing."""
    h = Handoff(r, redeliver_s=10)
    h.put([["a", 1, b"x"]], now=0)
    r.set(SWEEP_LOCK_KEY, "1", px=5000)
    sent: list[str] = []
    assert h.sweep(sent.append, now=20_000) == 0 and sent == []


def test_a_redelivered_task_of_a_stored_batch_finds_nothing_to_do(r: redis.Redis) -> None:
    """take() after done() is None and leaves no bookkeeping behind."""
    h = Handoff(r, redeliver_s=10)
    bid = h.put([["a", 1, b"x"]])
    assert h.take(bid) == [["a", 1, b"x"]]
    h.done(bid)
    assert h.take(bid) is None
    assert not any(r.hexists(k, bid) for k in (BATCHES_KEY, SENDS_KEY, TRIES_KEY))


def test_a_poison_batch_is_set_aside_after_max_tries(r: redis.Redis) -> None:
    """A batch the workers keep failing on is handed out max_tries times, then moved to
    DEAD_KEY and counted; workers merely down (no tries) never make a batch given up."""
    h = Handoff(r, redeliver_s=1, max_tries=3)
    bid = h.put([["a", 1, b"x"]], now=0)
    for i in range(20):  # sweeps alone, nobody takes it: still pending
        h.sweep(lambda _: None, now=1_000_000 * (i + 1))
    assert h.stats()["pending"] == 1 and h.stats()["given_up"] == 0
    assert [h.take(bid) is not None for _ in range(5)] == [True, True, True, False, False]
    assert r.hexists(DEAD_KEY, bid) and not r.hexists(BATCHES_KEY, bid)
    assert not r.hexists(SENDS_KEY, bid) and not r.hexists(TRIES_KEY, bid)
    assert h.stats() == {"pending": 0, "overdue": 0, "given_up": 1}


def _waiting(conn: Any) -> int:
    """Tasks in the broker's preprocess queue (kombu's Redis transport deletes an empty one)."""
    try:
        return conn.default_channel.queue_declare("preprocess", passive=True).message_count
    except ChannelError:
        return 0


# each broker and each store once (Redis + SQLite, RabbitMQ + InfluxDB), not the cross product:
# the two more runs would add about 25 s (measured here), and the store's part, storing a
# redelivered frame once, runs on both stores behind both brokers in test_pipeline.py
@BROKER_STORE_PAIRS
def test_tasks_lost_after_the_handoff_are_sent_again_and_stored(
        tmp_path: Path, mosquitto: int, redis_port: int, celery_broker: str,
        level_store: dict[str, str]) -> None:
    """Preprocess tasks lost after the gateway acknowledged the frames (what a consumer SIGKILLed
    between kombu's BRPOP and its unacked bookkeeping does; here: the queue purged before any
    worker ran) are sent again by the gateway's sweep, and every frame is stored once."""
    stack = Stack(tmp_path, mosquitto, redis_port, SOUNDMON_VISIBILITY_TIMEOUT_S="4",
                  SOUNDMON_BROKER_URL=celery_broker, **level_store)
    try:
        stack.start("gateway", "worker-analyze")
        pub = Publisher(mosquitto)
        t0 = int(time.time() * 1000)
        for seq in range(20):
            pub.publish("soundmon/v1/lost-tasks/frame",
                        hand_frame(seq, 5, t0 + 500 * seq, RATE, sine(700, 2000, RATE, N)))
        pub.close()  # every PUBACK seen; the gateway acknowledges after the ledger write
        ledger = Handoff(redis.Redis(port=redis_port), redeliver_s=4)
        wait_until(lambda: ledger.stats()["pending"] >= 1
                   and sum(len(ledger.get(k.decode()) or []) for k in
                           redis.Redis(port=redis_port).hkeys(BATCHES_KEY)) == 20,
                   timeout=20, what="all 20 frames in the handoff ledger")
        app = make_celery(Settings(broker_url=celery_broker,
                                   redis_url=f"redis://127.0.0.1:{redis_port}/0"))
        with app.connection_for_write() as conn:
            # the gateway sends each task just after its ledger write: wait for all of them
            wait_until(lambda: _waiting(conn) >= ledger.stats()["pending"], timeout=10,
                       what="a preprocess task per batch in the ledger")
            conn.default_channel.queue_purge("preprocess")
            assert _waiting(conn) == 0  # the tasks are gone: only the ledger has the frames
        stack.start("worker-preprocess")
        store = stack.store()  # the SQLite file or InfluxDB, as the workers' settings choose
        wait_until(lambda: store.count_levels("lost-tasks") == 20, timeout=60,
                   what="the 20 frames stored after the sweep")
        assert [row.seq for row in store.levels("lost-tasks", 0, 2**62)] == list(range(20))
        wait_until(lambda: ledger.stats()["pending"] == 0, timeout=10, what="an empty ledger")
        assert "batch(es) again" in stack.procs["gateway"].log_path.read_text()
    finally:
        stack.stop()
