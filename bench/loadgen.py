"""The benchmark's device fleet: N simulated devices, each with its own MQTT connection.

Every phase of ``soundmon bench`` (the transport ceiling, the naive baseline, soundmon, the
latency and scale runs) is fed by this one publisher, so the ratios compare what consumes
the frames, not different load generators. A device publishes protocol-v1 kind-1 frames at
QoS 1 (8 kHz x 500 ms = 8,024 bytes by default) whose audio is the simulator's scenes
(``soundmon.scenes``), rendered once before the clock starts: rendering costs about 175 us
per frame, which at thousands of frames/s would take a core from the system under test.
Each frame has its own ``seq``, the device's random ``boot`` and a ``t0_ms``.

Two modes:

* full speed (``--full-speed --frames F``): each device keeps up to ``WINDOW`` frames
  unacknowledged, so the broker sets the pace; ``t0_ms`` advances by one frame per frame.
* real time (``--fps 2 --duration S``): each device publishes ``fps`` frames per second,
  devices spread evenly over the period (not all at the same instant, as real boards are
  not). ``t0_ms`` is the publish time minus the frame's length, which is when a board
  would have sampled its first sample, so ``publish time = t0_ms + frame_ms`` and the
  latency probes read the publish time off every stored level.

One thread drives every client through paho's external-loop API (``loop_read``,
``loop_write``, ``loop_misc``) and a selector, as ``soundmon simulate`` does. The summary is
one JSON line on stdout: ``published``, ``acked``, times (Unix s) and how late the real-time
publishes were (``lag_ms``: if that grows the generator, not the system, is the limit).

    python -m bench.loadgen --port 1883 --devices 8 --full-speed --frames 1000
"""

from __future__ import annotations

import argparse
import heapq
import json
import secrets
import selectors
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from soundmon.protocol import HEADER, KIND_PCM, MAGIC, VERSION, topic
from soundmon.scenes import SCENES, render

WINDOW = 100  # unacknowledged frames per device at full speed (as soundmon simulate)
BODIES_PER_SCENE = 8  # distinct frames of audio per scene, cycled
CONNECT_BATCH = 100  # connections opened before waiting for their CONNACKs
CONNECT_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 60.0  # after the last publish, how long to wait for PUBACKs
KEEPALIVE_S = 60


def frame_bodies(rate_hz: int, frame_ms: int) -> list[list[bytes]]:
    """Per scene, ``BODIES_PER_SCENE`` consecutive frames of int16 samples as bytes."""
    n = rate_hz * frame_ms // 1000
    out = []
    for i, scene in enumerate(SCENES.values()):
        audio = render(scene, 0.0, n * BODIES_PER_SCENE, rate_hz, seed=i).astype("<i2")
        out.append([audio[k * n:(k + 1) * n].tobytes() for k in range(BODIES_PER_SCENE)])
    return out


@dataclass(eq=False)
class Device:
    name: str
    client: mqtt.Client
    bodies: list[bytes]
    rate_hz: int
    topic: str
    boot: int = 0
    seq: int = 0
    acked: int = 0
    connected: bool = False
    refused: str | None = None

    @property
    def inflight(self) -> int:
        return self.seq - self.acked

    def publish(self, t0_ms: int) -> None:
        body = self.bodies[self.seq % len(self.bodies)]
        header = HEADER.pack(MAGIC, VERSION, KIND_PCM, self.seq & 0xFFFFFFFF, self.boot, t0_ms,
                             self.rate_hz, len(body) // 2)
        self.client.publish(self.topic, header + body, qos=1)
        self.seq += 1


class Fleet:
    """The devices and the selector that drives their clients."""

    def __init__(self, names: list[str], host: str, port: int, rate_hz: int, frame_ms: int,
                 credentials: dict[str, list[str]] | None = None, prefix: str = "soundmon",
                 boot_base: int | None = None) -> None:
        self.host, self.port = host, port
        self.frame_ms = frame_ms
        self.selector = selectors.DefaultSelector()
        bodies = frame_bodies(rate_hz, frame_ms)
        # boot ids boot_base + i: the probes tell this run's frames from earlier runs' by them
        base = secrets.randbits(32) if boot_base is None else boot_base
        self.devices: list[Device] = []
        for i, name in enumerate(names):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
            client.max_inflight_messages_set(WINDOW)
            client.max_queued_messages_set(0)
            if credentials and name in credentials:
                client.username_pw_set(*credentials[name])
            dev = Device(name, client, bodies[i % len(bodies)], rate_hz, topic(name, "frame", prefix),
                         boot=(base + i) % 2**32)
            client.user_data_set(dev)
            client.on_connect = _on_connect
            client.on_publish = _on_publish
            self.devices.append(dev)
        self.writers: set[Device] = set()

    def connect(self) -> None:
        """Connect every device, ``CONNECT_BATCH`` at a time; raise if any is refused."""
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        for start in range(0, len(self.devices), CONNECT_BATCH):
            batch = self.devices[start:start + CONNECT_BATCH]
            for dev in batch:
                dev.client.connect(self.host, self.port, keepalive=KEEPALIVE_S)
                self.selector.register(dev.client.socket(), selectors.EVENT_READ, dev)
            while not all(d.connected for d in batch):
                refused = next((d for d in batch if d.refused), None)
                if refused or time.monotonic() > deadline:
                    who, why = (refused.name, refused.refused) if refused else ("a device", "no CONNACK")
                    raise SystemExit(f"loadgen: the broker refused {who}: {why}")
                self.poll(0.05)

    def poll(self, timeout_s: float) -> None:
        """Read what arrived (CONNACKs, PUBACKs) and write what paho still holds."""
        if self.writers:
            timeout_s = 0.0
        for key, _ in self.selector.select(timeout_s):
            key.data.client.loop_read()
        for dev in list(self.writers):
            dev.client.loop_write()
            if not dev.client.want_write():
                self.writers.discard(dev)

    def sent(self, dev: Device) -> None:
        if dev.client.want_write():
            self.writers.add(dev)

    def misc(self) -> None:
        for dev in self.devices:
            dev.client.loop_misc()

    def published(self) -> int:
        return sum(d.seq for d in self.devices)

    def acked(self) -> int:
        return sum(d.acked for d in self.devices)

    def drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.acked() < self.published() and time.monotonic() < deadline:
            self.poll(0.05)

    def close(self) -> None:
        for dev in self.devices:
            dev.client.disconnect()
        self.poll(0.1)
        self.selector.close()


def _on_connect(client: mqtt.Client, dev: Device, flags: object, reason: object,
                properties: object) -> None:
    if getattr(reason, "is_failure", False):
        dev.refused = str(reason)
    else:
        dev.connected = True


def _on_publish(client: mqtt.Client, dev: Device, mid: int, reason: object,
                properties: object) -> None:
    dev.acked += 1


def run_full_speed(fleet: Fleet, frames: int, stop: list[bool]) -> dict:
    """Every device publishes ``frames`` frames as fast as its window allows."""
    start_ms = time.time_ns() // 1_000_000
    first = time.time()
    next_misc = time.monotonic() + 5
    while not stop:
        active = [d for d in fleet.devices if d.seq < frames]
        if not active:
            break
        sent = False
        for dev in active:  # one frame per device per pass: fair
            if dev.inflight < WINDOW:
                dev.publish(start_ms + dev.seq * fleet.frame_ms)
                fleet.sent(dev)
                sent = True
        fleet.poll(0.0 if sent else 0.01)
        if time.monotonic() > next_misc:
            fleet.misc()
            next_misc = time.monotonic() + 5
    last = time.time()
    fleet.drain()
    return {"first_publish": first, "last_publish": last, "lag_ms": None}


def run_real_time(fleet: Fleet, fps: float, duration_s: float, stop: list[bool]) -> dict:
    """Each device publishes ``fps`` frames/s for ``duration_s``, devices evenly spread."""
    period = 1.0 / fps
    n = len(fleet.devices)
    start = time.monotonic() + 0.2
    end = start + duration_s
    due = [(start + i * period / n, i) for i in range(n)]
    heapq.heapify(due)
    lags: list[float] = []
    first = last = 0.0
    next_misc = time.monotonic() + 5
    while due and not stop:
        now = time.monotonic()
        while due and due[0][0] <= now:
            when, i = heapq.heappop(due)
            dev = fleet.devices[i]
            wall_ms = time.time_ns() // 1_000_000
            dev.publish(wall_ms - fleet.frame_ms)  # sampled over the frame before now
            fleet.sent(dev)
            lags.append(now - when)
            first = first or wall_ms / 1000
            last = wall_ms / 1000
            if when + period < end:
                heapq.heappush(due, (when + period, i))
        if not due:
            break
        fleet.poll(min(0.05, max(0.0, due[0][0] - time.monotonic())))
        if time.monotonic() > next_misc:
            fleet.misc()
            next_misc = time.monotonic() + 5
    fleet.drain()
    lag = np.array(lags or [0.0]) * 1000
    return {"first_publish": first, "last_publish": last,
            "lag_ms": {"p50": round(float(np.percentile(lag, 50)), 1),
                       "p99": round(float(np.percentile(lag, 99)), 1),
                       "max": round(float(lag.max()), 1)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--first", type=int, default=0, help="index of the first device")
    ap.add_argument("--name-prefix", default="bench")
    ap.add_argument("--credentials", help="JSON file {device: [username, password]}")
    ap.add_argument("--boot-base", type=int, default=None,
                    help="device i boots with id BOOT_BASE + i [random]")
    ap.add_argument("--rate", type=int, default=8000, help="samples per second")
    ap.add_argument("--frame-ms", type=int, default=500)
    ap.add_argument("--full-speed", action="store_true")
    ap.add_argument("--frames", type=int, default=1000, help="frames per device (full speed)")
    ap.add_argument("--fps", type=float, default=2.0, help="frames/s per device (real time)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds (real time)")
    args = ap.parse_args(argv)
    names = [f"{args.name_prefix}-{i:04d}" for i in range(args.first, args.first + args.devices)]
    creds = None
    if args.credentials:
        with open(args.credentials) as f:
            creds = json.load(f)
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    fleet = Fleet(names, args.host, args.port, args.rate, args.frame_ms, creds,
                  boot_base=args.boot_base)
    fleet.connect()
    print(json.dumps({"connected": len(names)}), flush=True)
    cpu0 = time.process_time()
    if args.full_speed:
        out = run_full_speed(fleet, args.frames, stop)
    else:
        out = run_real_time(fleet, args.fps, args.duration, stop)
    out.update(devices=len(names), published=fleet.published(), acked=fleet.acked(),
               last_ack=time.time(), cpu_s=round(time.process_time() - cpu0, 3),
               frame_bytes=HEADER.size + 2 * args.rate * args.frame_ms // 1000)
    fleet.close()
    print(json.dumps(out), flush=True)
    return 0 if out["acked"] == out["published"] else 1


if __name__ == "__main__":
    sys.exit(main())
