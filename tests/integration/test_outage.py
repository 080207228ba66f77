"""Virtual devices (the firmware's own backlog on CPython) through a 60 s broker outage."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from soundmon.services import (
    MOSQUITTO_CANDIDATES,
    Process,
    find_binary,
    free_port,
    prepare_mosquitto,
    wait_port,
)
from soundmon.simulate import simulate
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

OUTAGE_S = 60
FRAME_MS = 500
RAM_FRAMES = 20  # 10 s of audio in RAM ...
FILE_RECORDS = 30  # ... then 30 s of per-second levels: a 60 s outage overflows by 20 s
DEVICES = 3


class Listener:
    """An independent subscriber with a persistent session: it misses nothing across restarts."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="outage-listener",
                                  clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe([("soundmon/v1/+/frame", 1), ("soundmon/v1/+/status", 1)])

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def of(self, device: str, leaf: str) -> list[bytes]:
        with self.lock:
            return [p for t, p in self.messages if t == f"soundmon/v1/{device}/{leaf}"]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _spans(payloads: list[bytes]) -> list[tuple[int, int, int]]:
    """(start_ms, end_ms, kind) of each frame or record, each (boot, seq) once."""
    seen: dict[tuple[int, int], bytes] = {}
    spans = []
    for p in payloads:
        _, _, kind, seq, boot, t0, rate, count = struct.unpack_from("<2sBBIIqHH", p)
        if (boot, seq) in seen:
            assert seen[(boot, seq)] == p, "one (boot, seq) named two different frames"
            continue  # a QoS 1 duplicate
        seen[(boot, seq)] = p
        if kind == 1:
            spans.append((t0, t0 + count * 1000 // rate, 1))
        else:
            spans += [(t0 + i * rate, t0 + (i + 1) * rate, kind) for i in range(count)]
    return sorted(spans)


def test_virtual_devices_backfill_a_60_s_broker_outage(tmp_path: Path) -> None:
    """Mosquitto down 60 s: every frame or second the buffer holds arrives with its time."""
    binary = find_binary(MOSQUITTO_CANDIDATES)
    assert binary, "mosquitto is not installed: run `make install`"
    port = free_port()
    conf = prepare_mosquitto(tmp_path, port)
    broker = Process("mosquitto", [binary, "-c", str(conf)], dict(os.environ),
                     tmp_path / "mosquitto.log").start()
    wait_port(port, proc=broker.proc)
    listener = Listener(port)
    assert listener.ready.wait(10)
    stop = threading.Event()
    sims: list = []
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(simulate(
        DEVICES, broker_port=port, frame_ms=FRAME_MS, scene="office", stop=stop,
        ram_frames=RAM_FRAMES, file_records=FILE_RECORDS, on_start=sims.extend)))
    thread.start()
    try:
        wait_until(lambda: len(sims) == DEVICES and all(s.published >= 6 for s in sims),
                   what="3 s of streaming")
        broker.stop()
        time.sleep(OUTAGE_S)  # the devices keep sampling into their backlogs
        assert all(not s.connected for s in sims)
        broker.start()
        wait_port(port, proc=broker.proc)
        wait_until(lambda: all(s.connected and s.backlog.empty() and not s.pending for s in sims),
                   timeout=60, what="the backlogs to drain")
        time.sleep(1.5)  # a few live frames after the backfill
    finally:
        stop.set()
        thread.join(60)
        listener.client.loop_stop()  # freeze what was received before the broker goes
        broker.stop()
    assert result["undelivered"] == 0

    for dev in result["devices"]:
        name = dev["device"]
        spans = _spans(listener.of(name, "frame"))
        statuses = [json.loads(p) for p in listener.of(name, "status")]
        # nothing overlaps: a second is never both a frame and a level record
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
        gaps = [(a[1], b[0]) for a, b in zip(spans, spans[1:], strict=False) if a[1] < b[0]]
        # the only hole is the oldest part of the overflow: exactly the records dropped
        assert dev["dropped"] > 0  # 60 s outage > 10 s in RAM + 30 s in the ring file
        assert len(gaps) == 1 and gaps[0][1] - gaps[0][0] == dev["dropped"] * 1000, gaps
        # every frame the device captured is accounted for, at its original time: as audio,
        # inside a level record, or in a dropped record
        first, last = spans[0][0], spans[-1][1]
        assert last - first == dev["published"] * FRAME_MS
        audio_ms = sum(e - s for s, e, k in spans if k == 1)
        level_ms = sum(e - s for s, e, k in spans if k == 2)
        assert audio_ms + level_ms + dev["dropped"] * 1000 == dev["published"] * FRAME_MS
        assert level_ms >= (FILE_RECORDS - 1) * 1000 and audio_ms >= RAM_FRAMES * FRAME_MS
        # the status after the reconnect reported the full buffer and the drops so far (a
        # frame captured before the backlog moved can still push one more record out); the
        # status once the backlog is sent reports nothing buffered and every drop
        reconnect = next(s for s in statuses if s.get("dropped"))
        assert reconnect["buffered"] <= RAM_FRAMES + FILE_RECORDS + 1
        assert 0 < reconnect["dropped"] <= dev["dropped"]
        assert statuses[-1]["state"] == "offline"
        assert statuses[-2]["buffered"] == 0 and statuses[-2]["dropped"] == dev["dropped"]
