"""The rules, channels and alert-lifecycle API on a real SQLite file (fake Redis at the seam)."""

from __future__ import annotations

import sqlite3

import pytest

from soundmon import notifiers
from soundmon.store import SQLiteStore
from tests.conftest import wait_until
from tests.receivers import MqttListener
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


@pytest.fixture
def notified(monkeypatch) -> list[list[int]]:
    """The event ids the API hands to the notify queue (no broker here)."""
    from dashboard.routes import alerts

    sent: list[list[int]] = []
    monkeypatch.setattr(alerts, "send_notify",
                        lambda settings, alert_id, ids: sent.append(list(ids)))
    return sent


def test_resolve_by_hand_lifecycle(client, store, notified):
    """open -> resolved by hand (who, when), announced once through the notify queue; a second
    resolve is 409, an unknown id 404; an acknowledged alert can be resolved too."""
    alert_id = open_alert(store)
    r = client.post(f"/api/alerts/{alert_id}/resolve", headers=AUTH, json={"by": "night-shift"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["state"], body["resolved_by"]) == ("resolved", "night-shift")
    assert body["ended"].endswith("Z")
    (event_id,), = notified
    assert store.alert_event(event_id)["event"] == "resolved"
    assert [e["event"] for e in _events(store, alert_id)] == ["opened", "resolved"]
    again = client.post(f"/api/alerts/{alert_id}/resolve", headers=AUTH)
    assert again.status_code == 409 and "night-shift" in again.json()["detail"]
    assert client.post(f"/api/alerts/{alert_id}/ack", headers=AUTH).status_code == 409
    assert client.post("/api/alerts/999/resolve", headers=AUTH).status_code == 404
    assert len(notified) == 1
    other = open_alert(store, "hall")
    assert client.post(f"/api/alerts/{other}/ack", headers=AUTH).status_code == 200
    r = client.post(f"/api/alerts/{other}/resolve", headers=AUTH)
    assert (r.json()["state"], r.json()["resolved_by"], r.json()["acknowledged_by"]) == \
        ("resolved", "api", "api")


def _events(store: SQLiteStore, alert_id: int) -> list[dict]:
    with sqlite3.connect(store.path) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT * FROM alert_events WHERE alert_id=? "
                                            "ORDER BY id", (alert_id,))]
    db.close()
    return rows


def test_resolve_with_the_queue_down_keeps_the_event_for_the_workers(client, store, monkeypatch):
    """The broker refuses: the resolve still stands, and its event waits in the outbox, unplanned,
    for the analyze task's resend of stale events."""
    from dashboard.routes import alerts

    def down(settings, alert_id, ids):
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(alerts, "send_notify", down)
    alert_id = open_alert(store)
    r = client.post(f"/api/alerts/{alert_id}/resolve", headers=AUTH)
    assert r.status_code == 200 and r.json()["state"] == "resolved"
    resolved = [e for e in _events(store, alert_id) if e["event"] == "resolved"]
    assert len(resolved) == 1 and resolved[0]["planned"] == 0
    assert resolved[0]["id"] in store.unplanned_events(2**62)


def test_analysis_neither_reopens_nor_resolves_again_after_a_resolve_by_hand(store):
    """The level stays loud after a manual resolve: no new alert, no second resolved event; the
    next excursion (after resolve_s back inside) opens a new alert."""
    rules = RuleSet(level=LevelRule(window_s=0))

    def frames(first: int, values: list[float]) -> list[dict]:
        return [{"device": "kitchen", "boot": 1, "seq": first + i, "idx": 0,
                 "t_ms": T0 + 500 * (first + i), "kind": 1, "rate": 8000, "n": 4000,
                 "laeq": v, "dominant_hz": 250.0, "flags": 0} for i, v in enumerate(values)]

    def run(first: int, values: list[float]):
        return store.run_analysis("kitchen", lambda h, s, o: analyse(
            "kitchen", frames(first, values), h, s, o, rules, 0))

    alert_id = open_alert(store)  # frames 0-5 at 90 dB(A)
    alert, why, _ = store.resolve(alert_id, "night-shift")
    assert why == "ok"
    loud = run(6, [95.0] * 20)
    assert (loud.opened, loud.resolved, loud.events) == ([], [], [])
    quiet = run(26, [70.0] * 12)  # back inside for 6 s: would have resolved it
    assert (quiet.opened, quiet.resolved, quiet.events) == ([], [], [])
    assert [e["event"] for e in _events(store, alert_id)] == ["opened", "resolved"]
    assert store.alert(alert_id).resolved_by == "night-shift"
    again = run(38, [90.0] * 5)
    assert [a.kind for a in again.opened] == ["level_high"] and len(again.events) == 1


def test_test_notification_to_the_builtin_and_a_stored_mqtt_channel(tmp_path, store, mosquitto):
    """channel 'mqtt': protocol.md's alert message with event=test on soundmon/v1/+/alert of
    soundmon's own broker; a stored mqtt channel gets the webhook body on its own topic."""
    builtin = MqttListener(mosquitto, "soundmon/v1/+/alert")
    own = MqttListener(mosquitto, "ops/#", client_id="test-own-topic")
    try:
        with make_client(tmp_path, store, PubRedis(), mqtt_port=mosquitto) as c:
            r = c.post("/api/notifications/test", headers=AUTH, json={"channel": "mqtt"})
            assert r.status_code == 200, r.text
            assert r.json() == {"ok": True, "channel": "mqtt",
                                "topic": "soundmon/v1/soundmon-test/alert"}
            ch = c.post("/api/channels", headers=AUTH, json={
                "kind": "mqtt", "host": "127.0.0.1", "port": mosquitto,
                "topic": "ops/{device}"}).json()
            r = c.post("/api/notifications/test", headers=AUTH, json={"channel": ch["id"]})
            assert r.status_code == 200, r.text
        (msg,) = wait_until(lambda: builtin.messages, timeout=10, what="the built-in message")
        assert (msg["event"], msg["device"], msg["state"]) == ("test", "soundmon-test", "open")
        (body,) = wait_until(lambda: own.messages, timeout=10, what="the channel's message")
        assert (body["event"], body["alert"]["device"]) == ("test", "soundmon-test")
    finally:
        builtin.close()
        own.close()


def test_test_notification_to_an_unreachable_builtin_mqtt_is_502(client):
    """No broker on the settings' port: 502 naming the built-in mqtt channel and the reason."""
    r = client.post("/api/notifications/test", headers=AUTH, json={"channel": "mqtt"})
    assert r.status_code == 502 and "built-in mqtt channel" in r.json()["detail"]
    bad = client.post("/api/notifications/test", headers=AUTH, json={"channel": "pigeon"})
    assert bad.status_code == 422 and "'mqtt'" in bad.json()["detail"]


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


def test_run_analyses_analyses_every_device_of_a_batch_in_one_transaction(store):
    """Two devices in one call: each gets its own alert, state and events, and a failing
    analysis of one device rolls back the other's too (one transaction)."""
    def levels(device: str, laeq: float) -> list[dict]:
        return [{"device": device, "boot": 1, "seq": i, "idx": 0, "t_ms": T0 + 500 * i, "kind": 1,
                 "rate": 8000, "n": 4000, "laeq": laeq, "dominant_hz": 250.0, "flags": 0}
                for i in range(6)]

    rules = RuleSet(level=LevelRule(window_s=0))
    out = store.run_analyses({
        d: (lambda h, s, o, d=d, lv=lv: analyse(d, levels(d, lv), h, s, o, rules, 0))
        for d, lv in (("hall", 90.0), ("yard", 40.0))})
    assert [a.kind for a in out["hall"].opened] == ["level_high"]
    assert [a.kind for a in out["yard"].opened] == ["level_low"]
    assert len(out["hall"].events) == len(out["yard"].events) == 1
    assert {a.device for a in store.alerts(None, "open", 10)} == {"hall", "yard"}

    def boom(h, s, o):
        raise RuntimeError("analysis failed")

    with pytest.raises(RuntimeError):
        store.run_analyses({"cellar": lambda h, s, o: analyse("cellar", levels("cellar", 95.0), h, s,
                                                              o, rules, 0),
                            "attic": boom})
    assert {a.device for a in store.alerts(None, "open", 10)} == {"hall", "yard"}  # cellar rolled back
