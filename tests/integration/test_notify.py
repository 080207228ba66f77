"""Notifications through the real notify queue: frames -> alert -> SMTP, webhooks, apprise, MQTT.

Everything is real and on loopback: mosquitto, redis-server, the Celery workers as processes,
an aiosmtpd server with STARTTLS and login, an HTTP server that checks the HMAC signatures.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from soundmon import notifiers, tasknames
from soundmon.celeryconf import make_celery
from soundmon.services import free_port
from soundmon.settings import Settings
from soundmon.store import SQLiteStore
from tests.conftest import Stack, wait_until
from tests.helpers import Publisher, hand_frame, sine
from tests.receivers import MqttListener, SmtpReceiver, WebhookReceiver
from workers.analysis import analyse
from workers.rules import LevelRule, RuleSet

pytestmark = pytest.mark.integration

RATE, N, K_DB = 8000, 4000, 100.0
NOTIFY_ENV = {"SOUNDMON_NOTIFY_RETRY_BASE_S": "0.5", "SOUNDMON_NOTIFY_MAX_ATTEMPTS": "3",
              "SOUNDMON_NOTIFY_TIMEOUT_S": "3", "SOUNDMON_VISIBILITY_TIMEOUT_S": "8"}


def add_channel(store: SQLiteStore, body: dict[str, Any]) -> str:
    """Validate a channel as ``POST /api/channels`` does and store it; returns its log key."""
    config = TypeAdapter(notifiers.ChannelModel).validate_python(body).model_dump()
    kind = config.pop("kind")
    return f"channel:{store.add_channel(kind, config)}"


def tone_frames(levels_db: list[float], boot: int, t0: int) -> list[bytes]:
    frames = []
    for seq, level in enumerate(levels_db):
        amp = 32768 * 10 ** ((level - K_DB) / 20) * math.sqrt(2)
        frames.append(hand_frame(seq, boot, t0 + 500 * seq, RATE, sine(1000, amp, RATE, N, 200)))
    return frames


def log_of(store: SQLiteStore, alert_id: int) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["channel"], d["event"]): d for d in store.deliveries(alert_id)}


@pytest.fixture
def notify_stack(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: int, redis_port: int):
    s = Stack(tmp_path, mosquitto, redis_port, **NOTIFY_ENV)
    try:
        yield s
    finally:
        s.stop()
        request.node.add_report_section("teardown", "service logs", s.logs())


def test_an_alert_reaches_every_channel_once_and_a_dead_webhook_fails_alone(
        notify_stack: Stack, tmp_path: Path, mosquitto: int) -> None:
    """A loud stretch: one e-mail (STARTTLS + login), signed webhooks, apprise and MQTT for open
    and resolve; an unreachable webhook is retried with backoff, then failed, blocking nobody."""
    device = "notify-dev"
    store = SQLiteStore(notify_stack.data / "soundmon.db")
    store.set_calibration(device, K_DB)
    dead_port = free_port()  # nothing listens here
    with WebhookReceiver({"/hook": "hook-secret-1", "/critical-only": "hook-secret-2"}) as web, \
            SmtpReceiver(tmp_path) as smtp:
        dead = add_channel(store, {"kind": "webhook", "url": f"http://127.0.0.1:{dead_port}/x",
                                   "secret": "dead-secret"})  # first: dispatched first
        hook = add_channel(store, {"kind": "webhook", "url": web.url("/hook"),
                                   "secret": "hook-secret-1"})
        email = add_channel(store, smtp.channel())
        apprise = add_channel(store, {"kind": "apprise",
                                      "urls": [f"json://127.0.0.1:{web.port}/apprise"]})
        add_channel(store, {"kind": "webhook", "url": web.url("/critical-only"),
                            "secret": "hook-secret-2", "severities": ["critical"]})
        dead_state_when_hook_arrived: list[str] = []

        def look(entry: dict[str, Any]) -> None:
            if entry["path"] == "/hook" and entry["body"]["event"] == "opened":
                rows = store.deliveries(entry["body"]["alert"]["id"])
                dead_state_when_hook_arrived.extend(
                    d["state"] for d in rows if d["channel"] == dead and d["event"] == "opened")

        web.on_request = look
        listener = MqttListener(mosquitto, f"soundmon/v1/{device}/alert")
        notify_stack.start()
        pub = Publisher(mosquitto, "notify-test-device")
        t0 = int(time.time() * 1000) - 30_000
        # quiet 3 s, loud 4 s, quiet 15 s: LAeq,5s leaves 80 dB(A) 5 s after the loud part
        for frame in tone_frames([70.0] * 6 + [90.0] * 8 + [70.0] * 30, 4242, t0):
            pub.publish(f"soundmon/v1/{device}/frame", frame)
        pub.close()

        alert = wait_until(lambda: (a := store.alerts(device)) and a[0].state == "resolved" and a[0],
                           timeout=240, what="the alert to open and resolve")
        assert [a.kind for a in store.alerts(device)] == ["level_high"]

        def settled():
            log = log_of(store, alert.id)
            return len(log) == 12 and all(d["state"] in ("sent", "failed") for d in log.values()) \
                and log
        log = wait_until(settled, timeout=60, what="every delivery to finish")
        listener.close()

    # the delivery log: built-ins and every routed channel, for both events
    states = {k: d["state"] for k, d in log.items()}
    assert states == {
        ("live", "opened"): "sent", ("mqtt", "opened"): "sent",
        ("live", "resolved"): "sent", ("mqtt", "resolved"): "sent",
        (hook, "opened"): "sent", (hook, "resolved"): "sent",
        (email, "opened"): "sent", (email, "resolved"): "sent",
        (apprise, "opened"): "sent", (apprise, "resolved"): "sent",
        (dead, "opened"): "failed", (dead, "resolved"): "failed",
    }
    assert log[(dead, "opened")]["attempts"] == 3 and log[(hook, "opened")]["attempts"] == 1
    assert "ConnectError" in log[(dead, "opened")]["error"]
    # the dead webhook did not hold the others back: it was still retrying when /hook got its
    assert dead_state_when_hook_arrived == ["pending"]
    notify_log = (tmp_path / "logs" / "worker-notify.log").read_text()
    assert "attempt 1 failed, retry in 0.5 s" in notify_log
    assert "attempt 2 failed, retry in 1.0 s" in notify_log

    # webhook: exactly one per event, signed, with the alert object of the API
    hooks = web.at("/hook")
    assert [h["body"]["event"] for h in hooks] == ["opened", "resolved"]
    assert all(h["signature_ok"] for h in hooks)
    assert hooks[0]["body"]["alert"]["kind"] == "level_high"
    assert hooks[0]["body"]["alert"]["device"] == device
    assert hooks[0]["body"]["alert"]["frames"]["boot"] == 4242
    assert hooks[1]["body"]["alert"]["state"] == "resolved"
    assert web.at("/critical-only") == []  # routed away: the alert is a warning
    # e-mail: one per event, over STARTTLS, after login
    assert [m["subject"].split(":")[0] for m in smtp.messages] == ["[soundmon] Alert",
                                                                          "[soundmon] Resolved"]
    assert all(m["tls"] for m in smtp.messages) and smtp.logins == [SmtpReceiver.user] * 2
    assert "level_high on notify-dev" in smtp.messages[0]["msg"]["Subject"]
    # apprise (json:// to the same HTTP server): one per event
    assert [json.dumps(r["body"]).count("level_high") > 0 for r in web.at("/apprise")] == [True, True]
    # MQTT on soundmon/v1/{device}/alert: open, then resolved
    assert [(m["kind"], m["state"]) for m in listener.messages] == [("level_high", "open"),
                                                                    ("level_high", "resolved")]


def test_a_notify_worker_killed_mid_delivery_delivers_once_after_restart(
        notify_stack: Stack, tmp_path: Path, mosquitto: int, redis_port: int) -> None:
    """SIGKILL while a webhook request is in flight: after the restart the webhook gets the
    same delivery again (same id) and is marked sent once; the e-mail already sent is not
    sent again."""
    store = SQLiteStore(notify_stack.data / "soundmon.db")
    device = "kill-dev"
    with WebhookReceiver({"/slow": "slow-secret-1"}) as web, SmtpReceiver(tmp_path) as smtp:
        email = add_channel(store, smtp.channel())
        slow = add_channel(store, {"kind": "webhook", "url": web.url("/slow"),
                                   "secret": "slow-secret-1"})
        web.hold.add("/slow")
        levels = [{"device": device, "boot": 1, "seq": i, "idx": 0, "t_ms": 1_000_000 + 500 * i,
                   "kind": 1, "rate": 8000, "n": 4000, "laeq": 90.0, "dominant_hz": 250.0,
                   "flags": 0} for i in range(6)]
        rules = RuleSet(level=LevelRule(window_s=0))
        out = store.run_analysis(device, lambda h, s, o: analyse(device, levels, h, s, o, rules, 0))
        (alert,) = out.opened
        notify_stack.start("worker-notify")
        producer = make_celery(Settings(broker_url=f"redis://127.0.0.1:{redis_port}/0",
                                        redis_url=f"redis://127.0.0.1:{redis_port}/0"))
        producer.send_task(tasknames.NOTIFY, args=[out.events])
        assert web.holding.wait(60), "the webhook request never came"
        wait_until(lambda: log_of(store, alert.id).get((email, "opened"), {}).get("state") == "sent",
                   timeout=30, what="the e-mail to be sent")
        worker = notify_stack.procs["worker-notify"]
        os.killpg(worker.proc.pid, signal.SIGKILL)  # mid-delivery: the webhook has no answer yet
        worker.proc.wait(10)
        web.release.set()
        worker.start()
        entry = wait_until(lambda: (d := log_of(store, alert.id)[(slow, "opened")])["state"] == "sent"
                           and d, timeout=90, what="the webhook delivery after the restart")
        time.sleep(1.0)  # anything still to come (a duplicate) would come now
        producer.close()

    received = web.at("/slow")
    ids = {r["headers"]["X-Soundmon-Delivery"] for r in received}
    assert len(received) == 2 and len(ids) == 1  # the same delivery, once unanswered
    assert [r["answered"] for r in received] == [False, True]
    assert all(r["signature_ok"] for r in received)
    assert entry["attempts"] == 2
    assert len([d for d in store.deliveries(alert.id) if d["channel"] == slow]) == 1
    assert len(smtp.messages) == 1  # sent before the kill, never again


def test_reminders_while_open_and_unacknowledged_then_none_after_ack(
        notify_stack: Stack, redis_port: int) -> None:
    """reminder_s = 1: reminders 1, 2, ... arrive while the alert is open; acknowledging stops them."""
    store = SQLiteStore(notify_stack.data / "soundmon.db")
    device = "remind-dev"
    store.set_rule_set(device, {"reminder_s": 1})
    with WebhookReceiver({"/remind": "remind-secret"}) as web:
        add_channel(store, {"kind": "webhook", "url": web.url("/remind"), "secret": "remind-secret",
                            "events": ["reminder"]})
        levels = [{"device": device, "boot": 1, "seq": i, "idx": 0, "t_ms": 1_000_000 + 500 * i,
                   "kind": 1, "rate": 8000, "n": 4000, "laeq": 95.0, "dominant_hz": 250.0,
                   "flags": 0} for i in range(6)]
        rules = RuleSet(level=LevelRule(window_s=0))
        out = store.run_analysis(device, lambda h, s, o: analyse(device, levels, h, s, o, rules, 0))
        (alert,) = out.opened
        notify_stack.start("worker-notify")
        producer = make_celery(Settings(broker_url=f"redis://127.0.0.1:{redis_port}/0",
                                        redis_url=f"redis://127.0.0.1:{redis_port}/0"))
        producer.send_task(tasknames.NOTIFY, args=[out.events])
        wait_until(lambda: len(web.at("/remind")) >= 2, timeout=60, what="two reminders")
        assert store.acknowledge(alert.id, "tester")[1] == "ok"
        seen = len(web.at("/remind"))
        time.sleep(4.0)  # several reminder intervals: at most the one already under way arrives
        producer.close()
        reminders = web.at("/remind")
    assert len(reminders) <= seen + 1
    assert [r["body"]["event"] for r in reminders] == ["reminder"] * len(reminders)
    assert all(r["signature_ok"] for r in reminders)
    ns = [d["n"] for d in store.deliveries(alert.id)
          if d["event"] == "reminder" and d["channel"] != "live"]
    assert ns == list(range(1, len(ns) + 1))  # each reminder once, numbered in order
    assert len(ns) == len(reminders)
