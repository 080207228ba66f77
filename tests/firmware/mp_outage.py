"""The firmware's main loop through a Wi-Fi and broker outage, on MicroPython.

Run by tests/unit/test_firmware_micropython.py under the real MicroPython (npm WebAssembly
build) with the test doubles for ``machine``, ``network``, ``ntptime`` and the socket
(``fakebroker``). The real ``firmware.hw`` adapters and ``firmware.app.Device`` run; the
ADC double gives a tone, the sampler paces it with ``ticks_us`` as on a board.
Prints one JSON line of results for the pytest side to check; asserts the rest here.
"""

import asyncio
import json
import struct
import time

import machine
import network
import ntptime
from fakebroker import FakeBroker

from firmware import app, config, hw

broker = FakeBroker()
cfg = config.merged(config.DEFAULTS, {
    "device": "mp-dev", "broker_host": "broker.test", "wifi_ssid": "lab", "wifi_password": "pw",
    "rate": 8000, "frame_ms": 100, "ram_frames": 4, "file_records": 2,
})
board = hw.Board(cfg)
board.open_connection = broker.open_connection  # the socket double
device = app.Device(cfg, board, backlog_path="/backlog.bin")
app.NTP_RETRY_MS = 300

made = {"kept": 0, "spilled": 0, "records": 0}
keep, add_frame, level_record = device.backlog.keep, device.backlog.levels.add_frame, \
    device.backlog._level_record


def counting_keep(frame):
    made["kept"] += 1
    keep(frame)


def counting_add_frame(frame):
    made["spilled"] += 1
    add_frame(frame)


def counting_record(*record):
    made["records"] += 1
    level_record(*record)


device.backlog.keep = counting_keep
device.backlog.levels.add_frame = counting_add_frame
device.backlog.levels.emit = counting_record


def frames():
    return [m[1] for m in broker.messages if m[0].endswith("/frame")]


def statuses():
    return [json.loads(m[1]) for m in broker.messages if m[0].endswith("/status")]


async def wait(cond, what, timeout_ms=20000):
    start = time.ticks_ms()
    while not cond():
        if task is not None and task.done():
            await task  # raises what killed the device
            raise AssertionError("the device stopped")
        if time.ticks_diff(time.ticks_ms(), start) > timeout_ms:
            raise AssertionError("timed out waiting for " + what + ": " + repr(
                (device.cfg["frame_ms"], device.backlog.buffered(), device.backlog.ram.count, device.backlog._file_count(), device.backlog._peeked, device.backlog.levels.empty(), device.mqtt.connected,
                 statuses()[-3:], len(frames()), made, broker.connects, network.connects)))
        await asyncio.sleep_ms(20)


async def scenario():
    await wait(lambda: len(frames()) >= 3, "3 frames before the clock is set")
    assert all(struct.unpack_from("<q", f, 12)[0] == 0 for f in frames()), "unsynced t0 != 0"
    ntptime.answers = True  # NTP starts answering: the device retries it while connected
    await wait(lambda: struct.unpack_from("<q", frames()[-1], 12)[0] > 0, "a synced frame")
    network.up = False
    broker.stop()
    assert statuses()[-1] == {"state": "offline"}, "no last will"
    before = len(frames())
    await wait(lambda: made["spilled"] >= 35, "35 frames spilled to levels")
    assert len(frames()) == before, "published during the outage"
    broker.retained["soundmon/v1/mp-dev/config"] = b'{"frame_ms": 200}'
    network.up = True
    broker.start()
    # after the backlog, at most the frame being captured is buffered
    await wait(lambda: device.cfg["frame_ms"] == 200 and device.backlog.buffered() <= 1
               and statuses()[-1].get("buffered", 9) <= 1 and statuses()[-1]["frame_ms"] == 200,
               "the backlog sent and the new config live")
    await wait(lambda: sum(1 for f in frames() if f[3] == 1 and
                           struct.unpack_from("<H", f, 22)[0] == 1600) >= 2, "200 ms frames")


async def main():
    global task
    task = asyncio.create_task(device.run(until=lambda: done))
    try:
        await scenario()
    finally:
        global done
        done = True
        await asyncio.sleep_ms(300)
    heads = [struct.unpack_from("<2sBBIIqHH", f) for f in frames()]
    recs = sum(h[7] for h in heads if h[2] == 2)
    pcm = sum(1 for h in heads if h[2] == 1)
    print(json.dumps({
        "made": made, "pcm": pcm, "records_sent": recs, "statuses": statuses(),
        "seqs": [h[3] for h in heads], "t0": [h[5] for h in heads], "kinds": [h[2] for h in heads],
        "boots": list(set(h[4] for h in heads)), "wdt_feeds": machine.WDT.feeds,
        "connects": broker.connects, "wifi_connects": network.connects,
        "rates": list(set(h[6] for h in heads if h[2] == 1)), "ntp_calls": ntptime.calls,
    }))
    task.cancel()


done = False
task = None
asyncio.run(main())
