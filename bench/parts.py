"""The processes a benchmark phase runs, started with soundmon's own configs, and their meters.

``System`` is one design under test on fresh loopback ports and a fresh data directory:
mosquitto (soundmon's config, accounts and ACL on, as ``soundmon up`` runs it) plus, for
``naive`` and ``soundmon``, redis-server, the consumers and (soundmon) the dashboard for the
SSE probe. ``cpu()`` and ``memory()`` read each component's process tree with psutil
(Celery's prefork children included): CPU seconds (user + system) and PSS in MB.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import redis

from soundmon import tasknames
from soundmon.events import GATEWAY_HEARTBEAT_PREFIX
from soundmon.provision import ensure_auth, provision_many
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
from soundmon.store import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
#: worker queues besides preprocess and analyze that `soundmon up` also runs, when they exist
EXTRA_QUEUES = [q for q in (getattr(tasknames, "NOTIFY_QUEUE", None),
                            getattr(tasknames, "RECORDING_QUEUE", None)) if q]


try:  # resolved here, not in the forked child
    _prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the bench process dies, even by SIGKILL (a test
    timeout), so nothing it started outlives it (Linux prctl PR_SET_PDEATHSIG). Elsewhere the
    clean-up in ``finally`` still stops everything on a normal exit."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


class BenchProcess(Process):
    """``soundmon.services.Process`` that also stops when the bench process dies."""

    def start(self) -> BenchProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()
        return self


def _celery_argv(app: str, queue: str, concurrency: int, name: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "-n", name,
            "-c", str(concurrency), "--loglevel", "WARNING", "--without-gossip",
            "--without-mingle"]


class System:
    """One design (``ceiling``, ``naive`` or ``soundmon``) on its own ports and data dir."""

    def __init__(self, design: str, workdir: Path, devices: list[str],
                 extra_workers: bool = True) -> None:
        self.design = design
        self.extra_queues = EXTRA_QUEUES if extra_workers else []
        self.data = workdir / design
        self.data.mkdir(parents=True, exist_ok=True)
        self.logs = self.data / "logs"
        self.mqtt_port = free_port()
        self.redis_port = free_port()
        self.http_port = free_port()
        self.procs: dict[str, Process] = {}
        self.services = ensure_auth(self.data)
        creds = provision_many(devices, self.data) if devices else {}
        self.credentials = self.data / "devices.json"
        self.credentials.write_text(json.dumps(creds))
        self.env = dict(os.environ)
        self.env.update({
            "SOUNDMON_DATA": str(self.data),
            "SOUNDMON_MQTT_HOST": "127.0.0.1", "SOUNDMON_MQTT_PORT": str(self.mqtt_port),
            "SOUNDMON_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "SOUNDMON_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "SOUNDMON_API_TOKEN": TOKEN, "SOUNDMON_HTTP_PORT": str(self.http_port),
            "PYTHONUNBUFFERED": "1",
            # the naive app and the sink are modules of this checkout
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        })

    def _env_as(self, account: str) -> dict[str, str]:
        return {**self.env, "SOUNDMON_MQTT_USERNAME": account,
                "SOUNDMON_MQTT_PASSWORD": self.services[account]}

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Process:
        p = BenchProcess(name, argv, env or self.env, self.logs / f"{name}.log")
        p.start()
        self.procs[name] = p
        return p

    def start(self) -> None:
        mosquitto = find_binary(MOSQUITTO_CANDIDATES)
        redis_server = find_binary(REDIS_CANDIDATES)
        if not mosquitto or not redis_server:
            raise SystemExit("bench: mosquitto and redis-server are needed: run `make install`")
        conf = prepare_mosquitto(self.data, self.mqtt_port, auth=True)
        wait_port(self.mqtt_port, proc=self._start("mosquitto", [mosquitto, "-c", str(conf)]).proc)
        if self.design == "ceiling":
            return
        rconf = prepare_redis(self.data, self.redis_port)
        wait_port(self.redis_port, proc=self._start("redis", [redis_server, str(rconf)]).proc)
        gw_env = self._env_as("svc.gateway")
        # the workers `soundmon up` runs besides preprocess (both designs get the same)
        for queue in ["analyze", *self.extra_queues]:
            env = self.env if queue == "recording" else self._env_as("svc.workers")
            self._start(f"worker-{queue}", soundmon_argv("worker", queue, "--loglevel", "WARNING"), env)
        others = [f"{q}@" for q in ["analyze", *self.extra_queues]]
        if self.design == "naive":
            self._start("worker-naive", _celery_argv("bench.naive", "naive", 2, "naive@%h"))
            self._start("gateway-naive", [sys.executable, "-m", "bench.naive", "gateway"], gw_env)
            self.wait_workers(["naive@", *others])
            wait_log(self.procs["gateway-naive"], 3)
        else:
            self._start("worker-preprocess", soundmon_argv("worker", "preprocess", "--loglevel",
                                                           "WARNING"))
            self._start("gateway", soundmon_argv("gateway"), gw_env)
            self._start("dashboard", soundmon_argv("dashboard"))
            self.wait_workers(["preprocess@", *others])
            self.wait_gateway()
            wait_port(self.http_port, 60, proc=self.procs["dashboard"].proc)

    def wait_workers(self, prefixes: list[str], timeout: float = 90.0) -> None:
        from soundmon.celeryconf import make_celery
        from soundmon.settings import Settings

        app = make_celery(Settings(broker_url=self.env["SOUNDMON_BROKER_URL"],
                                   redis_url=self.env["SOUNDMON_REDIS_URL"]), "bench")
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                names = [n for reply in app.control.ping(timeout=0.5) for n in reply]
                if all(any(n.startswith(p) for n in names) for p in prefixes):
                    return
                self.check_alive()
            raise SystemExit(f"bench: workers {prefixes} did not answer; see {self.logs}")
        finally:
            app.close()

    def wait_gateway(self, timeout: float = 60.0) -> None:
        r = redis.Redis(port=self.redis_port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = r.get(GATEWAY_HEARTBEAT_PREFIX + "gw1")
            if raw and json.loads(raw).get("connected") == 1:
                return
            self.check_alive()
            time.sleep(0.2)
        raise SystemExit(f"bench: the gateway did not connect; see {self.logs}")

    def check_alive(self) -> None:
        for p in self.procs.values():
            if not p.alive():
                raise SystemExit(f"bench: {p.name} exited; see {p.log_path}")

    def quiesce(self, timeout: float = 180.0) -> None:
        """Wait until every Celery queue is empty, so a phase does not inherit the last one's
        backlog (e.g. analyze tasks still running after a full-speed phase).
        Only queues with a worker in this system: the others never drain."""
        r = redis.Redis(port=self.redis_port)
        queues = ["preprocess", "analyze", "naive", *self.extra_queues]
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not any(r.llen(q) for q in queues):
                    return
                self.check_alive()
                time.sleep(0.5)
        finally:
            r.close()

    def stored(self) -> int:
        """Level rows in the store (0 before the first)."""
        db = self.data / "soundmon.db"
        return SQLiteStore(db).count_levels() if db.exists() else 0

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items() if p.pid}

    def stop(self) -> None:
        """The gateways, workers and dashboard together (each drains for a few seconds on
        SIGTERM, one after another that was most of a quick run's phase change), then the
        brokers they were draining to."""
        brokers = ("redis", "mosquitto")
        apps = [p for name, p in self.procs.items() if name not in brokers]
        if apps:
            with ThreadPoolExecutor(len(apps)) as pool:
                list(pool.map(lambda p: p.stop(), apps))
        for name in brokers:
            if name in self.procs:
                self.procs[name].stop()


def wait_log(p: Process, seconds: float) -> None:
    """Give a process without a readiness signal a moment, failing early if it died."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not p.alive():
            raise SystemExit(f"bench: {p.name} exited; see {p.log_path}")
        time.sleep(0.2)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) of each component's process tree so far."""
    out = {}
    for name, pid in pids.items():
        total = 0.0
        for p in _tree(pid):
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        out[name] = total
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 3) for k in after}


def memory(pids: dict[str, int]) -> dict[str, float]:
    """Proportional set size (shared pages split between sharers) of each tree, in MB."""
    out = {}
    for name, pid in pids.items():
        total = 0
        for p in _tree(pid):
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        out[name] = round(total / 2**20, 1)
    return out


class Child:
    """A bench helper process (load generator, sink) whose JSON lines we read."""

    running: set[Child] = set()  # killed by kill_all() when a run is interrupted

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        Child.running.add(self)
        self.name = name
        self.log = log
        self.stderr = open(log, "ab")  # noqa: SIM115 - closed in result()
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, cwd=ROOT, start_new_session=True,
                                     preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def line(self) -> dict:
        """The next JSON line it prints (blocking); SystemExit if it ends first."""
        raw = self.proc.stdout.readline() if self.proc.stdout else ""
        if not raw:
            self.proc.wait()
            raise SystemExit(f"bench: {self.name} exited ({self.proc.returncode}); see {self.log}")
        return json.loads(raw)

    def result(self, timeout: float) -> dict:
        """Its last JSON line, once it exits."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise SystemExit(f"bench: {self.name} took longer than {timeout:.0f} s") from None
        finally:
            self.stderr.close()
            Child.running.discard(self)
        lines = [ln for ln in out.splitlines() if ln.strip()]
        if not lines:
            raise SystemExit(f"bench: {self.name} printed no result; see {self.log}")
        return json.loads(lines[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        Child.running.discard(self)

    @classmethod
    def kill_all(cls) -> None:
        for child in list(cls.running):
            child.kill()
