"""Test double of MicroPython's ``machine`` for the ESP32 port: only what the firmware calls.

A 1 kHz tone on the ADC around a bias that is not mid-code (as a real MAX4466 reads).
"""

import io
import math
import struct
import time

resets = 0


class Pin:
    IN = 1
    OUT = 3
    PULL_UP = 2
    IRQ_FALLING = 2
    IRQ_RISING = 1

    def __init__(self, pin_id, mode=-1, pull=-1):
        self.id = pin_id
        self._value = 1
        self.handler = None
        self.reads = 0

    def value(self, v=None):
        """An input reads low (active, for the LM393) one read in four, with a falling edge
        (the IRQ fires) each time it goes low."""
        if v is not None:
            self._value = v
            return None
        self.reads += 1
        low = self.reads % 4 == 0
        if low and self.handler is not None:
            self.handler(self)
        return 0 if low else 1

    def irq(self, handler=None, trigger=0):
        self.handler = handler


class ADC:
    ATTN_0DB = 0
    ATTN_11DB = 3

    def __init__(self, pin, atten=0):
        self.pin = pin
        self.atten = atten
        self.n = 0

    def read_u16(self):
        # 12-bit code, left-aligned in 16 bits as the ESP32 port returns it
        code = 1900 + int(400 * math.sin(2 * math.pi * self.n / 8))
        self.n += 1
        return code << 4


class I2S(io.IOBase):
    """An INMP441 on the bus: 32-bit slots holding a 24-bit ramp, pollable by asyncio."""

    RX = 0
    MONO = 0

    def __init__(self, i2s_id, **kwargs):
        self.kwargs = kwargs
        self.n = 0

    def readinto(self, buf):
        for o in range(0, len(buf) - 3, 4):
            sample24 = (self.n % 512 - 256) * 256  # int16 -256..255 after >> 8
            struct.pack_into("<i", buf, o, sample24 << 8)
            self.n += 1
        return len(buf) // 4 * 4

    def ioctl(self, request, arg):
        return arg & 1 if request == 3 else 0  # MP_STREAM_POLL: always readable

    def deinit(self):
        pass


class WDT:
    feeds = 0

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout

    def feed(self):
        WDT.feeds += 1


def unique_id():
    return b"\x24\x0a\xc4\x00\x00\x01"


def reset():
    global resets
    resets += 1


def ticks():
    return time.ticks_ms()
