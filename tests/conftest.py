"""Fixtures that run the real parts on free loopback ports and stop them in ``finally``."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from soundmon.services import (
    MOSQUITTO_CANDIDATES,
    REDIS_CANDIDATES,
    Process,
    find_binary,
    free_port,
    prepare_mosquitto,
    prepare_redis,
    soundmon_argv,
    wait_port,
)
from tests.rabbitmq import RabbitMQ, rabbitmq_installed


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {value!r})")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[int]:
    """A real mosquitto with soundmon's configuration on a free port."""
    binary = find_binary(MOSQUITTO_CANDIDATES)
    if binary is None:
        pytest.fail("mosquitto is not installed: run `make install`")
    port = free_port()
    conf = prepare_mosquitto(tmp_path, port)
    p = Process("mosquitto", [binary, "-c", str(conf)], dict(os.environ),
                tmp_path / "logs" / "mosquitto.log").start()
    try:
        wait_port(port, proc=p.proc)
        yield port
    finally:
        p.stop()


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    """A real redis-server with soundmon's configuration on a free port."""
    binary = find_binary(REDIS_CANDIDATES)
    if binary is None:
        pytest.fail("redis-server is not installed: run `make install`")
    port = free_port()
    conf = prepare_redis(tmp_path, port)
    p = Process("redis", [binary, str(conf)], dict(os.environ),
                tmp_path / "logs" / "redis.log").start()
    try:
        wait_port(port, proc=p.proc)
        yield port
    finally:
        p.stop()


class Stack:
    """Gateway + both Celery workers as real processes against the given broker and Redis."""

    def __init__(self, tmp_path: Path, mqtt_port: int, redis_port: int, **extra_env: str) -> None:
        self.data = tmp_path / "data"
        self.data.mkdir(exist_ok=True)
        self.mqtt_port = mqtt_port
        self.redis_port = redis_port
        self.env = dict(os.environ)
        self.env.update({
            "SOUNDMON_DATA": str(self.data),
            "SOUNDMON_MQTT_HOST": "127.0.0.1",
            "SOUNDMON_MQTT_PORT": str(mqtt_port),
            "SOUNDMON_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "SOUNDMON_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "SOUNDMON_API_TOKEN": "test-token",
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        })
        logs = tmp_path / "logs"
        self.procs = {
            "worker-preprocess": Process("worker-preprocess",
                                         soundmon_argv("worker", "preprocess"), self.env,
                                         logs / "worker-preprocess.log"),
            "worker-analyze": Process("worker-analyze", soundmon_argv("worker", "analyze"),
                                      self.env, logs / "worker-analyze.log"),
            "worker-notify": Process("worker-notify", soundmon_argv("worker", "notify"),
                                     self.env, logs / "worker-notify.log"),
            "gateway": Process("gateway", soundmon_argv("gateway"), self.env,
                               logs / "gateway.log"),
        }

    def start(self, *names: str) -> None:
        started = names or tuple(self.procs)
        offsets = {n: self.procs[n].log_path.stat().st_size if self.procs[n].log_path.exists() else 0
                   for n in started}
        for name in started:
            self.procs[name].start()
        if not names or "gateway" in names:
            self.wait_gateway()
        self.wait_workers(offsets)

    def wait_workers(self, offsets: dict[str, int], timeout: float = 120.0) -> None:
        """Wait until each worker just started logged Celery's "ready" (slow on a busy machine)."""
        for name, offset in offsets.items():
            path = self.procs[name].log_path
            if name.startswith("worker-"):
                wait_until(lambda p=path, o=offset: p.exists() and b" ready." in p.read_bytes()[o:],
                           timeout, interval=0.2, what=f"{name} to be ready")

    def wait_gateway(self, timeout: float = 30.0) -> None:
        """Wait until the gateway reports itself connected and subscribed (its heartbeat)."""
        import json

        import redis

        from soundmon.events import GATEWAY_HEARTBEAT_PREFIX

        r = redis.Redis(port=self.redis_port)

        def ready() -> bool:
            raw = r.get(GATEWAY_HEARTBEAT_PREFIX + "gw1")
            return bool(raw) and json.loads(raw).get("connected") == 1

        wait_until(ready, timeout, what="the gateway to connect")

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_path.read_text()[-4000:]}"
                         for p in self.procs.values() if p.log_path.exists())


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    """One real RabbitMQ node for the whole session (a boot takes ~8 s); see tests/rabbitmq.py."""
    if not rabbitmq_installed():
        pytest.fail("rabbitmq-server is not installed: run `make install`")
    node = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    try:
        yield node.start()
    finally:
        node.stop()


@pytest.fixture
def celery_broker(request: pytest.FixtureRequest, redis_port: int) -> str:
    """The stack's Celery broker URL: Redis, or RabbitMQ when parametrized (indirect) so."""
    kind = getattr(request, "param", "redis")
    if kind == "rabbitmq":
        node: RabbitMQ = request.getfixturevalue("rabbitmq")
        node.reset()
        return node.url
    assert kind == "redis", kind
    return f"redis://127.0.0.1:{redis_port}/0"


#: parametrize a module's tests over both Celery brokers: ``pytestmark = [..., BOTH_BROKERS]``
BOTH_BROKERS = pytest.mark.parametrize("celery_broker", ["redis", "rabbitmq"], indirect=True)


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: int,
          redis_port: int, celery_broker: str) -> Iterator[Stack]:
    """The pipeline (gateway and workers) on real mosquitto, redis and the ``celery_broker``."""
    s = Stack(tmp_path, mosquitto, redis_port, SOUNDMON_VISIBILITY_TIMEOUT_S="8",
              SOUNDMON_BROKER_URL=celery_broker)
    s.start()
    try:
        yield s
    finally:
        s.stop()
        # shown by pytest only when the test failed
        request.node.add_report_section("teardown", "service logs", s.logs())
