"""The HTTP API on a real SQLiteStore, with a fake Redis and a fake Celery ping at the seams."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import socket
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from fastapi.testclient import TestClient

from dashboard.app import create_app
from dashboard.health import WorkerPing
from dashboard.hub import EventHub, split_message
from dashboard.server import dashboard_command
from soundmon import handoff
from soundmon.events import GATEWAY_HEARTBEAT_PREFIX, GATEWAY_STATS_KEY
from soundmon.metrics import flags_to_mask
from soundmon.settings import Settings
from soundmon.store import LevelRow, SQLiteStore, now_ms

TOKEN = "unit-test-token-0123456789"
USER, PASSWORD = "alice", "correct horse battery"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class FakeRedis:
    """The few async redis commands the API uses; ``down=True`` makes every call fail."""

    def __init__(self, keys: dict[str, str] | None = None,
                 hashes: dict[str, dict[str, str]] | None = None, down: bool = False) -> None:
        self.keys = keys or {}
        self.hashes = hashes or {}
        self.down = down

    def _check(self) -> None:
        if self.down:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Refused.")

    async def ping(self) -> bool:
        self._check()
        return True

    async def scan_iter(self, match: str = "*", count: int | None = None) -> Any:
        self._check()
        for key in list(self.keys):
            if fnmatch.fnmatchcase(key, match):
                yield key

    async def hgetall(self, key: str) -> dict[str, str]:
        self._check()
        return dict(self.hashes.get(key, {}))

    async def hlen(self, key: str) -> int:
        self._check()
        return len(self.hashes.get(key, {}))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def store(tmp_path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "soundmon.db")


def make_client(tmp_path, store: SQLiteStore, fake: FakeRedis | None = None,
                mqtt_port: int | None = None, workers: list[str] | None = None) -> TestClient:
    settings = Settings(SOUNDMON_DATA=str(tmp_path), api_token=TOKEN,
                        mqtt_port=mqtt_port or closed_port())
    app = create_app(settings, store, fake if fake is not None else FakeRedis())
    if USER not in app.state.users.names():
        app.state.users.add(USER, PASSWORD)
    names = workers if workers is not None else ["analyze@h", "preprocess@h"]
    app.state.health.workers = WorkerPing(lambda: names)
    return TestClient(app)


@pytest.fixture
def client(tmp_path, store) -> Iterator[TestClient]:
    with make_client(tmp_path, store) as c:
        yield c


def level(device: str, seq: int, t_ms: int, laeq: float = 70.0) -> LevelRow:
    return LevelRow(device=device, boot=1, seq=seq, idx=0, t_ms=t_ms, kind=1, rate=8000, n=4000,
                    dbfs=laeq - 100.4, lzeq=laeq + 2, laeq=laeq, dominant_hz=1000.0,
                    clip_frac=0.0, duty=None, edges=None, k_db=100.4,
                    flags=flags_to_mask(["uncalibrated"]))


def add_levels(store: SQLiteStore, rows: list[LevelRow]) -> None:
    store.insert_levels(rows)
    store.touch_devices(rows)


# ---- auth -----------------------------------------------------------------------------------
def test_api_refuses_a_request_without_token(client):
    """No credentials: 401 with a message and WWW-Authenticate: Bearer."""
    r = client.get("/api/devices")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "Bearer" in r.json()["detail"]


def test_api_refuses_a_wrong_token(client):
    """A wrong bearer token is a 401 too."""
    r = client.get("/api/devices", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert r.json() == {"detail": "invalid API token"}


def test_health_needs_no_token(client):
    """/api/health answers without credentials (compose polls it)."""
    assert client.get("/api/health").status_code in (200, 503)


def sign_in(client: TestClient, user: str = USER, password: str = PASSWORD) -> str:
    """Sign in through the form; returns the page's CSRF token."""
    r = client.post("/login", data={"user": user, "password": password}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = client.get("/")
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert match, page.text[:500]
    return match.group(1)


def test_sign_in_sets_a_session_cookie_and_serves_the_page(client):
    """The right password sets an HttpOnly SameSite=Strict session cookie; page and API open."""
    r = client.post("/login", data={"user": USER, "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "soundmon_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert PASSWORD.lower() not in cookie
    page = client.get("/")
    assert page.status_code == 200
    assert "/static/main.js" in page.text and 'name="csrf-token"' in page.text
    assert client.get("/api/devices").status_code == 200


def test_sign_in_with_a_wrong_password_is_401(client):
    """A wrong password, or an unknown user: 401 page with a message and no cookie."""
    for user, password in ((USER, "wrong-password"), ("nobody", PASSWORD)):
        r = client.post("/login", data={"user": user, "password": password}, follow_redirects=False)
        assert r.status_code == 401
        assert "Wrong user name or password" in r.text
        assert "set-cookie" not in r.headers
    assert client.get("/api/devices").status_code == 401


def test_root_without_auth_shows_sign_in(client):
    """/ without credentials serves the sign-in form, not the dashboard; no data either."""
    r = client.get("/")
    assert r.status_code == 200
    assert 'action="/login"' in r.text and "main.js" not in r.text
    assert client.get("/api/stream").status_code == 401
    assert client.get("/api/export/levels").status_code == 401


def test_the_old_token_query_no_longer_signs_in(client):
    """/?token= with the API token does not start a browser session: users sign in by password."""
    r = client.get("/", params={"token": TOKEN}, follow_redirects=False)
    assert "set-cookie" not in r.headers and 'action="/login"' in r.text


def test_sign_in_from_another_site_is_refused(client):
    """A login form posted from another origin is refused (login CSRF)."""
    r = client.post("/login", data={"user": USER, "password": PASSWORD},
                    headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_cookie_put_needs_the_session_csrf_token(client):
    """A non-GET authenticated only by the session cookie needs its X-CSRF-Token."""
    csrf = sign_in(client)
    body = {"offset_db": 100.0}
    r = client.put("/api/devices/kitchen/calibration", json=body)
    assert r.status_code == 403
    assert "X-CSRF-Token" in r.json()["detail"]
    for bad in ({"X-CSRF-Token": "forged"}, {"X-Requested-With": "soundmon"}):
        assert client.put("/api/devices/kitchen/calibration", json=body, headers=bad).status_code == 403
    ok = client.put("/api/devices/kitchen/calibration", json=body, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200


def test_sign_out_ends_the_session(client):
    """POST /logout with the CSRF token ends the session: the old cookie opens nothing."""
    csrf = sign_in(client)
    cookie = client.cookies.get("soundmon_session")
    assert client.post("/logout", data={"csrf": "forged"}, follow_redirects=False).status_code == 403
    r = client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    client.cookies.set("soundmon_session", cookie)
    r = client.get("/api/devices")
    assert r.status_code == 401 and "session" in r.json()["detail"]
    assert 'action="/login"' in client.get("/").text


def test_bearer_token_still_works_for_scripts(client):
    """Scripts keep using Authorization: Bearer, writes included, with no CSRF token."""
    r = client.put("/api/devices/kitchen/calibration", json={"offset_db": 99.0}, headers=AUTH)
    assert r.status_code == 200


# ---- health ---------------------------------------------------------------------------------
def test_health_reports_failing_dependencies_with_503(tmp_path, store):
    """Redis down, no MQTT broker, no analyze worker: 503 and a reason for each."""
    with make_client(tmp_path, store, FakeRedis(down=True), workers=["preprocess@h"]) as c:
        r = c.get("/api/health")
    assert r.status_code == 503
    body = r.json()
    assert body["ok"] == ["store"]
    assert set(body["failing"]) == {"redis", "mqtt", "gateway", "workers", "handoff"}
    assert "refused" in body["failing"]["redis"].lower()
    assert "analyze@" in body["failing"]["workers"]
    assert all(isinstance(v, str) and v for v in body["failing"].values())


def test_health_ok_when_everything_answers(tmp_path, store):
    """Every dependency up: 200, all six names in ok, nothing failing."""
    fake = FakeRedis(keys={GATEWAY_HEARTBEAT_PREFIX + "gw1": "{}"})
    with socket.socket() as broker:
        broker.bind(("127.0.0.1", 0))
        broker.listen()
        with make_client(tmp_path, store, fake, mqtt_port=broker.getsockname()[1]) as c:
            r = c.get("/api/health")
    assert r.status_code == 200, r.json()
    assert r.json() == {"ok": ["store", "redis", "mqtt", "gateway", "workers", "handoff"],
                        "failing": {}}


def test_health_gateway_fails_without_heartbeat(tmp_path, store):
    """Redis up but no gateway heartbeat key: only the gateway check fails."""
    with make_client(tmp_path, store, FakeRedis()) as c:
        failing = c.get("/api/health").json()["failing"]
    assert "heartbeat" in failing["gateway"]
    assert "redis" not in failing


def test_health_handoff_fails_when_a_batch_was_given_up(tmp_path, store):
    """A batch set aside in the handoff ledger's dead hash fails the handoff check, saying where."""
    fake = FakeRedis(keys={GATEWAY_HEARTBEAT_PREFIX + "gw1": "{}"},
                     hashes={handoff.DEAD_KEY: {"b1": "x", "b2": "y"}})
    with make_client(tmp_path, store, fake) as c:
        failing = c.get("/api/health").json()["failing"]
    assert "2 batch(es)" in failing["handoff"] and handoff.DEAD_KEY in failing["handoff"]
    assert "gateway" not in failing


# ---- devices --------------------------------------------------------------------------------
def test_devices_list_and_one(client, store):
    """A device seen recently is listed and fetched by id with the store's fields."""
    add_levels(store, [level("kitchen", 1, now_ms())])
    store.set_status("kitchen", {"state": "online", "sensor": "max4466", "fw": "1.0.0"}, now_ms())
    devices = client.get("/api/devices", headers=AUTH).json()
    assert [d["id"] for d in devices] == ["kitchen"]
    dev = client.get("/api/devices/kitchen", headers=AUTH).json()
    for key in ("id", "online", "state", "last_seen", "sensor", "fw", "rate", "frame_ms", "laeq",
                "lzeq", "dbfs", "dominant_hz", "flags", "calibration_db", "calibrated", "status"):
        assert key in dev
    assert dev["online"] is True and dev["laeq"] == 70.0 and dev["flags"] == ["uncalibrated"]


def test_device_silent_for_a_minute_is_offline(client, store):
    """online turns false after 60 s of silence; the stored state stays 'online'."""
    store.set_status("attic", {"state": "online"}, now_ms() - 120_000)
    dev = client.get("/api/devices/attic", headers=AUTH).json()
    assert dev["online"] is False and dev["state"] == "online"


def test_unknown_device_is_404(client):
    """A well-formed id that was never seen is a 404 with a message."""
    r = client.get("/api/devices/nosuch", headers=AUTH)
    assert r.status_code == 404
    assert "nosuch" in r.json()["detail"]


def test_malformed_device_id_is_422(client):
    """A device id outside ^[a-z0-9][a-z0-9_-]{0,31}$ is a 422 with a readable message."""
    r = client.get("/api/devices/Bad.Id", headers=AUTH)
    assert r.status_code == 422
    assert "device_id" in r.json()["detail"] and "pattern" in r.json()["detail"]


# ---- levels ---------------------------------------------------------------------------------
@pytest.fixture
def five_levels(store) -> list[LevelRow]:
    rows = [level("kitchen", i, T0 + i * 1000, 60.0 + i) for i in range(5)]
    add_levels(store, list(reversed(rows)))  # inserted newest first
    return rows


def test_levels_iso_range_oldest_first(client, five_levels):
    """ISO start (with Z) and end (naive = UTC) select inclusively, oldest first."""
    r = client.get("/api/devices/kitchen/levels", headers=AUTH,
                   params={"start": "2026-01-01T00:00:01Z", "end": "2026-01-01T00:00:03"})
    assert r.status_code == 200
    body = r.json()
    assert body["device"] == "kitchen"
    assert [x["t_ms"] for x in body["levels"]] == [T0 + 1000, T0 + 2000, T0 + 3000]
    assert body["levels"][0]["laeq"] == 61.0 and body["levels"][0]["flags"] == ["uncalibrated"]


def test_levels_offset_iso_and_unix_ms(client, five_levels):
    """An ISO time with an offset and Unix ms integers work as bounds."""
    r = client.get("/api/devices/kitchen/levels", headers=AUTH,
                   params={"start": "2026-01-01T01:00:02+01:00", "end": str(T0 + 4000)})
    assert [x["t_ms"] for x in r.json()["levels"]] == [T0 + 2000, T0 + 3000, T0 + 4000]


def test_levels_limit(client, five_levels):
    """limit keeps the oldest rows of the range."""
    r = client.get("/api/devices/kitchen/levels", headers=AUTH,
                   params={"start": str(T0), "end": str(T0 + 4000), "limit": 2})
    assert [x["t_ms"] for x in r.json()["levels"]] == [T0, T0 + 1000]


def test_levels_default_range_is_last_hour(client, store):
    """Without start/end the last hour is returned."""
    now = now_ms()
    add_levels(store, [level("hall", 1, now - 2 * 3_600_000), level("hall", 2, now - 600_000)])
    r = client.get("/api/devices/hall/levels", headers=AUTH)
    assert [x["seq"] for x in r.json()["levels"]] == [2]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "after"),
        ({"start": "yesterday"}, "ISO 8601"),
        ({"end": "2026-13-01"}, "ISO 8601"),
        ({"limit": 0}, "limit"),
        ({"limit": 100_001}, "limit"),
    ],
)
def test_levels_bad_query_is_422(client, five_levels, params, needle):
    """Reversed or unparsable ranges and out-of-range limits are 422 with a message."""
    r = client.get("/api/devices/kitchen/levels", headers=AUTH, params=params)
    assert r.status_code == 422
    assert needle in r.json()["detail"]


def test_levels_of_unknown_device_is_404(client):
    """Levels of a device never seen: 404."""
    assert client.get("/api/devices/ghost/levels", headers=AUTH).status_code == 404


# ---- calibration ----------------------------------------------------------------------------
def test_calibration_put_creates_unseen_device(client):
    """PUT calibration on a new id creates the device, calibrated, listed by GET devices."""
    r = client.put("/api/devices/newdev/calibration", headers=AUTH, json={"offset_db": 101.5})
    assert r.status_code == 200
    assert r.json()["id"] == "newdev"
    assert r.json()["calibration_db"] == 101.5 and r.json()["calibrated"] is True
    listed = {d["id"]: d for d in client.get("/api/devices", headers=AUTH).json()}
    assert listed["newdev"]["calibration_db"] == 101.5
    cal = client.get("/api/devices/newdev/calibration", headers=AUTH).json()
    assert cal["device"] == "newdev" and cal["offset_db"] == 101.5 and cal["calibrated"] is True
    assert [(h["offset_db"], h["source"]) for h in cal["history"]] == [(101.5, "api")]


@pytest.mark.parametrize(
    "body",
    ['{"offset_db": 250.5}', '{"offset_db": -51}', '{"offset_db": "loud"}', "{}",
     '{"offset_db": NaN}', '{"offset_db": Infinity}', '{"offset_db": 90, "extra": 1}'],
)
def test_calibration_bad_offset_is_422(client, body):
    """Offsets outside -50..250 dB, non-finite, missing or with unknown fields are 422."""
    r = client.put("/api/devices/kitchen/calibration", content=body,
                   headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422
    assert "offset_db" in r.json()["detail"] or "extra" in r.json()["detail"]
    assert client.get("/api/devices/kitchen", headers=AUTH).status_code == 404


def test_calibration_of_unknown_device_is_404(client):
    """GET calibration of a device never seen is a 404."""
    assert client.get("/api/devices/ghost/calibration", headers=AUTH).status_code == 404


# ---- alerts ---------------------------------------------------------------------------------
def insert_alert(store: SQLiteStore, device: str, state: str, started_ms: int,
                 ended_ms: int | None = None) -> None:
    """Write an alert row as the analyser would (plain SQL: the analysis API is not ours)."""
    with sqlite3.connect(store.path) as db:
        db.execute(
            "INSERT INTO alerts (device, kind, state, value, threshold, unit, started_ms, "
            "ended_ms, worst) VALUES (?, 'level_high', ?, 84.2, 80.0, 'dB(A)', ?, ?, 85.0)",
            (device, state, started_ms, ended_ms),
        )
    db.close()


def test_alerts_filters_and_shape(client, store):
    """Alerts filter by device and state, newest first, with ISO Z times and ended null if open."""
    insert_alert(store, "hall", "resolved", T0, T0 + 5000)
    insert_alert(store, "kitchen", "open", T0 + 10_000)
    everything = client.get("/api/alerts", headers=AUTH).json()
    assert [a["device"] for a in everything] == ["kitchen", "hall"]
    assert set(everything[0]) == {"id", "device", "kind", "state", "value", "threshold", "unit",
                                  "started", "ended", "worst", "rule", "severity", "duration_s",
                                  "acknowledged_by", "acknowledged", "resolved_by", "frames",
                                  "quiet_hours"}
    opened = client.get("/api/alerts", headers=AUTH, params={"state": "open"}).json()
    assert [(a["device"], a["ended"]) for a in opened] == [("kitchen", None)]
    assert opened[0]["started"] == "2026-01-01T00:00:10.000Z"
    hall = client.get("/api/alerts", headers=AUTH, params={"device": "hall"}).json()
    assert [(a["state"], a["ended"]) for a in hall] == [("resolved", "2026-01-01T00:00:05.000Z")]


def test_alerts_bad_state_is_422(client):
    """A state other than open/acknowledged/resolved is a 422 naming the allowed values."""
    r = client.get("/api/alerts", headers=AUTH, params={"state": "closed"})
    assert r.status_code == 422
    assert "'open'" in r.json()["detail"]


# ---- gateway --------------------------------------------------------------------------------
def test_gateway_counters_per_gateway_and_totals(tmp_path, store):
    """The stats hash is split per gateway id and summed into totals."""
    fake = FakeRedis(hashes={GATEWAY_STATS_KEY: {"gw1:frames": "10", "gw2:frames": "5",
                                                 "gw1:rejected:bad_magic": "1"}})
    with make_client(tmp_path, store, fake) as c:
        r = c.get("/api/gateway", headers=AUTH)
    assert r.json() == {
        "gateways": {"gw1": {"frames": 10, "rejected:bad_magic": 1}, "gw2": {"frames": 5}},
        "totals": {"frames": 15, "rejected:bad_magic": 1},
    }


def test_gateway_with_redis_down_is_503(tmp_path, store):
    """Redis down: /api/gateway is a 503 with the reason."""
    with make_client(tmp_path, store, FakeRedis(down=True)) as c:
        r = c.get("/api/gateway", headers=AUTH)
    assert r.status_code == 503 and "refused" in r.json()["detail"].lower()


def test_openapi_needs_token(client):
    """The schema is served behind the token and lists the API paths."""
    assert client.get("/api/openapi.json").status_code == 401
    paths = client.get("/api/openapi.json", headers=AUTH).json()["paths"]
    assert "/api/devices/{device_id}/levels" in paths and "/api/stream" in paths
    json.dumps(paths)


# ---- live event fan-out (no Redis: the hub's pure side) -------------------------------------
def test_hub_splits_a_level_batch_into_one_event_per_item():
    """A level message with a list gives one SSE event per item; alert/device give one."""
    raw = json.dumps({"type": "level", "data": [{"seq": 1}, {"seq": 2}]})
    assert split_message(raw) == [("level", '{"seq":1}'), ("level", '{"seq":2}')]
    assert split_message(json.dumps({"type": "alert", "data": {"id": 3}})) == [("alert", '{"id":3}')]


def test_hub_ignores_malformed_messages(caplog):
    """Bad JSON, a missing field or an unknown type is logged and dropped, never raised."""
    for raw in ("not json", '{"type": "level"}', '{"type": "gossip", "data": 1}'):
        assert split_message(raw) == []
    assert "ignoring" in caplog.text


def test_hub_slow_client_drops_oldest_events():
    """A full client queue loses its oldest events and keeps the newest."""

    async def scenario() -> list[str]:
        hub = EventHub(redis_client=None, queue_size=2)
        queue = hub.attach()
        for seq in range(5):
            hub.publish_local(json.dumps({"type": "level", "data": [{"seq": seq}]}))
        hub.detach(queue)
        assert hub.client_count == 0 and hub.dropped == 3
        return [queue.get_nowait()[1] for _ in range(queue.qsize())]

    assert asyncio.run(scenario()) == ['{"seq":3}', '{"seq":4}']


def test_hub_close_clients_ends_every_stream():
    """close_clients (server shutdown) queues the end marker for current and later clients."""

    async def scenario() -> tuple[object, object]:
        hub = EventHub(redis_client=None, queue_size=1)
        before = hub.attach()
        hub.publish_local(json.dumps({"type": "alert", "data": {"id": 1}}))
        hub.close_clients()
        hub.publish_local(json.dumps({"type": "alert", "data": {"id": 2}}))
        return before.get_nowait(), hub.attach().get_nowait()

    assert asyncio.run(scenario()) == (None, None)


def test_stream_writes_queued_events_together_and_pings_when_idle(tmp_path, monkeypatch):
    """The stream's bytes: the snapshot, then every event queued by the time the client is
    ready in one write (a batch of levels is one chunk), a ``: ping`` when idle, and the end
    when the server closes the streams; the client's queue is gone afterwards."""
    from dashboard.routes import stream as route

    monkeypatch.setattr(route, "PING_S", 0.05)
    store = SQLiteStore(tmp_path / "soundmon.db")
    store.set_status("kitchen", {"state": "online"}, 1_000)

    async def scenario() -> list[bytes]:
        hub = EventHub(redis_client=None)
        hub._ready.set()
        gen = route._events(store, hub)
        chunks = [await gen.__anext__()]  # the snapshot
        hub.publish_local(json.dumps({"type": "level", "data": [{"seq": 1}, {"seq": 2}]}))
        chunks.append(await gen.__anext__())
        chunks.append(await gen.__anext__())  # nothing queued for PING_S
        hub.close_clients()
        chunks += [c async for c in gen]
        assert hub.client_count == 0
        return chunks

    snapshot, levels, ping, *rest = asyncio.run(scenario())
    assert snapshot.startswith(b": soundmon live events\nretry: 3000\n\nevent: device\ndata: {")
    assert b'"id":"kitchen"' in snapshot
    assert levels == b'event: level\ndata: {"seq":1}\n\nevent: level\ndata: {"seq":2}\n\n'
    assert ping == b": ping\n\n" and rest == []


def test_dashboard_command_refuses_to_start_without_token(monkeypatch, tmp_path):
    """`soundmon dashboard` exits with a clear message when SOUNDMON_API_TOKEN is unset."""
    monkeypatch.delenv("SOUNDMON_API_TOKEN", raising=False)
    result = CliRunner().invoke(dashboard_command, ["--data", str(tmp_path)])
    assert result.exit_code != 0
    assert "SOUNDMON_API_TOKEN is not set" in result.output
