"""The only module that touches ``machine``, ``network`` and the board's clock.

Adapters for the three sensors (each fills a frame body in place, allocating nothing per
sample), Wi-Fi with backoff, NTP, the watchdog and the status LED. Everything else in the
firmware is plain MicroPython/CPython and gets these through ``firmware.app.Device``.
"""

import asyncio
import time

import machine
import network

from firmware import pins

CHUNK = 256  # samples between yields to the publisher: 32 ms at 8 kHz


_synced = False  # the RTC was set by NTP since boot: until then frames carry t0_ms = 0
EPOCH_2000_MS = 946684800000  # ports whose time() counts from 2000-01-01


def unix_ms():
    """Unix time in ms, or 0 before the first NTP sync of this boot."""
    if not _synced:
        return 0
    t = time.time_ns() // 1000000
    if time.gmtime(0)[0] == 2000:
        t += EPOCH_2000_MS
    return t


def ntp_sync(host):
    """Set the RTC from NTP; True on success."""
    global _synced
    try:
        import ntptime  # frozen into the ESP32 firmware (micropython-lib)

        ntptime.host = host
        ntptime.settime()
    except Exception:  # noqa: BLE001 - no answer, DNS failure: keep going unsynced
        return False
    _synced = True
    return True


def random_u32():
    """A new boot id: the ESP32's random module is seeded from its hardware RNG."""
    import random

    return random.getrandbits(32)


class AdcSampler:
    """MAX4466 on ADC1, 11 dB attenuation (150-2450 mV linear), paced by ``ticks_us``.

    MicroPython has no DMA path for the ADC, so each sample is one ``read_u16`` in a busy
    loop. The loop yields to the publisher every CHUNK samples and then re-paces from the
    current time, so the samples of a frame are not all evenly spaced. ``capture`` returns
    the rate it achieved (samples over elapsed time), which goes into the frame header.
    """

    kind = 1

    def __init__(self, cfg):
        self.adc = machine.ADC(machine.Pin(pins.MAX4466_OUT), atten=machine.ADC.ATTN_11DB)

    async def capture(self, body, count, rate):
        read = self.adc.read_u16
        period = 1000000 // rate
        start = time.ticks_us()
        due = start
        i = 0
        while i < count:
            end = i + CHUNK if i + CHUNK < count else count
            while i < end:
                while time.ticks_diff(time.ticks_us(), due) < 0:
                    pass
                v = (read() & 0xFFF0) - 32768  # 12-bit code -> (code - 2048) * 16
                body[2 * i] = v & 0xFF
                body[2 * i + 1] = (v >> 8) & 0xFF
                due = time.ticks_add(due, period)
                i += 1
            await asyncio.sleep_ms(0)
            due = time.ticks_us()
        elapsed = time.ticks_diff(time.ticks_us(), start)
        return (count * 1000000 + elapsed // 2) // elapsed if elapsed > 0 else rate

    def close(self):
        pass


class I2SSampler:
    """INMP441 / ICS-43434 through ``machine.I2S``: 24-bit samples in 32-bit slots."""

    kind = 1

    def __init__(self, cfg):
        self.shift = cfg["i2s_shift"] - 8  # applied to the slot's top 24 bits
        self.rate = cfg["rate"]
        self.slots = bytearray(4 * 512)  # 512 samples per read
        self.i2s = machine.I2S(pins.I2S_ID, sck=machine.Pin(pins.I2S_SCK),
                               ws=machine.Pin(pins.I2S_WS), sd=machine.Pin(pins.I2S_SD),
                               mode=machine.I2S.RX, bits=32, format=machine.I2S.MONO,
                               rate=self.rate, ibuf=16384)
        # asyncio reads the DMA buffer without blocking the publisher (the ESP32 port);
        # an asyncio without streams gets blocking reads of 512 samples (32 ms at 16 kHz)
        reader = getattr(asyncio, "StreamReader", None)
        self.stream = reader(self.i2s) if reader is not None else None

    async def capture(self, body, count, rate):
        slots = self.slots
        shift = self.shift
        i = 0
        while i < count:
            want = count - i if count - i < 512 else 512
            if self.stream is not None:
                n = await self.stream.readinto(memoryview(slots)[:4 * want]) // 4
            else:
                n = self.i2s.readinto(memoryview(slots)[:4 * want]) // 4
                await asyncio.sleep_ms(0)
            for j in range(n):
                o = 4 * j
                # bytes 1..3 of the little-endian slot: its top 24 bits, a signed sample
                v = slots[o + 1] | (slots[o + 2] << 8) | (slots[o + 3] << 16)
                if v & 0x800000:
                    v -= 0x1000000
                v >>= shift
                v = 32767 if v > 32767 else (-32768 if v < -32768 else v)
                body[2 * (i + j)] = v & 0xFF
                body[2 * (i + j) + 1] = (v >> 8) & 0xFF
            i += n
        return self.rate  # the I2S clock is crystal-derived: the configured rate is achieved

    def close(self):
        self.i2s.deinit()


class ThresholdSampler:
    """LM393 comparator output (active low): rising edges by IRQ, duty by polling at ``rate``.

    The output says "louder than the potentiometer's threshold" and nothing else: it never
    becomes a dB value (protocol kind 3).
    """

    kind = 3

    def __init__(self, cfg):
        self.pin = machine.Pin(pins.LM393_DO, machine.Pin.IN, machine.Pin.PULL_UP)
        self.edges = 0
        self.pin.irq(trigger=machine.Pin.IRQ_FALLING, handler=self._edge)

    def _edge(self, pin):
        self.edges += 1

    async def capture(self, body, count, rate):
        """Poll ``count`` times at ``rate`` Hz; return ``(duty_bp, edges)``."""
        active = 0
        period = 1000000 // rate
        value = self.pin.value
        start_edges = self.edges
        due = time.ticks_us()
        for i in range(count):
            while time.ticks_diff(time.ticks_us(), due) < 0:
                if time.ticks_diff(due, time.ticks_us()) > 2000:
                    await asyncio.sleep_ms(1)  # slow polling: give the publisher the gaps
            if not value():
                active += 1
            due = time.ticks_add(due, period)
            if i % CHUNK == CHUNK - 1:
                await asyncio.sleep_ms(0)
        await asyncio.sleep_ms(0)
        edges = self.edges - start_edges
        return active * 10000 // count, edges if edges < 65535 else 65535

    def close(self):
        self.pin.irq(handler=None)


SAMPLERS = {"max4466": AdcSampler, "i2s": I2SSampler, "lm393": ThresholdSampler}


def make_sampler(cfg):
    return SAMPLERS[cfg["sensor"]](cfg)


class Board:
    """Wi-Fi, clock, watchdog and LED of a real ESP32 (or of the test doubles)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.wlan = network.WLAN(network.STA_IF)
        self.wdt = None
        try:
            self.led = machine.Pin(pins.STATUS_LED, machine.Pin.OUT)
        except Exception:  # noqa: BLE001 - a board without the LED pin
            self.led = None  # type: ignore[assignment]

    def start_watchdog(self):
        self.wdt = machine.WDT(timeout=self.cfg["wdt_ms"])

    def feed(self):
        if self.wdt is not None:
            self.wdt.feed()

    def wifi_up(self):
        return self.wlan.isconnected()

    def wifi_connect(self):
        self.wlan.active(True)
        if not self.wlan.isconnected():
            self.wlan.connect(self.cfg["wifi_ssid"], self.cfg["wifi_password"])

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except Exception:  # noqa: BLE001
            return 0

    def light(self, on):
        if self.led is not None:
            self.led.value(1 if on else 0)

    def reset(self):
        machine.reset()

    async def open_connection(self, host, port):
        return await asyncio.open_connection(host, port)

    unix_ms = staticmethod(unix_ms)
    ntp_sync = staticmethod(ntp_sync)
    random_u32 = staticmethod(random_u32)
    make_sampler = staticmethod(make_sampler)
