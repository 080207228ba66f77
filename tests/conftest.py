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
            "gateway": Process("gateway", soundmon_argv("gateway"), self.env,
                               logs / "gateway.log"),
        }

    def start(self, *names: str) -> None:
        for name in names or self.procs:
            self.procs[name].start()
        if not names or "gateway" in names:
            self.wait_gateway()

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


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: int,
          redis_port: int) -> Iterator[Stack]:
    """The pipeline (gateway, preprocess and analyze workers) on real mosquitto and redis."""
    s = Stack(tmp_path, mosquitto, redis_port, SOUNDMON_VISIBILITY_TIMEOUT_S="8")
    s.start()
    try:
        yield s
    finally:
        s.stop()
        # shown by pytest only when the test failed
        request.node.add_report_section("teardown", "service logs", s.logs())
