"""Fixtures that run the real parts on free loopback ports and stop them in ``finally``."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

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
from soundmon.settings import Settings
from soundmon.store import SQLiteStore, open_store
from tests.influxdb import InfluxD, V2WriteProxy, find_influxd
from tests.rabbitmq import RabbitMQ, rabbitmq_installed

if TYPE_CHECKING:
    from soundmon.influxstore import InfluxConfig


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


@contextmanager
def running_mosquitto(directory: Path) -> Iterator[int]:
    """A real mosquitto with soundmon's configuration on a free port, files in ``directory``."""
    binary = find_binary(MOSQUITTO_CANDIDATES)
    if binary is None:
        pytest.fail("mosquitto is not installed: run `make install`")
    port = free_port()
    conf = prepare_mosquitto(directory, port)
    p = Process("mosquitto", [binary, "-c", str(conf)], dict(os.environ),
                directory / "logs" / "mosquitto.log").start()
    try:
        wait_port(port, proc=p.proc)
        yield port
    finally:
        p.stop()


@contextmanager
def running_redis(directory: Path) -> Iterator[int]:
    """A real redis-server with soundmon's configuration on a free port, files in ``directory``."""
    binary = find_binary(REDIS_CANDIDATES)
    if binary is None:
        pytest.fail("redis-server is not installed: run `make install`")
    port = free_port()
    conf = prepare_redis(directory, port)
    p = Process("redis", [binary, str(conf)], dict(os.environ),
                directory / "logs" / "redis.log").start()
    try:
        wait_port(port, proc=p.proc)
        yield port
    finally:
        p.stop()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[int]:
    """A real mosquitto with soundmon's configuration on a free port."""
    with running_mosquitto(tmp_path) as port:
        yield port


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    """A real redis-server with soundmon's configuration on a free port."""
    with running_redis(tmp_path) as port:
        yield port


class Stack:
    """Gateway + both Celery workers as real processes against the given broker and Redis."""

    def __init__(self, tmp_path: Path, mqtt_port: int, redis_port: int, **extra_env: str) -> None:
        self.data = tmp_path / "data"
        self.data.mkdir(exist_ok=True)
        self.mqtt_port = mqtt_port
        self.redis_port = redis_port
        self._store: SQLiteStore | None = None
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

    def settings(self) -> Settings:
        """The settings the stack's processes read from their ``SOUNDMON_*`` environment."""
        given = {k.removeprefix("SOUNDMON_").lower(): v for k, v in self.env.items()
                 if k.startswith("SOUNDMON_") and k not in ("SOUNDMON_DATA", "SOUNDMON_DATA_DIR")}
        return Settings(SOUNDMON_DATA=str(self.data), **given)

    def store(self) -> SQLiteStore:
        """The store the workers write to (``open_store`` with the stack's settings: the SQLite
        file, or InfluxDB for the levels), opened once and closed by ``stop``."""
        if self._store is None:  # creating the SQLite file before the workers do is safe
            self._store = open_store(self.settings())
        return self._store

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:  # a part that never got ready: stop the ones that did
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        # all at once: each drains on SIGTERM for a few seconds, and one after another that
        # was about 5 s of every test that uses a stack
        procs = list(self.procs.values())
        if procs:
            with ThreadPoolExecutor(len(procs)) as pool:
                list(pool.map(lambda p: p.stop(), procs))
        if self._store is not None and hasattr(self._store, "close"):
            self._store.close()  # InfluxStore: its HTTP clients
        self._store = None

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


def broker_url(request: pytest.FixtureRequest, kind: str, redis_port: int) -> str:
    """The Celery broker URL of ``kind``: the Redis on ``redis_port``, or the session's RabbitMQ
    node, reset to empty queues."""
    if kind == "rabbitmq":
        node: RabbitMQ = request.getfixturevalue("rabbitmq")
        node.reset()
        return node.url
    assert kind == "redis", kind
    return f"redis://127.0.0.1:{redis_port}/0"


@pytest.fixture
def celery_broker(request: pytest.FixtureRequest, redis_port: int) -> str:
    """The stack's Celery broker URL: Redis, or RabbitMQ when parametrized (indirect) so."""
    return broker_url(request, getattr(request, "param", "redis"), redis_port)


#: parametrize a module's tests over both Celery brokers: ``pytestmark = [..., BOTH_BROKERS]``
BOTH_BROKERS = pytest.mark.parametrize("celery_broker", ["redis", "rabbitmq"], indirect=True)

_influx_names = itertools.count()


@pytest.fixture(scope="session")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InfluxD, V2WriteProxy]]:
    """One real InfluxDB 1.6 (Debian's ``influxdb``) for the whole session, and the v2-write
    translation of tests/influxdb.py in front of it; each test takes its own ``influx_db``."""
    if find_influxd() is None:
        pytest.fail("influxd is not installed: run `make install` (Debian package influxdb)")
    server = InfluxD(tmp_path_factory.mktemp("influxd")).start()
    proxy = None
    try:
        proxy = V2WriteProxy(server.port).start()
        yield server, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()


@contextmanager
def influx_database(influx: tuple[InfluxD, V2WriteProxy]) -> Iterator[InfluxConfig]:
    """A store configuration with databases of its own (raw and 1-minute, retention forever:
    test data is from 2026), dropped afterwards, so no test sees another's levels."""
    from soundmon.influxstore import InfluxConfig

    server, proxy = influx
    name = f"t{next(_influx_names)}"
    server.query(f'CREATE DATABASE "{name}"')
    server.query(f'CREATE DATABASE "{name}_1m"')
    try:
        yield InfluxConfig(url=proxy.url, token="test-token", org="soundmon", bucket=name,
                           bucket_1m=f"{name}_1m", raw_retention_days=10_000)
    finally:
        server.query(f'DROP DATABASE "{name}"')
        server.query(f'DROP DATABASE "{name}_1m"')


@pytest.fixture
def influx_db(influx: tuple[InfluxD, V2WriteProxy]) -> Iterator[InfluxConfig]:
    """InfluxDB databases of this test's own (``influx_database``)."""
    with influx_database(influx) as config:
        yield config


def influx_env(config: InfluxConfig) -> dict[str, str]:
    """``config`` as the ``SOUNDMON_*`` variables a process reads (``SOUNDMON_STORE=influxdb``)."""
    return {"SOUNDMON_STORE": "influxdb", "SOUNDMON_INFLUX_URL": config.url,
            "SOUNDMON_INFLUX_TOKEN": config.token or "", "SOUNDMON_INFLUX_ORG": config.org,
            "SOUNDMON_INFLUX_BUCKET": config.bucket, "SOUNDMON_INFLUX_BUCKET_1M": config.bucket_1m,
            "SOUNDMON_INFLUX_RAW_RETENTION_DAYS": str(config.raw_retention_days)}


@pytest.fixture
def level_store(request: pytest.FixtureRequest) -> dict[str, str]:
    """The stack's level store as ``SOUNDMON_*`` variables: the SQLite file, or InfluxDB (a
    database of the test's own) when parametrized (indirect) so."""
    kind = getattr(request, "param", "sqlite")
    if kind == "influxdb":
        return influx_env(request.getfixturevalue("influx_db"))
    assert kind == "sqlite", kind
    return {"SOUNDMON_STORE": "sqlite"}


#: parametrize tests over both level stores: ``pytestmark = [..., BOTH_STORES]``; with
#: BOTH_BROKERS the cross product (tests/integration/test_pipeline.py)
BOTH_STORES = pytest.mark.parametrize("level_store", ["sqlite", "influxdb"], indirect=True)
#: each broker and each store once, where the cross product costs more than it adds: the
#: laptop default (Redis, SQLite) and the production one (RabbitMQ, InfluxDB)
BROKER_STORE_PAIRS = pytest.mark.parametrize(
    ("celery_broker", "level_store"), [("redis", "sqlite"), ("rabbitmq", "influxdb")],
    indirect=True)


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: int,
          redis_port: int, celery_broker: str, level_store: dict[str, str]) -> Iterator[Stack]:
    """The pipeline (gateway and workers) on real mosquitto, redis, the ``celery_broker`` and
    the ``level_store``; ``stack.store()`` reads what the workers stored."""
    s = Stack(tmp_path, mosquitto, redis_port, SOUNDMON_VISIBILITY_TIMEOUT_S="8",
              SOUNDMON_BROKER_URL=celery_broker, **level_store)
    try:
        with s:
            yield s
    finally:
        # shown by pytest only when the test failed
        request.node.add_report_section("teardown", "service logs", s.logs())


@contextmanager
def stack_of_its_own(request: pytest.FixtureRequest, directory: Path, broker: str,
                     store: str) -> Iterator[Stack]:
    """A whole pipeline for a module's tests to share: its own mosquitto and redis-server, the
    ``broker`` ("redis" or "rabbitmq") and the ``store`` ("sqlite" or "influxdb", a database
    of its own). Its tests use devices of their own and count in differences, since the
    gateway's counters and the store outlive each test."""
    with running_mosquitto(directory / "mosquitto") as mqtt_port, \
            running_redis(directory / "redis") as redis_port:
        url = broker_url(request, broker, redis_port)
        with contextlib.ExitStack() as cleanup:
            env = {"SOUNDMON_STORE": "sqlite"}
            if store == "influxdb":
                env = influx_env(cleanup.enter_context(
                    influx_database(request.getfixturevalue("influx"))))
            else:
                assert store == "sqlite", store
            with Stack(directory, mqtt_port, redis_port, SOUNDMON_VISIBILITY_TIMEOUT_S="8",
                       SOUNDMON_BROKER_URL=url, **env) as s:
                yield s
