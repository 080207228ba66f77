"""Test helpers: an independent MQTT client and hand-built frames (protocol.md, not our code)."""

from __future__ import annotations

import math
import struct
import threading

import paho.mqtt.client as mqtt


def hand_frame(seq: int, boot: int, t0_ms: int, rate: int, samples: list[int], kind: int = 1,
               magic: bytes = b"SM", version: int = 1) -> bytes:
    """A frame built straight from protocol.md section 2 with ``struct``."""
    header = struct.pack("<2sBBIIqHH", magic, version, kind, seq, boot, t0_ms, rate, len(samples))
    return header + struct.pack(f"<{len(samples)}h", *samples)


def sine(freq_hz: float, amplitude: float, rate: int, n: int, offset: int = 0,
         phase: float = 0.0) -> list[int]:
    return [int(round(offset + amplitude * math.sin(2 * math.pi * freq_hz * i / rate + phase)))
            for i in range(n)]


def dbfs_by_hand(samples: list[int]) -> float:
    """dBFS per protocol.md section 3, in plain Python: rms after removing the mean."""
    mean = sum(samples) / len(samples)
    rms = math.sqrt(sum((s - mean) ** 2 for s in samples) / len(samples))
    return 20 * math.log10(rms / 32768)


class Publisher:
    """A plain paho client that publishes at QoS 1 and waits for each PUBACK."""

    def __init__(self, port: int, client_id: str = "test-publisher", username: str | None = None,
                 password: str | None = None) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if username:
            self.client.username_pw_set(username, password)
        self._connected = threading.Event()
        self.client.on_connect = lambda *a: self._connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError("test publisher could not connect")

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
