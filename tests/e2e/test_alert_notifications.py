"""`soundmon up --simulate 1 --scene event`: one 20 s loud event, told once on every channel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from soundmon.scenes import EVENT_START_S
from soundmon.services import free_port
from tests.conftest import wait_until
from tests.receivers import MqttListener, SmtpReceiver, WebhookReceiver

pytestmark = pytest.mark.e2e

TOKEN = "e2e-alert-token"
DEVICE = "sim-00"


class UpEvent:
    """`soundmon up` with one simulated device playing the `event` scene, on free ports."""

    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.http, self.mqtt, self.redis = free_port(), free_port(), free_port()
        self.out_path = tmp / "up.out"
        self.out = open(self.out_path, "wb")  # noqa: SIM115
        env = dict(os.environ, SOUNDMON_API_TOKEN=TOKEN, SOUNDMON_VISIBILITY_TIMEOUT_S="8",
                   PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "soundmon", "up", "--simulate", "1", "--scene", "event",
             "--data", str(self.data), "--http-port", str(self.http), "--mqtt-port", str(self.mqtt),
             "--redis-port", str(self.redis), "--no-flower"],
            stdout=self.out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.http}",
                                headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def admin(self) -> tuple[str, str]:
        services = json.loads((self.data / "mosquitto" / "services.json").read_text())
        return "svc.admin", services["svc.admin"]

    def stop(self) -> None:
        self.api.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.out.close()


@pytest.fixture
def up_event(tmp_path: Path) -> Iterator[UpEvent]:
    u = UpEvent(tmp_path)
    try:
        wait_until(lambda: "Press Ctrl-C" in u.output() or u.proc.poll() is not None,
                   timeout=120, what="soundmon up to start")
        assert u.proc.poll() is None, u.output()
        yield u
    finally:
        u.stop()
        for log in sorted((u.data / "logs").glob("worker-*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def test_a_20_s_loud_event_gives_one_alert_told_once_per_channel(up_event: UpEvent,
                                                                  tmp_path: Path) -> None:
    """The `event` scene's 20 s at 90 dB(A): exactly one level_high alert; one e-mail, one
    signed webhook and one MQTT message when it opens, then one of each when it resolves."""
    up = up_event
    with WebhookReceiver({"/soundmon": "e2e-webhook-secret"}) as web, SmtpReceiver(tmp_path) as smtp:
        hook = up.api.post("/api/channels", json={"kind": "webhook", "name": "ops hook",
                                                  "url": web.url("/soundmon"),
                                                  "secret": "e2e-webhook-secret"})
        mail = up.api.post("/api/channels", json={**smtp.channel(), "name": "ops mail"})
        assert hook.status_code == 201 and mail.status_code == 201, (hook.text, mail.text)
        test = up.api.post("/api/notifications/test", json={"channel": hook.json()["id"]})
        assert test.status_code == 200 and web.at("/soundmon")[0]["body"]["event"] == "test"
        listener = MqttListener(up.mqtt, f"soundmon/v1/{DEVICE}/alert", auth=up.admin(),
                                client_id="e2e-event-listener")
        assert up.api.get("/api/alerts", params={"device": DEVICE}).json() == [], (
            f"an alert opened before the channels were set up: the stack took more than "
            f"{EVENT_START_S:.0f} s to start")

        def resolved():
            alerts = up.api.get("/api/alerts", params={"device": DEVICE}).json()
            return alerts and alerts[0]["state"] == "resolved" and alerts

        alerts = wait_until(resolved, timeout=300, interval=1.0,
                            what="the event's alert to open and resolve")

        def settled():
            a = up.api.get(f"/api/alerts/{alerts[0]['id']}").json()
            done = a["deliveries"] and all(d["state"] != "pending" for d in a["deliveries"])
            return done and len(a["deliveries"]) == 8 and a
        detail = wait_until(settled, timeout=60, what="every delivery to finish")
        time.sleep(2.0)  # a duplicate, if any, would arrive now
        listener.close()
        hooks = [h for h in web.at("/soundmon") if h["body"]["event"] != "test"]
        mails = list(smtp.messages)

    alerts = up.api.get("/api/alerts", params={"device": DEVICE}).json()
    observed = {
        "alerts": [{k: a[k] for k in ("id", "kind", "state", "value", "worst", "threshold",
                                      "started", "ended", "duration_s", "frames")} for a in alerts],
        "deliveries": [(d["channel_name"], d["event"], d["state"], d["attempts"])
                       for d in detail["deliveries"]],
        "emails": [m["subject"] for m in mails],
        "webhooks": [(h["body"]["event"], h["body"]["alert"]["state"], h["signature_ok"])
                     for h in hooks],
        "mqtt": [(m["kind"], m["state"], m["value"]) for m in listener.messages],
    }
    print("\n--- soundmon up --simulate 1 --scene event: what the channels saw")
    print(up.output().split("Press Ctrl-C")[0].strip())
    for key, items in observed.items():
        print(f"{key}:")
        for item in items:
            print(f"  {json.dumps(item)}")
    assert [a["kind"] for a in alerts] == ["level_high"]
    assert alerts[0]["worst"] == pytest.approx(90.0, abs=1.0)
    assert 18.0 <= alerts[0]["duration_s"] <= 26.0  # the 20 s event, plus the 5 s window
    assert [s.split(":")[0] for s in observed["emails"]] == ["[soundmon] Alert", "[soundmon] Resolved"]
    assert observed["webhooks"] == [("opened", "open", True), ("resolved", "resolved", True)]
    assert [(k, s) for k, s, _ in observed["mqtt"]] == [("level_high", "open"),
                                                        ("level_high", "resolved")]
    assert sorted(d[2] for d in observed["deliveries"]) == ["sent"] * 8
