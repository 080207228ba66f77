"""A crash of the Celery broker (Redis, SIGKILL) mid-stream loses no frame the gateway accepted,
and the Celery workers ride it out: they reconnect instead of exiting."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from soundmon.services import (
    REDIS_CANDIDATES,
    Process,
    find_binary,
    free_port,
    prepare_redis,
    wait_port,
)
from soundmon.store import SQLiteStore
from tests.conftest import Stack, wait_until
from tests.helpers import Publisher, hand_frame, sine

pytestmark = pytest.mark.integration

WORKERS = ("worker-preprocess", "worker-analyze")


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (a Celery worker's prefork pool), read from /proc."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def received(log: Path) -> int:
    return log.read_bytes().count(b"] received") if log.exists() else 0


def test_redis_sigkill_mid_stream_loses_nothing(request: pytest.FixtureRequest, tmp_path: Path,
                                                mosquitto: int) -> None:
    """kill -9 of redis-server while frames stream, then restart: every frame stored once.

    The workers' pools are paused around the kill, so each worker holds delivered but
    unacknowledged tasks at the moment the broker dies: the case where a worker has to put
    them back while the broker is away (Celery 5.7.0 exits there instead of reconnecting)."""
    port = free_port()
    conf = prepare_redis(tmp_path / "broker", port)
    binary = find_binary(REDIS_CANDIDATES)
    assert binary
    redis_proc = Process("redis", [binary, str(conf)], dict(os.environ),
                         tmp_path / "logs" / "redis.log").start()
    wait_port(port, proc=redis_proc.proc)
    stack = Stack(tmp_path, mosquitto, port, SOUNDMON_VISIBILITY_TIMEOUT_S="8")
    devices, per_device = [f"crash-{i}" for i in range(3)], 120
    published = [0]
    paused: list[int] = []
    try:
        stack.start()

        def stream() -> None:
            pub = Publisher(mosquitto, "crash-stream")
            t0 = int(time.time() * 1000)
            for seq in range(per_device):
                for d in devices:
                    pub.publish(f"soundmon/v1/{d}/frame",
                                hand_frame(seq, 3, t0 + 500 * seq, 8000, sine(700, 2500, 8000, 2000)))
                    published[0] += 1
                time.sleep(0.03)
            pub.close()

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        wait_until(lambda: published[0] > 90, what="the stream to start")
        # pause the pools, the store step's first: each worker's main process goes on taking
        # tasks it cannot finish (preprocess feeds analyze, so analyze must still run meanwhile)
        for name in ("worker-analyze", "worker-preprocess"):
            log = stack.procs[name].log_path
            before = received(log)
            kids = children(stack.procs[name].pid)
            assert kids, f"{name} has no pool processes"
            for pid in kids:
                os.kill(pid, signal.SIGSTOP)
            paused.extend(kids)
            wait_until(lambda log=log, before=before: received(log) > before,
                       what=f"{name} to hold a task it has not acknowledged")
        redis_proc.kill()  # SIGKILL: no shutdown save, only what the AOF already holds
        time.sleep(2.0)
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        paused.clear()
        redis_proc.start()
        wait_port(port, proc=redis_proc.proc)
        t.join(120)
        assert not t.is_alive()
        store = SQLiteStore(stack.data / "soundmon.db")
        total = per_device * len(devices)
        wait_until(lambda: store.count_levels() == total or not all(
                       stack.procs[name].alive() for name in WORKERS),
                   timeout=120, interval=0.5, what=f"all {total} frames stored")
        for name in WORKERS:
            assert stack.procs[name].alive(), f"{name} exited when the broker went away"
        assert store.count_levels() == total
        for d in devices:
            seqs = sorted(r.seq for r in store.levels(d, 0, 2**62, limit=10_000))
            assert seqs == list(range(per_device)), d
    finally:
        for pid in paused:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stack.stop()
        redis_proc.stop()
        request.node.add_report_section("teardown", "service logs", stack.logs())
