"""The device simulator against a real mosquitto, watched by an independent MQTT client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from paho.mqtt.subscribeoptions import SubscribeOptions

from soundmon.protocol import DEVICE_ID, decode_frame
from soundmon.scenes import SCENES
from soundmon.simulate import simulate, simulate_command

MOSQUITTO = "/usr/sbin/mosquitto"
ONLINE_FIELDS = ["state", "fw", "sensor", "rate", "frame_ms", "uptime_s", "rssi", "buffered",
                 "dropped"]  # protocol.md's status example, in its order


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sim_broker(tmp_path: Path) -> Iterator[int]:
    """A bare mosquitto on a free loopback port; its port."""
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    with open(tmp_path / "mosquitto.log", "wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (tmp_path / "mosquitto.log").read_text()
                    raise RuntimeError(f"mosquitto did not start: {log_text}") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


class Recorder:
    """An independent MQTT v5 client recording everything under soundmon/v1/ (retain flags
    as published, so a retained status is seen as retained)."""

    def __init__(self, port: int, client_id: str = "test-recorder") -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(
            "soundmon/v1/#", options=SubscribeOptions(qos=1, retainAsPublished=True))
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "recorder could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, leaf: str) -> list[tuple[str, bytes, bool]]:
        with self.lock:
            return [m for m in self.messages if m[0].endswith("/" + leaf)]

    def wait(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; got {len(self.messages)} messages"
            time.sleep(0.02)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def recorder(sim_broker: int) -> Iterator[Recorder]:
    r = Recorder(sim_broker)
    try:
        yield r
    finally:
        r.close()


def _statuses(recorder: Recorder, device: str) -> list[tuple[dict, bool]]:
    return [(json.loads(p), retained) for t, p, retained in recorder.on("status")
            if t == f"soundmon/v1/{device}/status"]


@pytest.mark.integration
def test_simulated_devices_publish_decodable_frames_and_statuses(sim_broker, recorder):
    """Two devices at full speed: 20 frames that decode, seq 0..9 and t0 +500 ms per device,
    a retained online status like protocol.md's example first and the offline one last."""
    stats = simulate(devices=2, broker_port=sim_broker, frames=10, full_speed=True)
    assert stats["published"] == stats["acked"] == 20
    assert stats["elapsed_s"] < 5.0  # 10 frames of 500 ms: paced in real time it takes 5 s
    recorder.wait(lambda: len(recorder.on("frame")) == 20
                  and all(_statuses(recorder, d)[-1:] and _statuses(recorder, d)[-1][0]
                          == {"state": "offline"} for d in ("sim-00", "sim-01")))

    for device, scene in (("sim-00", "quiet"), ("sim-01", "office")):
        assert DEVICE_ID.match(device)
        frames = [decode_frame(p) for t, p, _ in recorder.on("frame") if f"/{device}/" in t]
        assert [f.seq for f in frames] == list(range(10))
        assert {f.boot for f in frames} == {next(d["boot"] for d in stats["devices"]
                                                 if d["device"] == device)}
        assert {(f.kind, f.rate, f.count) for f in frames} == {(1, 8000, 4000)}
        assert [f.t0_ms - frames[0].t0_ms for f in frames] == [500 * i for i in range(10)]
        assert abs(frames[0].t0_ms / 1000 - time.time()) < 60  # Unix ms, not a counter
        (online, online_retained), (offline, offline_retained) = _statuses(recorder, device)
        assert list(online) == ONLINE_FIELDS and online_retained and offline_retained
        assert (online["state"], online["sensor"], online["rate"], online["frame_ms"]) == (
            "online", "max4466", 8000, 500)
        assert offline == {"state": "offline"}
        assert {"device": device, "scene": scene, "published": 10, "acked": 10}.items() <= \
            next(d for d in stats["devices"] if d["device"] == device).items()

    late = Recorder(sim_broker, client_id="test-late-subscriber")
    try:  # the broker keeps the last status: a newcomer learns the devices are offline
        late.wait(lambda: len(late.on("status")) == 2)
        assert all(json.loads(p) == {"state": "offline"} and r for _, p, r in late.on("status"))
    finally:
        late.close()


def _simulate_process(port: int, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "soundmon", "simulate", "--broker",
                             f"127.0.0.1:{port}", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.integration
def test_the_will_marks_a_device_offline_when_the_simulator_dies(sim_broker, recorder):
    """Killed without a goodbye, a device is marked offline by its last will."""
    proc = _simulate_process(sim_broker, "--devices", "1", "--device-prefix", "will")
    try:
        recorder.wait(lambda: len(recorder.on("frame")) >= 1, timeout=20)
        proc.kill()
        recorder.wait(lambda: [s for s, _ in _statuses(recorder, "will-00")][-1:]
                      == [{"state": "offline"}])
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    assert [s["state"] for s, _ in _statuses(recorder, "will-00")] == ["online", "offline"]


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_and_ctrl_c_stop_the_simulator_cleanly(sim_broker, recorder, signum):
    """On SIGTERM or Ctrl-C the simulator publishes offline, prints its summary, exits 0."""
    proc = _simulate_process(sim_broker, "--devices", "2", "--speed", "4")
    try:
        recorder.wait(lambda: len(recorder.on("frame")) >= 4, timeout=20)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "simulate: 2 device(s)" in out and "frames/s" in out
    for device in ("sim-00", "sim-01"):
        assert [s for s, _ in _statuses(recorder, device)][-1] == {"state": "offline"}


@pytest.mark.integration
def test_a_stop_event_ends_a_real_time_run_from_another_thread(sim_broker, recorder):
    """simulate() in a worker thread paces frames in real time and stops when told to."""
    stop = threading.Event()
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(simulate(
        devices=1, broker_port=sim_broker, scene="alarm", speed=5.0, stop=stop)))
    thread.start()
    recorder.wait(lambda: len(recorder.on("frame")) >= 3)
    stop.set()
    thread.join(15)
    assert not thread.is_alive()
    assert result["published"] == result["acked"] >= 3
    assert result["devices"][0]["scene"] == "alarm"
    recorder.wait(lambda: _statuses(recorder, "sim-00")[-1][0] == {"state": "offline"})


def test_unknown_scene_is_refused_with_the_list_of_scenes():
    """--scene with an unknown name fails before connecting and names every scene."""
    result = CliRunner().invoke(simulate_command, ["--scene", "jungle"])
    assert result.exit_code == 2
    assert all(name in result.output for name in SCENES)


@pytest.mark.parametrize("broker", ["localhost:notaport", "localhost:70000", ":1883"])
def test_malformed_broker_is_refused(broker):
    """--broker that is not HOST:PORT is a usage error that shows the expected form."""
    result = CliRunner().invoke(simulate_command, ["--broker", broker])
    assert result.exit_code == 2 and "HOST:PORT" in result.output


def test_unreachable_broker_is_a_clear_error():
    """Nothing listening at --broker: exit 1 with the address and a hint, no traceback."""
    port = _free_port()
    result = CliRunner().invoke(simulate_command, ["--broker", f"127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert f"cannot reach the MQTT broker at 127.0.0.1:{port}" in result.output
    assert "mosquitto" in result.output and "Traceback" not in result.output


def test_frames_too_long_for_the_header_are_refused():
    """rate x frame length beyond 65535 samples (the u16 count) is a usage error."""
    result = CliRunner().invoke(simulate_command, ["--rate", "48000", "--frame-ms", "2000"])
    assert result.exit_code == 2 and "65535" in result.output
