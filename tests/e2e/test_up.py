"""The whole `soundmon up` stack with simulated devices, as a user runs it."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from soundmon.services import free_port
from soundmon.store import SQLiteStore
from tests.conftest import wait_until
from tests.helpers import Publisher, hand_frame, sine

pytestmark = pytest.mark.e2e

RATE, N = 8000, 4000
K_DB = 100.0  # calibration offset the tests set, so dB SPL = dBFS + 100


class Up:
    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.http, self.mqtt, self.redis, self.flower = (free_port() for _ in range(4))
        self.token = "e2e-token"
        env = dict(os.environ, SOUNDMON_API_TOKEN=self.token, SOUNDMON_VISIBILITY_TIMEOUT_S="8",
                   PYTHONUNBUFFERED="1")
        self.out = open(tmp / "up.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "soundmon", "up", "--simulate", "2", "--data", str(self.data),
             "--http-port", str(self.http), "--mqtt-port", str(self.mqtt),
             "--redis-port", str(self.redis), "--flower-port", str(self.flower)],
            stdout=self.out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.out_path = tmp / "up.out"
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.http}",
                                headers={"Authorization": f"Bearer {self.token}"}, timeout=10)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def pid(self, name: str) -> int:
        return int((self.data / "run" / f"{name}.pid").read_text())

    def creds(self, device: str) -> tuple[str, str]:
        """The device's own broker account, made as a user would: `soundmon provision --json`."""
        out = subprocess.run([sys.executable, "-m", "soundmon", "provision", device, "--data",
                              str(self.data), "--json"], capture_output=True, text=True, check=True)
        creds = json.loads(out.stdout)
        return creds["username"], creds["password"]

    def admin(self) -> tuple[str, str]:
        """The operators' account `soundmon up` made (reads and writes every topic)."""
        services = json.loads((self.data / "mosquitto" / "services.json").read_text())
        return "svc.admin", services["svc.admin"]

    def store(self) -> SQLiteStore:
        return SQLiteStore(self.data / "soundmon.db")

    def stop(self) -> None:
        self.api.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.out.close()


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """`soundmon up --simulate 2` on free ports, stopped with Ctrl-C at the end."""
    u = Up(tmp_path_factory.mktemp("up"))
    try:
        wait_until(lambda: "Press Ctrl-C" in u.output() or u.proc.poll() is not None,
                   timeout=120, what="soundmon up to start")
        assert u.proc.poll() is None, u.output()
        yield u
    finally:
        u.stop()
        print(u.output())
        for log in sorted((u.data / "logs").glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def test_up_prints_urls_and_becomes_healthy(up: Up) -> None:
    """`soundmon up` prints the dashboard URL, the first user's password and the API token, and
    /api/health turns all green."""
    out = up.output()
    assert f"Dashboard:  http://127.0.0.1:{up.http}/\n" in out
    assert f"API token:  {up.token} " in out
    password = (up.data / "admin-password").read_text().strip()
    assert f"Sign in:    user admin, password {password} " in out
    signin = httpx.post(f"http://127.0.0.1:{up.http}/login",
                        data={"user": "admin", "password": password}, timeout=10)
    assert signin.status_code == 303 and "soundmon_session=" in signin.headers["set-cookie"]
    assert f"http://127.0.0.1:{up.flower}" in out
    health = wait_until(lambda: (r := up.api.get("/api/health")).status_code == 200 and r.json(),
                        timeout=60, what="a healthy stack")
    assert set(health["ok"]) >= {"store", "redis", "mqtt", "gateway", "workers"}
    assert health["failing"] == {}
    flower = httpx.get(f"http://127.0.0.1:{up.flower}/", timeout=10)
    assert flower.status_code == 200


def test_simulated_devices_show_live_levels(up: Up) -> None:
    """The simulated devices appear online with live levels in the API."""
    def two_live():
        devs = [d for d in up.api.get("/api/devices").json() if d["id"].startswith("sim-")]
        return len(devs) == 2 and all(d["online"] and d["laeq"] is not None for d in devs) and devs

    devs = wait_until(two_live, timeout=60, what="2 simulated devices with levels")
    for d in devs:
        assert 20 < d["laeq"] < 120 and d["sensor"] == "max4466"
        levels = up.api.get(f"/api/devices/{d['id']}/levels").json()["levels"]
        assert levels and [lv["t_ms"] for lv in levels] == sorted(lv["t_ms"] for lv in levels)


def _tone_frames(levels_db: list[float], boot: int, t0: int) -> list[bytes]:
    frames = []
    for seq, level in enumerate(levels_db):
        amp = 32768 * 10 ** ((level - K_DB) / 20) * math.sqrt(2)
        frames.append(hand_frame(seq, boot, t0 + 500 * seq, RATE, sine(1000, amp, RATE, N, 200)))
    return frames


def test_loud_stretch_raises_exactly_one_alert_that_resolves(up: Up) -> None:
    """A loud stretch raises exactly one level_high alert, announced on MQTT, resolved after."""
    device = "loud-test"
    assert up.api.put(f"/api/devices/{device}/calibration",
                      json={"offset_db": K_DB}).status_code == 200
    got: list[dict] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-alert-listener")
    sub.username_pw_set(*up.admin())
    subscribed = threading.Event()
    sub.on_connect = lambda c, *a: c.subscribe(f"soundmon/v1/{device}/alert", qos=1)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    sub.connect("127.0.0.1", up.mqtt)
    sub.loop_start()
    assert subscribed.wait(10)
    pub = Publisher(up.mqtt, "e2e-loud", *up.creds(device))
    # quiet 3 s, loud 4 s, quiet 12 s: the default rule judges LAeq over a sliding 5 s window,
    # which stays above 80 dB(A) until the loud part has left it (4.5 s), then 5 s inside
    plan = [70.0] * 6 + [90.0] * 8 + [70.0] * 24
    t0 = int(time.time() * 1000) - 20_000
    for frame in _tone_frames(plan, boot=31337, t0=t0):
        pub.publish(f"soundmon/v1/{device}/frame", frame)
    pub.close()

    def resolved():
        alerts = up.api.get("/api/alerts", params={"device": device}).json()
        return alerts and all(a["state"] == "resolved" for a in alerts) and alerts

    alerts = wait_until(resolved, timeout=60, what="the alert to resolve")
    assert [a["kind"] for a in alerts] == ["level_high"]
    # LAeq,5s when it opened (2 s out): 3 s at 70 and 2 s at 90; worst: 1 s at 70 and 4 s at 90
    assert alerts[0]["value"] == pytest.approx(10 * math.log10((3e7 + 2e9) / 5), abs=0.2)  # 86.1
    assert alerts[0]["worst"] == pytest.approx(10 * math.log10((1e7 + 4e9) / 5), abs=0.2)  # 89.0
    assert alerts[0]["threshold"] == 80.0
    wait_until(lambda: len(got) >= 2, timeout=20, what="open and resolved on MQTT")
    sub.loop_stop()
    assert [(m["kind"], m["state"]) for m in got] == [("level_high", "open"),
                                                      ("level_high", "resolved")]
    assert got[0]["unit"] == "dB(A)" and got[0]["device"] == device
    levels = up.api.get(f"/api/devices/{device}/levels",
                        params={"start": t0 - 1, "end": t0 + 60_000}).json()["levels"]
    assert [round(lv["laeq"]) for lv in levels] == [round(v) for v in plan]


def _killpg(pid: int) -> None:
    os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_kill_9_of_gateway_and_worker_loses_nothing(up: Up) -> None:
    """kill -9 of the gateway, then of the preprocess worker, mid-stream: every frame stored once."""
    devices = [f"kill-{i}" for i in range(4)]
    per_device = 150
    done = threading.Event()
    published = {d: 0 for d in devices}

    accounts = {d: up.creds(d) for d in devices}  # each device publishes only as itself

    def stream() -> None:
        pubs = {d: Publisher(up.mqtt, f"e2e-kill-stream-{d}", *accounts[d]) for d in devices}
        t0 = int(time.time() * 1000)
        for seq in range(per_device):
            for d in devices:
                frame = hand_frame(seq, 99, t0 + 500 * seq, RATE,
                                   sine(500 + seq, 3000, RATE, N))
                pubs[d].publish(f"soundmon/v1/{d}/frame", frame)  # waits for the PUBACK
                published[d] += 1
            time.sleep(0.02)  # about 4 devices x 40 frames/s
        for pub in pubs.values():
            pub.close()
        done.set()

    store = up.store()
    before = {d: store.count_levels(d) for d in devices}
    assert before == {d: 0 for d in devices}
    t = threading.Thread(target=stream, daemon=True)
    t.start()
    wait_until(lambda: sum(published.values()) > 100, timeout=30, what="the stream to start")
    gw = up.pid("gateway")
    _killpg(gw)
    wait_until(lambda: up.pid("gateway") != gw, timeout=20, what="the gateway to be restarted")
    wait_until(lambda: sum(published.values()) > 300, timeout=30, what="more frames")
    worker = up.pid("worker-preprocess")
    _killpg(worker)
    wait_until(lambda: up.pid("worker-preprocess") != worker, timeout=20,
               what="the worker to be restarted")
    assert done.wait(120), "the stream did not finish"
    total = per_device * len(devices)

    def all_stored():
        return sum(store.count_levels(d) for d in devices) == total

    wait_until(all_stored, timeout=120, interval=0.5, what=f"all {total} frames stored")
    for d in devices:
        seqs = [r.seq for r in store.levels(d, 0, 2**62, limit=10_000)]
        assert sorted(seqs) == list(range(per_device)), d  # each seq exactly once
    assert "restarting" in up.output()


def test_broker_refuses_anonymous_clients(up: Up) -> None:
    """`soundmon up` runs mosquitto with accounts: an anonymous client is refused."""
    answers: list = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-anonymous")
    client.on_connect = lambda c, u, flags, reason_code, p: answers.append(reason_code)
    client.connect("127.0.0.1", up.mqtt)
    client.loop_start()
    try:
        wait_until(lambda: answers, timeout=10, what="a CONNACK")
    finally:
        client.loop_stop()
    assert answers[0].is_failure and "authorized" in str(answers[0]).lower()
