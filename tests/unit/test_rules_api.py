"""The rules, channels and alert-lifecycle API on a real SQLite file (fake Redis at the seam)."""

from __future__ import annotations

import pytest

from soundmon import notifiers
from soundmon.store import SQLiteStore
from tests.unit.test_api import AUTH, T0, FakeRedis, make_client
from workers.analysis import analyse
from workers.rules import LevelRule, RuleSet


class PubRedis(FakeRedis):
    def __init__(self) -> None:
        super().__init__()
        self.published: list[tuple[str, str]] = []

    async def publish(self, channel: str, message: str) -> int:
        self.published.append((channel, message))
        return 1


@pytest.fixture
def store(tmp_path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "soundmon.db")


@pytest.fixture
def redis_fake() -> PubRedis:
    return PubRedis()


@pytest.fixture
def client(tmp_path, store, redis_fake):
    with make_client(tmp_path, store, redis_fake) as c:
        yield c


def open_alert(store: SQLiteStore, device: str = "kitchen") -> int:
    """Open a level_high alert the way the analyze task does (through run_analysis)."""
    levels = [{"device": device, "boot": 1, "seq": i, "idx": 0, "t_ms": T0 + 500 * i, "kind": 1,
               "rate": 8000, "n": 4000, "laeq": 90.0, "dominant_hz": 250.0, "flags": 0}
              for i in range(6)]
    rules = RuleSet(level=LevelRule(window_s=0))
    out = store.run_analysis(device, lambda h, s, o: analyse(device, levels, h, s, o, rules, 0))
    (alert,) = out.opened
    assert len(out.events) == 1  # the "opened" event, written with the alert
    return alert.id


# ---- rules ------------------------------------------------------------------------------------
def test_default_rules_are_the_settings_bounds(client):
    """GET /api/rules before any edit: 60-80 dB(A) LAeq over 5 s, 20-20000 Hz."""
    r = client.get("/api/rules", headers=AUTH).json()
    assert r["level"] == {"enabled": True, "metric": "laeq", "window_s": 5.0, "min_db": 60.0,
                          "max_db": 80.0, "open_s": 2.0, "resolve_s": 5.0, "hysteresis_db": 1.0,
                          "severity": "warning"}
    assert (r["frequency"]["min_hz"], r["frequency"]["max_hz"]) == (20.0, 20000.0)


def test_put_rules_merges_and_persists(client, store):
    """PUT a part of the rules: the rest keeps its value, and it is stored."""
    r = client.put("/api/rules", headers=AUTH, json={"level": {"max_db": 85.0},
                                                     "quiet_hours": {"enabled": True}})
    assert r.status_code == 200
    assert (r.json()["level"]["max_db"], r.json()["level"]["min_db"]) == (85.0, 60.0)
    assert client.get("/api/rules", headers=AUTH).json()["quiet_hours"]["enabled"] is True
    assert store.rule_set("")["level"]["max_db"] == 85.0


@pytest.mark.parametrize(("body", "fragment"), [
    ({"level": {"min_db": 90}}, "above the upper bound"),
    ({"quiet_hours": {"timezone": "Nowhere/City"}}, "unknown time zone"),
    ({"level": {"window_s": 1000}}, "level.window_s"),
    ({"colour": "red"}, "colour"),
])
def test_invalid_rules_are_422_with_a_message(client, body, fragment):
    """A bad rule is refused with a 422 whose detail names the problem; nothing is stored."""
    r = client.put("/api/rules", headers=AUTH, json=body)
    assert r.status_code == 422 and fragment in r.json()["detail"]
    assert client.get("/api/rules", headers=AUTH).json()["level"]["min_db"] == 60.0


def test_device_override(client):
    """A device override changes its effective rules only; DELETE returns it to the defaults."""
    r = client.put("/api/devices/kitchen/rules", headers=AUTH,
                   json={"level": {"max_db": 70.0}, "reminder_s": 0})
    assert r.status_code == 200
    assert r.json()["override"] == {"level": {"max_db": 70.0}, "reminder_s": 0}
    assert r.json()["effective"]["level"]["max_db"] == 70.0
    assert client.get("/api/devices/hall/rules", headers=AUTH).json()["effective"]["level"][
        "max_db"] == 80.0
    bad = client.put("/api/devices/kitchen/rules", headers=AUTH, json={"level": {"min_db": 75.0,
                                                                                 "max_db": 70.0}})
    assert bad.status_code == 422
    gone = client.delete("/api/devices/kitchen/rules", headers=AUTH).json()
    assert gone["override"] == {} and gone["effective"]["level"]["max_db"] == 80.0
    assert client.get("/api/devices/bad id/rules", headers=AUTH).status_code == 422


def test_rules_need_the_token(client):
    """Like every route, the rules need a token."""
    assert client.get("/api/rules").status_code == 401
    assert client.put("/api/rules", json={}).status_code == 401


# ---- channels ---------------------------------------------------------------------------------
def test_channels_add_list_mask_delete(client):
    """A webhook channel gets a generated secret shown once; the list masks it; DELETE removes."""
    r = client.post("/api/channels", headers=AUTH,
                    json={"kind": "webhook", "url": "http://127.0.0.1:9/hook", "severities": ["critical"]})
    assert r.status_code == 201
    made = r.json()
    assert made["secret"] and len(made["secret"]) >= 16 and made["severities"] == ["critical"]
    listed = client.get("/api/channels", headers=AUTH).json()
    assert [c["id"] for c in listed] == ["live", "mqtt", made["id"]]
    assert listed[2]["secret"] == "********" and listed[2]["url"] == "http://127.0.0.1:9/hook"
    assert client.delete(f"/api/channels/{made['id']}", headers=AUTH).status_code == 204
    assert client.delete(f"/api/channels/{made['id']}", headers=AUTH).status_code == 404


@pytest.mark.parametrize(("body", "fragment"), [
    ({"kind": "webhook", "url": "ftp://x"}, "http"),
    ({"kind": "webhook", "url": "http://x/", "secret": "short"}, "secret"),
    ({"kind": "email", "host": "smtp.example.org", "from_addr": "a@b", "to": ["nobody"]},
     "not e-mail addresses"),
    ({"kind": "apprise", "urls": ["nonsense://"]}, "apprise does not understand"),
    ({"kind": "pigeon"}, "kind"),
    ({"kind": "mqtt", "host": "h", "topic": "a/#"}, "wildcards"),
])
def test_bad_channels_are_422(client, body, fragment):
    """Each channel kind validates its own fields."""
    r = client.post("/api/channels", headers=AUTH, json=body)
    assert r.status_code == 422 and fragment in r.json()["detail"], r.json()


def test_test_notification_to_an_unreachable_webhook_is_502(client):
    """POST /api/notifications/test reports a channel that does not take the message."""
    ch = client.post("/api/channels", headers=AUTH,
                     json={"kind": "webhook", "url": "http://127.0.0.1:9/hook"}).json()
    r = client.post("/api/notifications/test", headers=AUTH, json={"channel": ch["id"]})
    assert r.status_code == 502 and "webhook channel" in r.json()["detail"]
    assert client.post("/api/notifications/test", headers=AUTH,
                       json={"channel": 999}).status_code == 404


def test_test_notification_to_the_live_page(client, redis_fake):
    """A test to 'live' is an alert event with event=test on the live stream."""
    assert client.post("/api/notifications/test", headers=AUTH,
                       json={"channel": "live"}).json() == {"ok": True, "channel": "live"}
    (channel, message), = redis_fake.published
    assert channel == "soundmon:events" and '"event":"test"' in message.replace(" ", "")


# ---- alert lifecycle --------------------------------------------------------------------------
def test_ack_lifecycle(client, store, redis_fake):
    """open -> acknowledged (by whom, when); a second ack is 409; unknown is 404."""
    alert_id = open_alert(store)
    r = client.post(f"/api/alerts/{alert_id}/ack", headers=AUTH, json={"by": "night-shift"})
    assert r.status_code == 200
    body = r.json()
    assert (body["state"], body["acknowledged_by"]) == ("acknowledged", "night-shift")
    assert body["acknowledged"].endswith("Z")
    assert redis_fake.published  # the live page hears of it
    again = client.post(f"/api/alerts/{alert_id}/ack", headers=AUTH)
    assert again.status_code == 409 and "night-shift" in again.json()["detail"]
    assert client.post("/api/alerts/999/ack", headers=AUTH).status_code == 404
    listed = client.get("/api/alerts", headers=AUTH, params={"state": "acknowledged"}).json()
    assert [a["id"] for a in listed] == [alert_id]


def test_alert_json_records_frames_worst_and_duration(client, store):
    """GET /api/alerts/{id}: the frames that caused it, worst value, duration, delivery log."""
    alert_id = open_alert(store)
    a = client.get(f"/api/alerts/{alert_id}", headers=AUTH).json()
    assert a["frames"] == {"boot": 1, "first_seq": 0, "last_seq": 5}  # all six frames were loud
    assert a["evidence_frames"] == [[1, 0], [1, 1], [1, 2], [1, 3]]  # the 2 s that opened it
    assert (a["worst"], a["duration_s"], a["rule"], a["severity"]) == (90.0, 3.0, "level", "warning")
    assert a["deliveries"] == []  # nothing delivered yet: no notify worker here
    assert client.get("/api/alerts/12345", headers=AUTH).status_code == 404


def test_alerts_since_filter(client, store):
    """since= keeps alerts still open or ended at or after it."""
    open_alert(store, "kitchen")
    assert len(client.get("/api/alerts", headers=AUTH, params={"since": T0 + 10**9}).json()) == 1
    r = client.get("/api/alerts", headers=AUTH, params={"since": "yesterday"})
    assert r.status_code == 422 and "since" in r.json()["detail"]


def test_one_open_alert_per_device_rule_and_kind(store):
    """The database refuses a second open alert of the same device, rule and kind."""
    open_alert(store)
    levels = [{"device": "kitchen", "boot": 2, "seq": i, "idx": 0, "t_ms": T0 + 500 * i, "kind": 1,
               "rate": 8000, "n": 4000, "laeq": 95.0, "dominant_hz": 250.0, "flags": 0}
              for i in range(6)]
    rules = RuleSet(level=LevelRule(window_s=0))
    # the analyser is shown no open alerts, so it tries to open one: the unique index drops it
    out = store.run_analysis("kitchen", lambda h, s, o: analyse("kitchen", levels, h, {}, {},
                                                                 rules, 0))
    assert out.opened == [] and out.events == []
    assert len(store.alerts("kitchen")) == 1


def test_webhook_signature_is_hmac_sha256_of_the_body():
    """sign() is sha256=<hex> of HMAC-SHA256(secret, raw body)."""
    import hashlib
    import hmac

    raw = b'{"event":"test"}'
    assert notifiers.sign("s3cret-key", raw) == "sha256=" + hmac.new(
        b"s3cret-key", raw, hashlib.sha256).hexdigest()


# ---- routing ----------------------------------------------------------------------------------
def test_notify_tasks_exist_on_the_worker_app_and_use_the_notify_queue():
    """soundmon.notify/deliver/remind are registered and routed to the notify queue."""
    from soundmon import tasknames
    from workers.app import app

    for name in (tasknames.NOTIFY, tasknames.DELIVER, tasknames.REMIND):
        assert name in app.tasks and tasknames.ROUTES[name]["queue"] == tasknames.NOTIFY_QUEUE


def test_routing_by_rule_severity_and_event():
    """Built-ins always; a channel only for the rules, severities and events it asks for."""
    from soundmon.store import Alert
    from workers.notify import route

    alert = Alert(5, "d", "level_high", "open", 85, 80, "dB(A)", T0, None, 86,
                  rule="level", severity="warning")
    channels = [{"id": 1}, {"id": 2, "severities": ["critical"]}, {"id": 3, "rules": ["level"]},
                {"id": 4, "rules": ["frequency"]}, {"id": 5, "events": ["resolved"]},
                {"id": 6, "enabled": False}]
    assert route(alert, "opened", channels) == ["live", "mqtt", "channel:1", "channel:3"]
    assert route(alert, "reminder", channels) == ["live", "channel:1", "channel:3"]
    assert route(alert, "resolved", channels) == ["live", "mqtt", "channel:1", "channel:3",
                                                  "channel:5"]
