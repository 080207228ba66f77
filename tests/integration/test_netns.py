"""Several hosts, emulated with network namespaces: nothing in the pipeline assumes localhost,
and preprocess workers need no store.

Layout (``ip netns``, veth pairs into one bridge, a /24 from the benchmarking range 198.18/15):

    broker  .1  mosquitto + redis-server, listening on that address only
    gw      .2  soundmon gateway
    host1   .3  soundmon worker preprocess (pinned to CPU 0), its own empty data directory
    host2   .4  soundmon worker preprocess (pinned to CPU 1), its own empty data directory
    store   .5  soundmon worker analyze: the store step (calibrate, store, alerts) and the
                SQLite file, as the application host of docs/deploy.md
    (root)  .254  the test itself: publishes frames, steers the workers, reads the results

Each worker host gets one worker process and one CPU, so a second host adds capacity as a
second machine would. The worker hosts are given data directories of their own that must stay
empty: a preprocess worker talks only to the brokers (docs/deploy.md, "Several hosts").

Throughput of the preprocess step is measured as a ratio within the run: the same number of
frames is queued with nobody consuming, then drained by one host, then by two; the store
step runs after both phases, so it never shares their CPUs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from soundmon.events import GATEWAY_HEARTBEAT_PREFIX, GATEWAY_STATS_KEY
from soundmon.services import (
    MOSQUITTO_CANDIDATES,
    REDIS_CANDIDATES,
    Process,
    find_binary,
    prepare_mosquitto,
    prepare_redis,
)
from soundmon.store import SQLiteStore
from tests.conftest import wait_until
from tests.helpers import hand_frame, sine

pytestmark = pytest.mark.integration

HOSTS = {"broker": 1, "gw": 2, "host1": 3, "host2": 4, "store": 5}
MQTT_PORT, REDIS_PORT = 1883, 6379  # each namespace has its own ports: the defaults are free
FRAMES_PER_PHASE = 3000
#: a preprocess task logs how many levels it handed to the store step
SUCCEEDED = re.compile(r"Task soundmon\.preprocess\[[^\]]+\] succeeded in [\d.e-]+s: (\d+)")
#: the smallest speed-up of the second host that counts, a ratio within one run (a busy
#: machine slows both phases alike). Measured 1.23-1.25x: with one preprocess process at
#: ~10,000 frames/s, Redis and the workers' own Celery consumers, which share the same two
#: CPUs, take what a real second machine would not
MIN_SPEEDUP = 1.1


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=15)


def _netns_available() -> str | None:
    """None if `ip netns add` works here, else the reason it does not."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    name = f"smprobe{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except FileNotFoundError:
        return "`ip` (iproute2) is not installed: run `make install`"
    except subprocess.CalledProcessError as exc:
        return f"`ip netns add` fails here: {exc.stderr.decode().strip()}"
    _ip("netns", "del", name)
    return None


class Lan:
    """Namespaces joined by veth pairs to a bridge that lives in its own namespace."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.prefix = f"sm{tag}"
        self.net = f"198.18.{tag % 250}"
        self.lan = f"{self.prefix}lan"
        self.namespaces: list[str] = []
        self.root_link: str | None = None

    def ns(self, host: str) -> str:
        return f"{self.prefix}{host}"

    def addr(self, host: str) -> str:
        return f"{self.net}.{HOSTS[host]}"

    def up(self) -> None:
        _ip("netns", "add", self.lan)
        self.namespaces.append(self.lan)
        _ip("-n", self.lan, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.lan, "link", "set", "br0", "up")
        for host, n in HOSTS.items():
            ns = self.ns(host)
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            self._plug(f"{self.prefix}h{n}", f"{self.prefix}l{n}", ns, f"{self.net}.{n}/24")
        # the test's own leg, from the root namespace
        self.root_link = f"{self.prefix}r"
        self._plug(self.root_link, f"{self.prefix}lr", None, f"{self.net}.254/24")

    def _plug(self, inside: str, lan_end: str, ns: str | None, cidr: str) -> None:
        _ip("link", "add", inside, "type", "veth", "peer", "name", lan_end)
        _ip("link", "set", lan_end, "netns", self.lan)
        _ip("-n", self.lan, "link", "set", lan_end, "master", "br0", "up")
        if ns:
            _ip("link", "set", inside, "netns", ns)
        where = ["-n", ns] if ns else []
        _ip(*where, "addr", "add", cidr, "dev", inside)
        _ip(*where, "link", "set", inside, "up")

    def down(self) -> None:
        if self.root_link:
            subprocess.run(["ip", "link", "del", self.root_link], capture_output=True, timeout=15)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=15)

    def run(self, host: str, argv: list[str], cpu: int | None = None) -> list[str]:
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        return ["ip", "netns", "exec", self.ns(host), *pin, *argv]


def _publish(host: str, devices: list[str], frames_each: int, boot: int) -> None:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"netns-pub-{boot}")
    c.max_inflight_messages_set(200)
    c.connect(host, MQTT_PORT)
    c.loop_start()
    samples = sine(440, 3000, 8000, 2000)
    t0 = int(time.time() * 1000)
    infos = [c.publish(f"soundmon/v1/{d}/frame", hand_frame(seq, boot, t0 + 250 * seq, 8000, samples),
                       qos=1)
             for seq in range(frames_each) for d in devices]
    for info in infos:
        info.wait_for_publish(30)
    c.disconnect()
    c.loop_stop()


def _frames_by_worker(log: Path) -> int:
    return sum(int(m) for m in SUCCEEDED.findall(log.read_text())) if log.exists() else 0


def test_pipeline_across_namespaces_and_a_second_worker_host_adds_throughput(
        request: pytest.FixtureRequest, tmp_path: Path,
        record_property: pytest.RecordProperty) -> None:
    """Broker, gateway, two preprocess hosts without the store, and the store host in separate
    namespaces: host 2 raises preprocess throughput, and every frame is stored once."""
    reason = _netns_available()
    if reason:
        pytest.skip(reason)
    mosquitto, redis_server = find_binary(MOSQUITTO_CANDIDATES), find_binary(REDIS_CANDIDATES)
    assert mosquitto and redis_server, "mosquitto/redis-server missing: run `make install`"
    lan = Lan()
    procs: dict[str, Process] = {}
    logs = tmp_path / "logs"
    try:
        lan.up()
        broker = lan.addr("broker")
        env = {**os.environ, "SOUNDMON_DATA": str(tmp_path / "data"),
               "SOUNDMON_MQTT_HOST": broker, "SOUNDMON_MQTT_PORT": str(MQTT_PORT),
               "SOUNDMON_BROKER_URL": f"redis://{broker}:{REDIS_PORT}/0",
               "SOUNDMON_REDIS_URL": f"redis://{broker}:{REDIS_PORT}/0",
               "SOUNDMON_API_TOKEN": "netns", "PYTHONUNBUFFERED": "1"}
        worker_data = {h: tmp_path / f"data-{h}" for h in ("host1", "host2")}
        mconf = prepare_mosquitto(tmp_path / "broker", MQTT_PORT, bind=broker)
        rconf = prepare_redis(tmp_path / "broker", REDIS_PORT, bind=broker)
        py = [sys.executable, "-m", "soundmon"]
        specs = {
            "mosquitto": ("broker", [mosquitto, "-c", str(mconf)], None),
            "redis": ("broker", [redis_server, str(rconf)], None),
            "gateway": ("gw", [*py, "gateway"], None),
            "preprocess-host1": ("host1", [*py, "worker", "preprocess", "-c", "1", "--name",
                                           "preprocess@host1"], 0),
            "preprocess-host2": ("host2", [*py, "worker", "preprocess", "-c", "1", "--name",
                                           "preprocess@host2"], 1),
        }
        for name, (host, argv, cpu) in specs.items():
            host_env = dict(env)
            if host in worker_data:
                host_env["SOUNDMON_DATA"] = str(worker_data[host])
            procs[name] = Process(name, lan.run(host, argv, cpu=cpu), host_env,
                                  logs / f"{name}.log").start()
        r = redis.Redis(host=broker, port=REDIS_PORT, socket_timeout=5)
        wait_until(lambda: _ping(r), what="redis in the broker namespace")

        def gateway_up() -> bool:
            raw = r.get(GATEWAY_HEARTBEAT_PREFIX + "gw1")
            return bool(raw) and json.loads(raw).get("connected") == 1

        wait_until(gateway_up, timeout=60, what="the gateway (namespace gw) to subscribe")
        host_logs = {h: logs / f"preprocess-{h}.log" for h in ("host1", "host2")}

        def processed() -> int:
            return sum(map(_frames_by_worker, host_logs.values()))

        # warm-up: both hosts load numpy/numba and process a batch before anything is timed
        warm_total = 0
        for boot in range(1, 20):
            _publish(broker, ["warm-0", "warm-1"], 64, boot)
            warm_total += 128
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not all(map(_frames_by_worker, host_logs.values())):
                time.sleep(0.2)
            if all(map(_frames_by_worker, host_logs.values())):
                break
        assert all(map(_frames_by_worker, host_logs.values())), "a worker host got no work"
        wait_until(lambda: processed() >= warm_total, timeout=90, what="the warm-up frames processed")

        from celery import Celery

        control = Celery("netns-test", broker=env["SOUNDMON_BROKER_URL"])
        control.conf.update(task_serializer="json", accept_content=["json", "msgpack"])

        def consume(hosts: list[str], on: bool) -> None:
            dest = [f"preprocess@{h}" for h in hosts]
            call = control.control.add_consumer if on else control.control.cancel_consumer
            replies = call("preprocess", destination=dest, reply=True, timeout=10)
            assert len(replies) == len(dest), replies

        def phase(name: str, hosts: list[str]) -> tuple[float, dict[str, int]]:
            """Queue FRAMES_PER_PHASE frames with nobody consuming, then let ``hosts`` drain it."""
            consume(["host1", "host2"], on=False)
            before_fwd = _forwarded(r)
            done = {h: _frames_by_worker(p) for h, p in host_logs.items()}
            devices = [f"{name}-{i}" for i in range(4)]
            _publish(broker, devices, FRAMES_PER_PHASE // len(devices), boot=100 + len(hosts))
            wait_until(lambda: _forwarded(r) >= before_fwd + FRAMES_PER_PHASE, timeout=60,
                       what=f"{name}: the gateway to queue every frame")

            def shares() -> dict[str, int]:
                return {h: _frames_by_worker(p) - done[h] for h, p in host_logs.items()}

            assert sum(shares().values()) == 0  # nobody consumed meanwhile
            t0 = time.monotonic()
            consume(hosts, on=True)
            share = wait_until(lambda: sum((s := shares()).values()) >= FRAMES_PER_PHASE and s,
                               timeout=120, interval=0.02, what=f"{name}: every frame processed")
            return time.monotonic() - t0, share

        one_s, one_share = phase("one", ["host1"])
        two_s, two_share = phase("two", ["host1", "host2"])
        assert one_share == {"host1": FRAMES_PER_PHASE, "host2": 0}, one_share
        assert sum(two_share.values()) == FRAMES_PER_PHASE, two_share
        assert two_share["host2"] > 0, f"the second worker host took no work: {two_share}"
        ratio = one_s / two_s
        figures = {"frames_per_phase": FRAMES_PER_PHASE, "one_host_fps": round(FRAMES_PER_PHASE / one_s),
                   "two_hosts_fps": round(FRAMES_PER_PHASE / two_s), "speedup": round(ratio, 2),
                   "host2_share": round(two_share["host2"] / FRAMES_PER_PHASE, 2)}
        for key, value in figures.items():
            record_property(key, value)
        print(f"\nnetns preprocess throughput: {json.dumps(figures)}")
        assert ratio >= MIN_SPEEDUP, f"a second worker host did not raise throughput: {figures}"

        # the store host calibrates, stores and checks what both hosts handed it, across the bridge
        procs["analyze-store"] = Process("analyze-store", lan.run("store", [*py, "worker", "analyze"]),
                                         env, logs / "analyze-store.log").start()
        store_path = tmp_path / "data" / "soundmon.db"
        wait_until(lambda: store_path.exists(), timeout=60, what="the store host's database")
        store = SQLiteStore(store_path)
        total = warm_total + 2 * FRAMES_PER_PHASE
        wait_until(lambda: store.count_levels() == total, timeout=120, interval=0.5,
                   what="every frame stored by the store host")
        for phase_name in ("one", "two"):
            for i in range(4):
                assert store.count_levels(f"{phase_name}-{i}") == FRAMES_PER_PHASE // 4
        wait_until(lambda: r.zcard("soundmon:handoff:due") == 0, timeout=30,
                   what="the handoff ledger to empty")
        for host, data in worker_data.items():  # the worker hosts never needed a data directory
            assert not data.exists() or not any(data.rglob("*")), f"{host} wrote {list(data.rglob('*'))}"
    finally:
        for p in reversed(list(procs.values())):
            p.stop()
        lan.down()
        request.node.add_report_section("teardown", "service logs", "\n".join(
            f"--- {p.name}\n{p.log_path.read_text()[-3000:]}" for p in procs.values()
            if p.log_path.exists()))


def _ping(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False


def _forwarded(r: redis.Redis) -> int:
    return int(r.hget(GATEWAY_STATS_KEY, "gw1:forwarded") or 0)
