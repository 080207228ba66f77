"""Several gateways in one shared-subscription group split the frames and lose none."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from soundmon.events import GATEWAY_STATS_KEY
from soundmon.services import Process, soundmon_argv
from soundmon.store import SQLiteStore
from tests.conftest import Stack, wait_until
from tests.helpers import Publisher, hand_frame, sine

pytestmark = pytest.mark.integration


def test_two_gateways_share_the_load(request: pytest.FixtureRequest, tmp_path: Path,
                                     mosquitto: int, redis_port: int) -> None:
    """With --share-group, two gateways each forward part of the stream; all is stored once."""
    stack = Stack(tmp_path, mosquitto, redis_port)
    del stack.procs["gateway"]
    for gw in ("gw-a", "gw-b"):
        env = dict(stack.env, SOUNDMON_GATEWAY_ID=gw, SOUNDMON_SHARE_GROUP="soundmon")
        stack.procs[gw] = Process(gw, soundmon_argv("gateway"), env,
                                  tmp_path / "logs" / f"{gw}.log")
    r = redis.Redis(port=redis_port)
    try:
        stack.start(*stack.procs)  # named: no wait for the default gateway gw1
        alive = ("soundmon:gateway:alive:gw-a", "soundmon:gateway:alive:gw-b")
        wait_until(lambda: r.exists(*alive) == 2, what="both gateways")
        time.sleep(0.5)  # the heartbeat is written right after SUBACK; give mosquitto a moment
        pub = Publisher(mosquitto, "share-test")
        t0 = int(time.time() * 1000)
        n = 300
        for seq in range(n):
            pub.publish(f"soundmon/v1/shared-{seq % 3}/frame",
                        hand_frame(seq, 5, t0 + 500 * seq, 8000, sine(300, 2000, 8000, 800)))
        pub.close()
        store_path = stack.data / "soundmon.db"
        wait_until(store_path.exists, what="the database")
        store = SQLiteStore(store_path)
        wait_until(lambda: store.count_levels() == n, what=f"{n} stored levels")

        def forwarded() -> dict[str, int]:
            raw = r.hgetall(GATEWAY_STATS_KEY)
            return {k.decode(): int(v) for k, v in raw.items() if k.endswith(b":forwarded")}

        counts = wait_until(lambda: (f := forwarded()) and sum(f.values()) == n and f,
                            timeout=10, what="forward counters")
        assert counts.get("gw-a:forwarded", 0) > 0 and counts.get("gw-b:forwarded", 0) > 0, counts
    finally:
        stack.stop()
        request.node.add_report_section("teardown", "service logs", stack.logs())
