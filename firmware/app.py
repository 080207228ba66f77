"""The device: sample, frame, buffer, publish, and stay connected (protocol.md v1).

Plain MicroPython/CPython: the board comes in as ``board`` (``firmware.hw.Board`` on an
ESP32, test doubles elsewhere). Four asyncio tasks share one ``Device``:

- ``sample_loop`` captures a frame at a time into one of two preallocated frame buffers
  (the sensor adapters write samples in place, no allocation per sample) and hands each
  finished frame to the backlog;
- ``publish_loop`` sends the backlog oldest first at QoS 1, one frame in flight, and takes
  a frame out only once the broker acknowledged it;
- ``link_loop`` keeps Wi-Fi and MQTT up with exponential backoff, syncs the clock by NTP,
  feeds the watchdog and pings the broker;
- config messages (retained, ``soundmon/v1/{device}/config``) arrive through the MQTT
  reader and take effect at the next frame boundary.

During an outage frames pile up in the backlog (``firmware.backlog``): recent frames in
RAM, older seconds as Leq records in a ring file; on reconnect everything goes out oldest
first with its original timestamps. Frames captured before the first NTP sync carry
``t0_ms = 0``. The retained status reports ``buffered`` and ``dropped``.
"""

import asyncio
import gc
import json
import time

from firmware import config as config_mod
from firmware.backlog import Backlog
from firmware.frame import HEADER_SIZE, FrameWriter
from firmware.mqtt import MQTTClient, MQTTError

BACKLOG_PATH = "/backlog.bin"
OFFLINE = '{"state":"offline"}'
STATUS_EVERY_MS = 60000  # a fresh retained status once a minute (uptime, rssi, buffered)
BACKOFF_MIN_MS = 1000
BACKOFF_MAX_MS = 60000  # reconnect attempts: 1 s, 2 s, 4 s ... at most a minute apart
WIFI_WAIT_MS = 15000
NTP_RETRY_MS = 60000  # while connected but unsynced, try NTP again this often


def topic(cfg, leaf):
    return "%s/v1/%s/%s" % (cfg["prefix"], cfg["device"], leaf)


async def _sleep_ms(ms):
    try:
        await asyncio.sleep_ms(ms)
    except AttributeError:  # CPython
        await asyncio.sleep(ms / 1000)


def _ticks_ms():
    try:
        return time.ticks_ms()
    except AttributeError:  # CPython
        return int(time.monotonic() * 1000)  # type: ignore[attr-defined]


def _ticks_diff(a, b):
    try:
        return time.ticks_diff(a, b)
    except AttributeError:
        return a - b


class Device:
    """One sound sensor: its config, buffers, backlog and MQTT connection."""

    def __init__(self, cfg, board, backlog_path=BACKLOG_PATH):
        self.cfg = config_mod.validate(cfg)
        self.board = board
        self.boot = board.random_u32()
        self.rate = cfg["rate"]  # the rate the sampler achieved on its last frame
        self.started = _ticks_ms()
        self.synced = False
        self.stopping = False
        self.pending_cfg = None
        self.status_due = True
        self.backfilling = False
        self.last_status = self.started
        self.connects = 0
        self.published = 0
        n = config_mod.samples_per_frame(cfg)
        self.writers = [FrameWriter(n), FrameWriter(n)]  # double buffer: capture / backlog
        self.backlog = Backlog(cfg["ram_frames"], HEADER_SIZE + 2 * n, backlog_path,
                               cfg["file_records"])
        self.wake = asyncio.Event()
        self.frame_topic = topic(cfg, "frame")
        self.status_topic = topic(cfg, "status")
        self.config_topic = topic(cfg, "config")
        self.mqtt = MQTTClient(cfg["device"], board.open_connection, cfg["broker_host"],
                               cfg["broker_port"], cfg["username"], cfg["password"],
                               cfg["keepalive_s"], (self.status_topic, OFFLINE, True, 1),
                               self._on_message)

    # -- status and config ---------------------------------------------------------------

    def status(self):
        """The retained status, field for field as protocol.md."""
        return json.dumps({
            "state": "online", "fw": config_mod.FIRMWARE_VERSION, "sensor": self.cfg["sensor"],
            "rate": self.rate, "frame_ms": self.cfg["frame_ms"],
            "uptime_s": _ticks_diff(_ticks_ms(), self.started) // 1000,
            "rssi": self.board.rssi(), "buffered": self.backlog.buffered(),
            "dropped": self.backlog.dropped,
        })

    def _on_message(self, topic_name, payload):
        if topic_name != self.config_topic or not len(payload):
            return
        try:
            new, changed = config_mod.apply_remote(self.pending_cfg or self.cfg, bytes(payload))
        except config_mod.ConfigError as err:
            print("config rejected:", err)
            return
        if changed:
            self.pending_cfg = new

    def _apply_pending(self):
        cfg = self.pending_cfg
        assert cfg is not None
        self.pending_cfg = None
        n = config_mod.samples_per_frame(cfg)
        self.writers = []  # free the old buffers before allocating the new ones
        gc.collect()
        self.writers = [FrameWriter(n), FrameWriter(n)]
        self.backlog.resize(cfg["ram_frames"], HEADER_SIZE + 2 * n)
        self.cfg = cfg
        self.rate = cfg["rate"]
        self.status_due = True

    # -- tasks -----------------------------------------------------------------------------

    async def sample_loop(self):
        sampler = self.board.make_sampler(self.cfg)
        which = 0
        try:
            while not self.stopping:
                if self.pending_cfg is not None:
                    sampler.close()
                    self._apply_pending()
                    sampler = self.board.make_sampler(self.cfg)
                cfg = self.cfg
                n = config_mod.samples_per_frame(cfg)
                writer = self.writers[which]
                which ^= 1
                t0_ms = self.board.unix_ms()  # 0 until the first NTP sync
                if sampler.kind == 1:
                    self.rate = await sampler.capture(writer.body(n), n, cfg["rate"])
                    frame = writer.pcm_in_place(0, self.boot, t0_ms, self.rate, n)
                else:
                    duty_bp, edges = await sampler.capture(None, n, cfg["rate"])
                    frame = writer.threshold(0, self.boot, t0_ms, cfg["frame_ms"],
                                             [(duty_bp, edges)])
                self.backlog.keep(frame)
                self.wake.set()
                self.board.feed()
                await _sleep_ms(0)  # whatever the sampler did, let the publisher run now
        finally:
            sampler.close()

    async def publish_loop(self):
        while not self.stopping:
            if not self.mqtt.connected or (self.backlog.empty() and not self.status_due):
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), 1)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                if self.status_due:
                    self.status_due = False
                    self.last_status = _ticks_ms()
                    # a status that reports a backlog is followed by one once it is sent
                    self.backfilling = self.backlog.buffered() > 1
                    await self.mqtt.publish(self.status_topic, self.status(), retain=True)
                    continue
                payload = self.backlog.peek(self.boot)
                await self.mqtt.publish(self.frame_topic, payload)
            except (MQTTError, OSError) as err:
                print("publish failed:", err)  # kept: sent again, same seq, after reconnect
                self.mqtt.close()
                continue
            self.backlog.pop()
            self.published += 1
            if self.backfilling and self.backlog.buffered() <= 1:  # only the live frame left
                self.backfilling = False
                self.status_due = True  # tell the cloud the backlog is sent (buffered 0)
            if _ticks_diff(_ticks_ms(), self.last_status) > STATUS_EVERY_MS:
                self.status_due = True
            gc.collect()

    async def link_loop(self):
        backoff = BACKOFF_MIN_MS
        idle = 0
        while not self.stopping:
            self.board.feed()
            if self.mqtt.connected:
                backoff = BACKOFF_MIN_MS
                step = min(1000, NTP_RETRY_MS)
                await _sleep_ms(step)
                idle += step
                if not self.synced and idle % NTP_RETRY_MS < step:
                    self.synced = self.board.ntp_sync(self.cfg["ntp_host"])
                if idle >= self.cfg["keepalive_s"] * 500:
                    idle = 0
                    try:
                        await self.mqtt.ping()
                    except OSError:
                        self.mqtt.close()
                continue
            self.board.light(False)
            if not self.board.wifi_up():
                self.board.wifi_connect()
                waited = 0
                while not self.board.wifi_up() and waited < WIFI_WAIT_MS:
                    await _sleep_ms(200)
                    waited += 200
                    self.board.feed()
                if not self.board.wifi_up():
                    await _sleep_ms(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_MS)
                    continue
            if not self.synced:
                self.synced = self.board.ntp_sync(self.cfg["ntp_host"])
            try:
                await self.mqtt.connect()
                await self.mqtt.subscribe(self.config_topic)
            except (MQTTError, OSError) as err:
                print("MQTT connect failed:", err)
                self.mqtt.close()
                await _sleep_ms(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_MS)
                continue
            self.connects += 1
            self.status_due = True
            self.board.light(True)
            self.wake.set()

    async def run(self, until=None, check_ms=200):
        """Run every task until ``until()`` is true (never, on a board)."""
        self.board.start_watchdog()
        tasks = [asyncio.create_task(self.sample_loop()),
                 asyncio.create_task(self.publish_loop()),
                 asyncio.create_task(self.link_loop())]
        try:
            while until is None or not until():
                await _sleep_ms(check_ms)
                for t in tasks:
                    if t.done():  # a task died: let main() reboot rather than limp on
                        await t  # raises what ended it
                        raise RuntimeError("a device task ended")
        finally:
            self.stopping = True
            for t in tasks:
                t.cancel()
            await self.mqtt.disconnect()
            self.backlog.close()


def main():
    """Entry point of ``main.py`` on the board: load the config and run forever."""
    from firmware import hw

    try:
        cfg = config_mod.load()
    except config_mod.ConfigError as err:
        print("soundmon:", err)
        return
    print("soundmon", config_mod.FIRMWARE_VERSION, config_mod.public(cfg))
    board = hw.Board(cfg)
    try:
        asyncio.run(Device(cfg, board).run())
    except Exception as err:  # noqa: BLE001 - never stay down: log, wait, reboot
        print("soundmon: fatal", repr(err))
        time.sleep(10)
        board.reset()
