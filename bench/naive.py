"""The naive baseline: the textbook design of one Celery task per frame, samples as a JSON list.

It does the same work as soundmon with the same parts and the same code for the maths, so the
benchmark compares the architecture only:

* ``python -m bench.naive gateway``: a paho subscriber (QoS 1, acknowledged when the
  callback returns) that decodes each frame and sends one Celery task per frame with the
  samples as a list of ints, JSON-serialised, to the queue ``naive`` on the same Redis.
* ``python -m celery -A bench.naive worker -Q naive -c 2``: per task, the real DSP
  (``workers.preprocess.process_batch`` on one frame), one store insert, the device's
  last-seen update, a live event, and one ``soundmon.analyze`` task for that frame, which the
  real ``soundmon worker analyze`` runs (as in soundmon, one analyze worker).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

from soundmon import events, tasknames
from soundmon.celeryconf import make_celery
from soundmon.protocol import KIND_PCM, Frame, FrameError, decode_frame, parse_topic
from soundmon.settings import get_settings

QUEUE = "naive"
TASK = "bench.naive.preprocess_one"

settings = get_settings()
app = make_celery(settings, "naive")
app.conf.update(task_serializer="json", task_routes={TASK: {"queue": QUEUE}, **tasknames.ROUTES})

log = logging.getLogger("soundmon.bench.naive")


@app.task(name=TASK, acks_late=True)
def preprocess_one(device: str, recv_ms: int, seq: int, boot: int, t0_ms: int, rate: int,
                   samples: list[int]) -> int:
    """One frame: levels with the real DSP, store, live event, one analyze task."""
    from workers import outputs
    from workers.app import _analysis_input, _live
    from workers.preprocess import process_batch

    body = np.asarray(samples, dtype="<i2").tobytes()
    frame = Frame(KIND_PCM, seq, boot, t0_ms, rate, len(samples), body)
    store = outputs.store()
    rows, _ = process_batch([(device, recv_ms, frame)], store.calibrations({device}))
    new = store.insert_levels(rows)
    store.touch_devices(rows)
    events.publish(outputs.redis_client(), "level", [_live(r) for r in rows])
    app.send_task(tasknames.ANALYZE, args=[[_analysis_input(r) for r in rows]],
                  serializer="json")
    return new


def gateway() -> None:
    """MQTT in, one JSON task per frame out (blocking send in the MQTT callback)."""
    s = settings
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="naive-gateway")
    if s.mqtt_username:
        client.username_pw_set(s.mqtt_username, s.mqtt_password)

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe(f"{s.mqtt_prefix}/v1/+/frame", qos=1)

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            device, _ = parse_topic(msg.topic, s.mqtt_prefix)
            f = decode_frame(msg.payload)
        except FrameError as exc:
            log.warning("rejected %s: %s", msg.topic, exc)
            return
        samples = np.frombuffer(f.body, dtype="<i2").tolist()
        app.send_task(TASK, args=[device, int(time.time() * 1000), f.seq, f.boot, f.t0_ms,
                                  f.rate, samples])

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(s.mqtt_host, s.mqtt_port, keepalive=30)
    try:
        client.loop_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if sys.argv[1:] != ["gateway"]:
        sys.exit("usage: python -m bench.naive gateway")
    gateway()
