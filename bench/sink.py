"""The transport ceiling's consumer: one paho subscriber at QoS 1 that only counts.

It subscribes like the gateway (MQTT v5, ``soundmon/v1/+/frame`` at QoS 1, the same receive
maximum) but does nothing with a frame beyond checking its header magic, so paho publishers
-> mosquitto -> this process is the most frames/s the transport carries on this machine.
Prints one JSON line once ``--expect`` frames arrived (or at ``--timeout``): ``received``,
``first``, ``last``, and ``t10``/``t90`` when 10 % and 90 % had arrived (Unix s).

    python -m bench.sink --port 1883 --expect 40000
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--receive-maximum", type=int, default=1000)
    args = ap.parse_args(argv)
    state = {"received": 0, "bad": 0, "first": 0.0, "last": 0.0, "t10": 0.0, "t90": 0.0}
    n10, n90 = max(1, args.expect // 10), max(1, args.expect * 9 // 10)
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        state["first"] = state["first"] or now
        state["last"] = now
        state["received"] += 1
        if state["received"] == n10:
            state["t10"] = now
        if state["received"] == n90:
            state["t90"] = now
        if msg.payload[:2] != b"SM":
            state["bad"] += 1
        if state["received"] >= args.expect:
            done.set()

    def on_connect(client: mqtt.Client, *_: object) -> None:
        client.subscribe([("soundmon/v1/+/frame", SubscribeOptions(qos=1))])

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sink",
                         protocol=mqtt.MQTTv5)
    if args.username:
        client.username_pw_set(args.username, args.password)
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = args.receive_maximum
    client.connect(args.host, args.port, keepalive=30, properties=props)
    client.loop_start()
    if not subscribed.wait(10):
        print(json.dumps({"error": "not subscribed"}), flush=True)
        return 1
    print(json.dumps({"subscribed": True}), flush=True)
    cpu0 = time.process_time()
    done.wait(args.timeout)
    state["cpu_s"] = round(time.process_time() - cpu0, 3)
    client.disconnect()
    client.loop_stop()
    print(json.dumps(state), flush=True)
    return 0 if state["received"] >= args.expect else 1


if __name__ == "__main__":
    sys.exit(main())
