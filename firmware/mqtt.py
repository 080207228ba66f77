"""A small asyncio MQTT 3.1.1 client for the device: QoS 0/1 publish, subscribe, last will.

Runs on MicroPython (asyncio streams) and CPython. Why not ``umqtt.simple``: its QoS 1
``publish`` blocks on the socket until the PUBACK, with no timeout, which would stop the
sampler; here every wait is an ``await`` with a timeout (``response_ms``), so sampling goes
on while a publish waits, and a dead link is noticed (see shared/reliability.md 2.5).

One QoS 1 message is in flight at a time: the caller (firmware.app) keeps the payload in
its backlog until ``publish`` returns, and sends it again after a reconnect if it raised,
so a frame is never lost to a dropped connection (the cloud drops the duplicate by
(device, boot, seq)). ``open_connection(host, port)`` is ``asyncio.open_connection`` on a
board and a test double in tests.

Errors: ``MQTTError`` (refused, timed out, connection lost); ``OSError`` from the network.
"""

import asyncio
import struct

CONNECT = 0x10
CONNACK = 0x20
PUBLISH = 0x30
PUBACK = 0x40
SUBSCRIBE = 0x82
SUBACK = 0x90
PINGREQ = 0xC0
PINGRESP = 0xD0
DISCONNECT = 0xE0


class MQTTError(Exception):
    """The broker refused us, did not answer in time, or the connection is gone."""


async def _wait(awaitable, ms):
    try:
        return await asyncio.wait_for_ms(awaitable, ms)
    except AttributeError:  # CPython has no wait_for_ms
        return await asyncio.wait_for(awaitable, ms / 1000)


def _remaining_length(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return out


def _string(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!H", len(s)) + s


class MQTTClient:
    """An MQTT connection; ``on_message(topic, payload)`` gets what the broker sends us."""

    def __init__(self, client_id, open_connection, host, port=1883, user="", password="",
                 keepalive_s=30, will=None, on_message=None, response_ms=10000):
        self.client_id = client_id
        self.open_connection = open_connection
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.keepalive_s = keepalive_s
        self.will = will  # (topic, payload, retain, qos) or None
        self.on_message = on_message
        self.response_ms = response_ms
        self.reader = None
        self.writer = None
        self.connected = False
        self.pid = 0
        self.acked = -1
        self.event = asyncio.Event()
        self.reader_task = None

    async def connect(self):
        """Open the TCP connection and do the CONNECT/CONNACK handshake (clean session)."""
        self.close()
        self.reader, self.writer = await _wait(self.open_connection(self.host, self.port),
                                               self.response_ms)
        flags = 0x02  # clean session: the device keeps its own backlog, not the broker
        payload = _string(self.client_id)
        if self.will:
            topic, message, retain, qos = self.will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += _string(topic) + _string(message)
        if self.user:
            flags |= 0x80
            payload += _string(self.user)
            if self.password:
                flags |= 0x40
                payload += _string(self.password)
        var = _string("MQTT") + struct.pack("!BBH", 4, flags, self.keepalive_s)
        body = var + payload
        await self._send(bytes([CONNECT]) + _remaining_length(len(body)) + body)
        ack = await _wait(self.reader.readexactly(4), self.response_ms)  # type: ignore[union-attr]
        if ack[0] != CONNACK or ack[3] != 0:
            self.close()
            raise MQTTError("connection refused, code %d" % ack[3])
        self.connected = True
        self.reader_task = asyncio.create_task(self._read_loop())

    async def _send(self, data, payload=None):
        assert self.writer is not None
        self.writer.write(data)
        if payload is not None:
            self.writer.write(payload)
        await self.writer.drain()

    async def _read_loop(self):
        assert self.reader is not None
        try:
            while True:
                head = (await self.reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    byte = (await self.reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await self.reader.readexactly(length) if length else b""
                kind = head & 0xF0
                if kind == PUBACK:
                    self.acked = struct.unpack("!H", body)[0]
                    self.event.set()
                elif kind == PUBLISH:
                    await self._received(head, body)
        except Exception:  # EOF, reset, or a closed stream: the connection is over
            pass
        self.connected = False
        self.event.set()

    async def _received(self, head, body):
        n = struct.unpack_from("!H", body)[0]
        topic = bytes(body[2:2 + n]).decode()
        pos = 2 + n
        if head & 0x06:  # QoS 1 (or 2, which we never subscribe with)
            pid = body[pos:pos + 2]
            pos += 2
            await self._send(bytes([PUBACK, 2]) + bytes(pid))
        if self.on_message:
            self.on_message(topic, body[pos:])

    def _next_pid(self):
        self.pid = self.pid + 1 if self.pid < 65535 else 1
        return self.pid

    async def publish(self, topic, payload, retain=False, qos=1):
        """Send a message; with QoS 1 return only once the broker acknowledged it."""
        if not self.connected:
            raise MQTTError("not connected")
        if isinstance(payload, str):
            payload = payload.encode()
        topic_b = _string(topic)
        pid = self._next_pid() if qos else 0
        head_len = len(topic_b) + (2 if qos else 0) + len(payload)
        head = bytes([PUBLISH | (qos << 1) | (1 if retain else 0)]) + _remaining_length(head_len)
        head += topic_b + (struct.pack("!H", pid) if qos else b"")
        self.event.clear()
        await self._send(head, payload)
        if not qos:
            return
        while self.acked != pid:
            if not self.connected:
                raise MQTTError("connection lost before the PUBACK")
            try:
                await _wait(self.event.wait(), self.response_ms)
            except asyncio.TimeoutError:
                self.close()
                raise MQTTError("no PUBACK within %d ms" % self.response_ms)
            self.event.clear()

    async def subscribe(self, topic, qos=1):
        """Ask for ``topic``; retained messages arrive through ``on_message``."""
        body = struct.pack("!H", self._next_pid()) + _string(topic) + bytes([qos])
        await self._send(bytes([SUBSCRIBE]) + _remaining_length(len(body)) + body)

    async def ping(self):
        await self._send(bytes([PINGREQ, 0]))

    async def disconnect(self):
        """A clean goodbye: the broker discards the last will."""
        if self.connected:
            try:
                await self._send(bytes([DISCONNECT, 0]))
            except OSError:
                pass
        self.close()

    def close(self):
        self.connected = False
        if self.reader_task is not None:
            self.reader_task.cancel()
            self.reader_task = None
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:
                pass
            self.writer = None
        self.event.set()
