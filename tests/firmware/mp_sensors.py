"""The LM393 and I2S adapters in the device loop, on MicroPython with the test doubles.

Prints one JSON line per sensor: the headers and bodies of the first frames published.
"""

import asyncio
import json
import struct

from fakebroker import FakeBroker

from firmware import app, config, hw


async def run_sensor(sensor, rate):
    broker = FakeBroker()
    cfg = config.merged(config.DEFAULTS, {
        "device": "mp-" + sensor, "broker_host": "b", "sensor": sensor, "rate": rate,
        "frame_ms": 100, "wifi_ssid": "lab"})
    board = hw.Board(cfg)
    board.open_connection = broker.open_connection
    device = app.Device(cfg, board, backlog_path="/backlog-" + sensor + ".bin")

    def frames():
        return [m[1] for m in broker.messages if m[0].endswith("/frame")]

    await device.run(until=lambda: len(frames()) >= 3, check_ms=20)
    out = []
    for f in frames()[:3]:
        head = struct.unpack_from("<2sBBIIqHH", f)
        body = [struct.unpack_from("<hH" if head[2] != 3 else "<HH", f, 24 + 4 * i)
                for i in range(head[7])] if head[2] == 3 else \
            [struct.unpack_from("<h", f, 24 + 2 * i)[0] for i in range(4)]
        out.append({"kind": head[2], "rate": head[6], "count": head[7], "body": body})
    status = [json.loads(m[1]) for m in broker.messages if m[0].endswith("/status")][0]
    print(json.dumps({"sensor": sensor, "frames": out, "status": status}))


async def main():
    await run_sensor("lm393", 1000)
    await run_sensor("i2s", 16000)


asyncio.run(main())
