"""The pipeline on real mosquitto, redis-server and Celery workers: frames in, levels out.

Every test runs on both Celery brokers (Redis, RabbitMQ) and both level stores (the SQLite
file, InfluxDB 1.6 behind tests/influxdb.py's v2-write translation), and reads the levels
back through the store the workers wrote to (``stack.store()``)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from soundmon.events import GATEWAY_STATS_KEY
from tests.conftest import BOTH_BROKERS, BOTH_STORES, Stack, stack_of_its_own, wait_until
from tests.helpers import Publisher, dbfs_by_hand, hand_frame, sine

# every test runs on Redis and on RabbitMQ as the Celery broker, each with both level stores:
# the full cross product (2 x 2). The tests of one combination share one pipeline (starting and
# stopping one takes ~10 s of this 2-core machine, more than most tests here), so each uses
# devices of its own and reads the gateway's counters as differences.
pytestmark = [pytest.mark.integration, BOTH_BROKERS, BOTH_STORES]


@pytest.fixture(scope="module")
def celery_broker(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "redis")


@pytest.fixture(scope="module")
def level_store(request: pytest.FixtureRequest) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          celery_broker: str, level_store: str) -> Iterator[Stack]:
    """One pipeline per (broker, store) for this module's tests."""
    directory = tmp_path_factory.mktemp(f"pipeline-{celery_broker}-{level_store}")
    with stack_of_its_own(request, directory, celery_broker, level_store) as s:
        yield s


@pytest.fixture(autouse=True)
def _service_logs(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    yield
    # shown by pytest only when the test failed
    request.node.add_report_section("teardown", "service logs", stack.logs())


RATE = 8000
N = 4000  # 500 ms frames


def _stats(stack: Stack) -> dict[str, int]:
    r = redis.Redis(port=stack.redis_port)
    raw = r.hgetall(GATEWAY_STATS_KEY)
    return {k.decode().split(":", 1)[1]: int(v) for k, v in raw.items()}


def test_frames_arrive_as_levels_with_the_right_values(stack: Stack) -> None:
    """Frames published by an independent client are stored with dBFS and LAeq computed by hand."""
    pub = Publisher(stack.mqtt_port)
    t0 = int(time.time() * 1000)
    sent = {}
    for seq in range(12):
        amp = 1000 * (seq + 1)
        samples = sine(1000, amp, RATE, N, offset=300)
        sent[seq] = dbfs_by_hand(samples)
        pub.publish("soundmon/v1/kitchen/frame", hand_frame(seq, 77, t0 + seq * 500, RATE, samples))
    pub.close()
    store = stack.store()
    wait_until(lambda: store.count_levels("kitchen") == 12, what="12 stored levels")
    rows = store.levels("kitchen", 0, 2**62)
    assert [r.seq for r in rows] == list(range(12))
    assert [r.t_ms for r in rows] == [t0 + s * 500 for s in range(12)]
    k = rows[0].k_db
    for r in rows:
        assert r.dbfs == pytest.approx(sent[r.seq], abs=0.01)
        # A(1 kHz) = 0 dB, so LAeq = LZeq = dBFS + K for a 1 kHz tone
        assert r.laeq == pytest.approx(sent[r.seq] + k, abs=0.05)
        assert r.lzeq == pytest.approx(sent[r.seq] + k, abs=0.01)
        assert r.dominant_hz == pytest.approx(1000, abs=0.5)
        assert "nyquist_limited" in r.api()["flags"] and "uncalibrated" in r.api()["flags"]
    # no sender subscribed to a task result it never reads (soundmon.celeryconf.SoundmonCelery):
    # each such channel stayed in Redis for good, one more per batch
    assert redis.Redis(port=stack.redis_port).pubsub_channels("celery-task-meta-*") == []


def test_duplicates_are_stored_once(stack: Stack) -> None:
    """The same (device, boot, seq) published three times is stored once and counted."""
    duplicates = _stats(stack).get("duplicates", 0)
    pub = Publisher(stack.mqtt_port)
    frame = hand_frame(5, 1234, int(time.time() * 1000), RATE, sine(440, 3000, RATE, N))
    for _ in range(3):
        pub.publish("soundmon/v1/dup-dev/frame", frame)
    pub.publish("soundmon/v1/dup-dev/frame",
                hand_frame(6, 1234, int(time.time() * 1000), RATE, sine(440, 3000, RATE, N)))
    pub.close()
    store = stack.store()
    wait_until(lambda: store.count_levels("dup-dev") == 2, what="2 stored levels")
    wait_until(lambda: _stats(stack).get("duplicates", 0) == duplicates + 2, timeout=10,
               what="the gateway's duplicate counter")
    time.sleep(1.0)
    assert store.count_levels("dup-dev") == 2


def test_malformed_frames_are_counted_and_nothing_else_is_lost(stack: Stack) -> None:
    """Every malformed case of protocol.md is rejected with its reason; good frames all arrive."""
    before, stored = _stats(stack), stack.store().count_levels()
    pub = Publisher(stack.mqtt_port)
    t0 = int(time.time() * 1000)
    good = [hand_frame(s, 9, t0 + s * 500, RATE, sine(250, 2000, RATE, N)) for s in range(6)]
    ok = good[0]
    bad = {
        "short_header": ok[:10],
        "bad_magic": hand_frame(100, 9, t0, RATE, [1, 2, 3], magic=b"XX"),
        "bad_version": hand_frame(101, 9, t0, RATE, [1, 2, 3], version=2),
        "bad_kind": hand_frame(102, 9, t0, RATE, [1, 2, 3], kind=7),
        "zero_rate": hand_frame(103, 9, t0, 0, [1, 2, 3]),
        "bad_length": ok[:-2],
    }
    zero_count = bytearray(hand_frame(104, 9, t0, RATE, []))
    bad["zero_count"] = bytes(zero_count)
    for i, frame in enumerate(good):
        pub.publish("soundmon/v1/mixed/frame", frame)
        if i < len(bad):
            pub.publish("soundmon/v1/mixed/frame", list(bad.values())[i])
    pub.publish("soundmon/v1/mixed/frame", bad["zero_count"])
    pub.publish("soundmon/v1/Bad.Device/frame", ok)  # invalid device id
    pub.publish("soundmon/v1/mixed/status", b"not json")
    pub.close()
    store = stack.store()
    wait_until(lambda: store.count_levels("mixed") == 6, what="the 6 good frames")
    def rejected() -> dict[str, int]:
        return {k: v - before.get(k, 0) for k, v in _stats(stack).items()
                if k.startswith("rejected") and v != before.get(k, 0)}

    stats = wait_until(lambda: (s := rejected()).get("rejected", 0) >= 9 and s, timeout=10,
                       what="rejection counters")
    for reason in bad:
        assert stats.get(f"rejected:{reason}") == 1, (reason, stats)
    assert stats["rejected:bad_device_id"] == 1
    assert stats["rejected:bad_status"] == 1
    assert stats["rejected"] == 9, stats
    assert store.count_levels() == stored + 6


def test_status_messages_maintain_the_device_registry(stack: Stack) -> None:
    """A retained status sets online, sensor, firmware and rate; the offline will clears online."""
    pub = Publisher(stack.mqtt_port)
    status = {"state": "online", "fw": "1.0.0", "sensor": "max4466", "rate": 8000,
              "frame_ms": 500, "uptime_s": 3, "rssi": -60, "buffered": 0, "dropped": 0}
    pub.publish("soundmon/v1/porch/status", json.dumps(status), retain=True)
    store = stack.store()
    dev = wait_until(lambda: (d := store.device("porch")) and d["online"] and d,
                     what="porch online")
    assert (dev["sensor"], dev["fw"], dev["rate"], dev["frame_ms"]) == ("max4466", "1.0.0", 8000, 500)
    pub.publish("soundmon/v1/porch/status", json.dumps({"state": "offline"}), retain=True)
    wait_until(lambda: store.device("porch")["state"] == "offline", what="porch offline")
    pub.close()


def test_hand_built_frame_sent_with_mosquitto_pub(stack: Stack, tmp_path: Path) -> None:
    """A frame built by hand and sent with `mosquitto_pub -f` arrives with dBFS within 0.05 dB."""
    samples = sine(697, 5000, RATE, N, offset=-1200, phase=0.3)
    path = tmp_path / "frame.bin"
    path.write_bytes(hand_frame(0, 4242, int(time.time() * 1000), RATE, samples))
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(stack.mqtt_port), "-q", "1",
                    "-t", "soundmon/v1/by-hand/frame", "-f", str(path)], check=True, timeout=10)
    store = stack.store()
    wait_until(lambda: store.count_levels("by-hand") == 1, what="the hand-built frame")
    (row,) = store.levels("by-hand", 0, 2**62)
    assert row.dbfs == pytest.approx(dbfs_by_hand(samples), abs=0.05)
