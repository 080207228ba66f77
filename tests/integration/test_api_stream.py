"""/api/stream end to end: a real redis-server, the app under a real uvicorn, httpx reading SSE."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn

from dashboard.app import create_app
from soundmon import events
from soundmon.settings import Settings
from soundmon.store import SQLiteStore, now_ms

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REDIS_SERVER = "/usr/bin/redis-server"
TOKEN = "integration-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s} s")
        time.sleep(0.05)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, stopped in ``finally``."""
    if not Path(REDIS_SERVER).exists():
        pytest.fail(f"{REDIS_SERVER} is not installed: run `make install`")
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(up, 10, "redis-server did not answer PING")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def served(tmp_path, redis_url) -> Iterator[tuple[str, object]]:
    """(base URL, app): the dashboard app under uvicorn in a thread, with one known device."""
    store = SQLiteStore(tmp_path / "soundmon.db")
    store.set_status("kitchen", {"state": "online", "sensor": "max4466"}, now_ms())
    settings = Settings(SOUNDMON_DATA=str(tmp_path), api_token=TOKEN, redis_url=redis_url)
    app = create_app(settings, store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", ws="none",
        timeout_graceful_shutdown=2,
    ))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "uvicorn did not start")
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(10)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from SSE lines; comments and data-less blocks are skipped."""
    name, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)


def test_stream_sends_snapshot_then_published_events_in_order(served, redis_url):
    """The device snapshot comes first, then each level item and the alert, in publish order."""
    base, app = served
    levels = [
        {"device": "kitchen", "t_ms": 1000, "seq": 1, "laeq": 71.5, "flags": ["uncalibrated"]},
        {"device": "kitchen", "t_ms": 1500, "seq": 2, "laeq": 72.0, "flags": []},
    ]
    alert = {"id": 7, "device": "kitchen", "kind": "level_high", "state": "open", "value": 84.2,
             "threshold": 80.0, "unit": "dB(A)", "started": "2026-11-23T10:00:00Z"}
    publisher = redis.Redis.from_url(redis_url)
    try:
        with httpx.Client(timeout=10) as client, \
                client.stream("GET", f"{base}/api/stream", headers=AUTH) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = sse_events(response.iter_lines())
            name, data = next(stream)
            assert name == "device"
            assert json.loads(data)["id"] == "kitchen" and json.loads(data)["online"] is True
            assert app.state.hub.client_count == 1

            events.publish(publisher, "level", levels)
            events.publish(publisher, "alert", alert)
            received = [next(stream) for _ in range(3)]
        assert [n for n, _ in received] == ["level", "level", "alert"]
        assert [json.loads(d) for _, d in received] == [*levels, alert]
        wait_until(lambda: app.state.hub.client_count == 0, 5,
                   "the disconnected client was not detached")
    finally:
        publisher.close()


def test_stream_refuses_without_token(served):
    """No bearer header and no cookie: the stream is a 401 like the rest of the API."""
    base, _ = served
    with httpx.Client(timeout=10) as client:
        r = client.get(f"{base}/api/stream")
    assert r.status_code == 401
