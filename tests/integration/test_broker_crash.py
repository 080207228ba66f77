"""A crash of the Celery broker (Redis, SIGKILL) mid-stream loses no frame the gateway accepted."""

from __future__ import annotations

import os
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


def test_redis_sigkill_mid_stream_loses_nothing(request: pytest.FixtureRequest, tmp_path: Path,
                                                mosquitto: int) -> None:
    """kill -9 of redis-server while frames stream, then restart: every frame stored once."""
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
        redis_proc.kill()  # SIGKILL: no shutdown save, only what the AOF already holds
        time.sleep(2.0)
        redis_proc.start()
        wait_port(port, proc=redis_proc.proc)
        t.join(120)
        assert not t.is_alive()
        store = SQLiteStore(stack.data / "soundmon.db")
        total = per_device * len(devices)
        wait_until(lambda: store.count_levels() == total, timeout=120, interval=0.5,
                   what=f"all {total} frames stored")
        for d in devices:
            seqs = sorted(r.seq for r in store.levels(d, 0, 2**62, limit=10_000))
            assert seqs == list(range(per_device)), d
    finally:
        stack.stop()
        redis_proc.stop()
        request.node.add_report_section("teardown", "service logs", stack.logs())
