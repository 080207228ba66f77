"""RabbitMQ as the Celery broker: durable queues, and a broker crash mid-stream loses no frame."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from soundmon import tasknames
from soundmon.store import SQLiteStore
from tests.conftest import Stack, wait_until
from tests.helpers import Publisher, hand_frame, sine
from tests.rabbitmq import RabbitMQ

pytestmark = pytest.mark.integration


def _queue_types(node: RabbitMQ) -> dict[str, tuple[str, str]]:
    out = subprocess.run(node.ctl("list_queues", "-q", "--no-table-headers", "name", "type",
                                  "durable"),
                         env=node.env, capture_output=True, text=True, timeout=60, check=True).stdout
    rows = (line.split() for line in out.splitlines() if line.strip())
    return {r[0]: (r[1], r[2]) for r in rows if len(r) == 3}


def test_rabbitmq_kill_mid_stream_loses_no_accepted_frame(request: pytest.FixtureRequest,
                                                          tmp_path: Path, mosquitto: int,
                                                          redis_port: int,
                                                          rabbitmq: RabbitMQ) -> None:
    """kill -9 of RabbitMQ while frames stream, then restart: every frame stored exactly once."""
    rabbitmq.reset()
    stack = Stack(tmp_path, mosquitto, redis_port, SOUNDMON_BROKER_URL=rabbitmq.url,
                  SOUNDMON_VISIBILITY_TIMEOUT_S="8")
    devices, per_device = [f"rmq-{i}" for i in range(3)], 120
    published = [0]
    try:
        stack.start()

        def stream() -> None:
            pub = Publisher(mosquitto, "rmq-stream")
            t0 = int(time.time() * 1000)
            for seq in range(per_device):
                for d in devices:
                    pub.publish(f"soundmon/v1/{d}/frame",
                                hand_frame(seq, 5, t0 + 500 * seq, 8000, sine(700, 2500, 8000, 2000)))
                    published[0] += 1
                time.sleep(0.03)
            pub.close()

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        wait_until(lambda: published[0] > 90, what="the stream to start")
        # SIGKILL, not a clean stop: RabbitMQ keeps only what it confirmed (fsynced)
        rabbitmq.kill()
        killed_at = published[0]
        time.sleep(2.0)
        rabbitmq.start()
        t.join(120)
        assert not t.is_alive()
        assert killed_at < per_device * len(devices), "the kill came after the stream ended"
        store = SQLiteStore(stack.data / "soundmon.db")
        total = per_device * len(devices)
        wait_until(lambda: store.count_levels() == total, timeout=120, interval=0.5,
                   what=f"all {total} frames stored")
        for d in devices:
            seqs = sorted(r.seq for r in store.levels(d, 0, 2**62, limit=10_000))
            assert seqs == list(range(per_device)), d
        # the soundmon queues are durable classic queues (declared by gateway and workers)
        types = _queue_types(rabbitmq)
        for queue in (tasknames.PREPROCESS_QUEUE, tasknames.ANALYZE_QUEUE):
            assert types.get(queue) == ("classic", "true"), types
    finally:
        stack.stop()
        request.node.add_report_section("teardown", "service logs", stack.logs())
