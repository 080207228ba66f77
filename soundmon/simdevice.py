"""A simulated board's MQTT side, driven by one loop for all boards (see soundmon.simulate).

``SimDevice`` is what a MAX4466 board is on the wire (protocol.md): its own MQTT client
with the last will ``{"state":"offline"}``, a retained online status on every connect, and
kind-1 frames at QoS 1 encoded by the firmware's own ``firmware.frame.FrameWriter``. It is
the firmware's virtual device: while the broker is away it keeps sampling into the
firmware's own outage buffer (``firmware.backlog``: recent frames in RAM, older seconds as
Leq records in a ring file) and on reconnect sends it oldest first, as a board does; the
status reports ``buffered`` and ``dropped`` from it. Only the transport differs from the
board (paho here, ``firmware.mqtt`` there).
Nothing here blocks or starts a thread: ``Poller`` waits on every device's socket at once
and lets paho read what arrived (paho's external-loop API: ``loop_read``, ``loop_write``,
``loop_misc``). A device keeps at most ``WINDOW`` frames unacknowledged, so at full speed
the broker sets the pace and nothing queues without bound or is dropped.

Errors: ``SimulatorError`` is the base; ``BadArguments`` (also a ValueError) for arguments
out of range, ``BrokerError`` when the broker cannot be reached or refuses a device.
"""

from __future__ import annotations

import json
import logging
import secrets
import selectors
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from firmware import config as fw_config
from firmware.backlog import Backlog
from firmware.frame import HEADER_SIZE, FrameWriter
from soundmon import __version__
from soundmon.protocol import topic
from soundmon.scenes import Scene, SceneStream

log = logging.getLogger(__name__)

FIRMWARE = f"sim-{__version__}"
SENSOR = "max4466"  # the front end whose default K the scenes are rendered with
OFFLINE = json.dumps({"state": "offline"}, separators=(",", ":"))
# Unacknowledged frames per device: enough to keep a loopback link busy (100 x 8 kB), small
# enough that a slow broker throttles us instead of paho queueing without bound.
WINDOW = 100
# After a stop, how long to wait for the last PUBACKs (and the offline statuses') first
DRAIN_TIMEOUT_S = 10.0
KEEPALIVE_S = 30  # s: frames count as traffic, so pings only go out while idle or paused
RECONNECT_S = 1.0  # wait between reconnect attempts after the broker went away


class SimulatorError(Exception):
    """Base of the simulator's errors."""


class BadArguments(SimulatorError, ValueError):
    """An argument of ``simulate`` is out of range or inconsistent."""


class BrokerError(SimulatorError):
    """The broker could not be reached, or refused a device."""


@dataclass(frozen=True)
class RunConfig:
    """What every device of one run shares."""

    host: str
    port: int
    prefix: str
    rate_hz: int
    frame_ms: int
    samples_per_frame: int
    speed: float
    full_speed: bool
    frames: int | None
    username: str | None = None
    password: str | None = None
    # outage buffer per device (firmware defaults) and where its ring files go
    backlog_dir: Path | None = None
    ram_frames: int = fw_config.DEFAULTS["ram_frames"]
    file_records: int = fw_config.DEFAULTS["file_records"]
    #: device id -> (username, password), when each device has its own broker account
    credentials: dict[str, tuple[str, str]] | None = None


class SimDevice:
    """One simulated board: an MQTT client, a scene stream and the firmware's frame writer.

    Its client is driven by the simulator's loop: nothing here blocks or starts a thread.
    """

    def __init__(self, name: str, scene: Scene, seed: int, run: RunConfig) -> None:
        self.name = name
        self.scene = scene
        self.run = run
        self.stream = SceneStream(scene, run.rate_hz, seed)
        self.writer = FrameWriter(run.samples_per_frame)
        backlog_dir = run.backlog_dir or Path(".")
        self.backlog = Backlog(run.ram_frames, HEADER_SIZE + 2 * run.samples_per_frame,
                               str(backlog_dir / f"{name}.backlog"), run.file_records, lazy=True)
        self.boot = secrets.randbits(32)  # a new random boot id per run, like a reboot
        self.rssi_dbm = -45 - seed % 36  # a plausible, fixed Wi-Fi signal: -45..-80 dBm
        self.published = 0
        self.acked = 0
        self.pending: deque[mqtt.MQTTMessageInfo] = deque()
        self.connected = False
        self.refused: str | None = None
        self.closing = False
        self.offline: mqtt.MQTTMessageInfo | None = None
        self.booted = time.monotonic()
        self.next_misc = 0.0
        self.next_reconnect = 0.0
        self.frame_topic = topic(name, "frame", run.prefix)
        self.status_topic = topic(name, "status", run.prefix)
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=name)
        self.client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        self.client.max_inflight_messages_set(WINDOW)
        if run.credentials and name in run.credentials:
            self.client.username_pw_set(*run.credentials[name])
        elif run.username:
            self.client.username_pw_set(run.username, run.password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def status(self) -> str:
        """The online status JSON, field for field as protocol.md's example."""
        return json.dumps({
            "state": "online", "fw": FIRMWARE, "sensor": SENSOR, "rate": self.run.rate_hz,
            "frame_ms": self.run.frame_ms, "uptime_s": int(time.monotonic() - self.booted),
            "rssi": self.rssi_dbm, "buffered": self.backlog.buffered(),
            "dropped": self.backlog.dropped,
        }, separators=(",", ":"))

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
            return
        client.publish(self.status_topic, self.status(), qos=1, retain=True)
        self.connected = True

    def _on_disconnect(self, client: mqtt.Client, userdata: object,
                       flags: mqtt.DisconnectFlags, reason_code: ReasonCode,
                       properties: Properties | None) -> None:
        if self.connected and not self.closing:
            log.warning("%s: disconnected (%s); reconnecting", self.name, reason_code)
        self.connected = False

    def connect(self) -> None:
        """Open the connection (the CONNACK is read later); BrokerError if unreachable."""
        try:
            self.client.connect(self.run.host, self.run.port, keepalive=KEEPALIVE_S)
        except OSError as err:
            where = f"{self.run.host}:{self.run.port}"
            raise BrokerError(f"cannot reach the MQTT broker at {where}: {err}") from err

    def finished(self) -> bool:
        """True once the device has published all the frames it was asked for."""
        return self.run.frames is not None and self.published >= self.run.frames

    def due(self, start: float) -> float:
        """Monotonic time at which the next frame is due: once its last sample is captured."""
        end_sample = self.stream.position + self.run.samples_per_frame
        return start + end_sample / self.run.rate_hz / self.run.speed

    def ready(self, now: float, start: float) -> bool:
        """A frame is due: in real time when its last sample is captured, connected or not
        (a board keeps sampling through an outage); at full speed when there is room."""
        if self.finished():
            return False
        if self.run.full_speed:
            return self.connected and len(self.pending) < WINDOW and self.backlog.empty()
        return now >= self.due(start)

    def publish_frame(self, start_unix_ms: int) -> None:
        """Render and encode the next frame; publish it, or keep it in the backlog."""
        first = self.stream.position
        samples = self.stream.read(self.run.samples_per_frame).astype("<i2", copy=False)
        t0_ms = start_unix_ms + first * 1000 // self.run.rate_hz
        self.published += 1
        if self.connected and len(self.pending) < WINDOW and self.backlog.empty():
            frame = self.writer.pcm(self.backlog.take_seq(), self.boot, t0_ms,
                                    self.run.rate_hz, memoryview(samples).cast("B"))
            self._send(frame)
        else:  # offline or behind: into the firmware's backlog, sent oldest first
            self.backlog.keep(self.writer.pcm(0, self.boot, t0_ms, self.run.rate_hz,
                                              memoryview(samples).cast("B")))

    def _send(self, frame: memoryview) -> None:
        # paho keeps the payload until the PUBACK: give it a copy, not the writer's buffer
        self.pending.append(self.client.publish(self.frame_topic, bytes(frame), qos=1))

    def drain_backlog(self) -> None:
        """While connected and the window has room, send what the outage left, oldest first."""
        was_backfilling = not self.backlog.empty()
        while self.connected and len(self.pending) < WINDOW and not self.backlog.empty():
            payload = self.backlog.peek(self.boot)
            if payload is None:
                break
            self._send(payload)  # paho has its own copy now, and resends it after a reconnect
            self.backlog.pop()
        if was_backfilling and self.backlog.empty():
            # buffered is back to what is in flight: say so (retained, as on every connect)
            self.client.publish(self.status_topic, self.status(), qos=1, retain=True)

    def service(self, now: float) -> None:
        """After the sockets were read: flush output, keep alive, reconnect, count PUBACKs."""
        if self.client.want_write():
            self.client.loop_write()
        if now >= self.next_misc:
            self.client.loop_misc()  # keepalive pings
            self.next_misc = now + 1.0  # s: keepalive is 30 s, once a second is plenty
        if self.client.socket() is None and not self.closing and now >= self.next_reconnect:
            self.next_reconnect = now + RECONNECT_S
            try:
                self.client.reconnect()  # on_connect publishes the online status again
            except OSError as err:
                log.warning("%s: reconnect failed: %s", self.name, err)
        self.drain_backlog()
        while self.pending:
            head = self.pending[0]
            if head.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.pending.popleft()  # not sent (connection lost): paho cannot confirm it
            elif head.is_published():
                self.pending.popleft()
                self.acked += 1
            else:
                break  # PUBACKs come in order: the rest are not in yet either

    def close(self) -> None:
        """Start a clean goodbye: publish the retained offline status (the will's payload)."""
        self.closing = True
        if self.connected:
            self.offline = self.client.publish(self.status_topic, OFFLINE, qos=1, retain=True)

    def said_goodbye(self) -> bool:
        """True once the offline status is acknowledged (or there is no one to tell)."""
        return self.offline is None or not self.connected or self.offline.is_published()


class Poller:
    """Waits on every device's socket at once and lets paho read what arrived."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.registered: dict[SimDevice, Any] = {}

    def poll(self, sims: list[SimDevice], timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for input on any socket, read it, then service every device."""
        for sim in sims:  # (re)register sockets that changed: connects and reconnects
            sock = sim.client.socket()
            if self.registered.get(sim) is not sock:
                if self.registered.get(sim) is not None:
                    self.selector.unregister(self.registered[sim])
                if sock is not None:
                    self.selector.register(sock, selectors.EVENT_READ, sim)
                self.registered[sim] = sock
        if self.selector.get_map():
            for key, _ in self.selector.select(timeout_s):
                key.data.client.loop_read()
        else:
            time.sleep(timeout_s)  # every device is offline: service() reconnects them
        now = time.monotonic()
        for sim in sims:
            sim.service(now)

    def close(self) -> None:
        self.selector.close()
