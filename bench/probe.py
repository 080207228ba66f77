"""Latency probes: when does a published frame show up as a stored level and as an SSE event?

The load generator stamps each frame ``t0_ms = publish time - frame_ms`` (a board samples
the frame, then publishes it), and the stored level keeps ``t_ms = t0_ms``, so
``latency = arrival - (t_ms + frame_ms)`` with nothing but the frame itself.

* ``stored``: the preprocess task publishes a ``level`` event on Redis right after its
  store transaction committed; the probe subscribes to that channel. This is an upper
  bound of publish -> stored (the commit happened just before).
* ``sse``: the same levels as a browser gets them, from the dashboard's ``/api/stream``.

Both run as threads in the bench process (same clock as the load generator's: one machine).
"""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import redis

from soundmon import jsonfast
from soundmon.events import CHANNEL


class Probe:
    """Collects publish -> arrival latencies (ms) of the levels of one load run."""

    def __init__(self, redis_port: int, http_port: int, token: str, frame_ms: int) -> None:
        self.redis_port = redis_port
        self.http_port = http_port
        self.token = token
        self.frame_ms = frame_ms
        self.boots = range(0)  # nothing matches until a phase says which boot ids are its own
        self.stored: list[float] = []
        self.sse: list[float] = []
        self._stop = threading.Event()
        self._sse_stop = threading.Event()
        self._ready = threading.Event()
        self._sse_ready = threading.Event()
        self._redis_thread = threading.Thread(target=self._redis_loop, daemon=True)
        self._sse_thread: threading.Thread | None = None

    def start(self) -> None:
        self._redis_thread.start()
        self._ready.wait(10)

    def start_sse(self) -> None:
        """Connect to the live stream, as a browser with the page open (it costs the dashboard
        CPU per frame, so only the latency phase has a client)."""
        self._sse_stop.clear()
        self._sse_ready.clear()
        self._sse_thread = threading.Thread(target=self._sse_loop, daemon=True)
        self._sse_thread.start()
        self._sse_ready.wait(10)

    def stop_sse(self) -> None:
        self._sse_stop.set()
        if self._sse_thread:
            self._sse_thread.join(5)
            self._sse_thread = None

    def measure(self, boots: range) -> None:
        """From now on record only levels of frames with these boot ids (one load run)."""
        self.stored, self.sse = [], []
        self.boots = boots

    def _record(self, into: list[float], level: dict, now_ms: float) -> None:
        if level.get("boot") in self.boots:
            into.append(now_ms - (level["t_ms"] + self.frame_ms))

    def _redis_loop(self) -> None:
        client = redis.Redis(port=self.redis_port)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(CHANNEL)
        self._ready.set()
        while not self._stop.is_set():
            msg = pubsub.get_message(timeout=0.2)
            if not msg:
                continue
            now_ms = time.time() * 1000
            event = jsonfast.loads(msg["data"])  # orjson: the probes share the bench's CPU
            if event.get("type") == "level":
                for level in event["data"]:
                    self._record(self.stored, level, now_ms)
        pubsub.close()
        client.close()

    def _sse_loop(self) -> None:
        url = f"http://127.0.0.1:{self.http_port}/api/stream"
        headers = {"Authorization": f"Bearer {self.token}"}
        while not self._sse_stop.is_set():
            try:
                with httpx.Client(timeout=httpx.Timeout(5.0, read=1.0)) as client, \
                        client.stream("GET", url, headers=headers) as response:
                    self._sse_ready.set()
                    event = None
                    for line in response.iter_lines():
                        if self._sse_stop.is_set():
                            return
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:") and event == "level":
                            self._record(self.sse, jsonfast.loads(line[5:]), time.time() * 1000)
            except httpx.ReadTimeout:
                continue  # no event for a second: check the stop flag, reconnect
            except httpx.HTTPError:
                time.sleep(0.5)

    def stop(self) -> None:
        self.stop_sse()
        self._stop.set()
        self._redis_thread.join(5)


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max in ms and the count; None when there is nothing to summarise."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1),
            "n": len(values)}
