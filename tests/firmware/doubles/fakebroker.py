"""An in-memory MQTT 3.1.1 broker for the firmware's tests: the socket double.

``FakeBroker.open_connection`` stands in for ``asyncio.open_connection``: it returns a
reader/writer pair wired to this broker, which parses what the device writes and answers
CONNACK, PUBACK, SUBACK (plus the retained message) and PINGRESP. ``stop()`` drops every
connection (the will is published, as a broker does on an unclean end) and refuses new
ones until ``start()``. Runs on MicroPython and CPython.
"""

import asyncio
import struct


class Reader:
    def __init__(self):
        self.buf = b""
        self.closed = False
        self.event = asyncio.Event()

    def feed(self, data):
        self.buf += data
        self.event.set()

    def close(self):
        self.closed = True
        self.event.set()

    async def readexactly(self, n):
        while len(self.buf) < n:
            if self.closed:
                raise EOFError("connection closed")
            self.event.clear()
            await self.event.wait()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


class Writer:
    def __init__(self, conn):
        self.conn = conn

    def write(self, data):
        if self.conn.closed:
            raise OSError(104)  # ECONNRESET
        self.conn.inbox += bytes(data)
        self.conn.parse()

    async def drain(self):
        if self.conn.closed:
            raise OSError(104)

    def close(self):
        self.conn.drop(clean=True)


def _string(b, pos):
    n = struct.unpack_from("!H", b, pos)[0]
    return bytes(b[pos + 2:pos + 2 + n]), pos + 2 + n


class Connection:
    def __init__(self, broker):
        self.broker = broker
        self.reader = Reader()
        self.inbox = b""
        self.closed = False
        self.will = None
        self.client_id = None
        self.username = None

    def drop(self, clean):
        if self.closed:
            return
        self.closed = True
        self.reader.close()
        if not clean and self.will is not None:
            self.broker.deliver(self.will[0], self.will[1], self.will[2])
        if self in self.broker.connections:
            self.broker.connections.remove(self)

    def parse(self):
        while True:
            if len(self.inbox) < 2:
                return
            length, mult, pos = 0, 1, 1
            while True:
                if pos >= len(self.inbox):
                    return
                byte = self.inbox[pos]
                length += (byte & 0x7F) * mult
                mult *= 128
                pos += 1
                if not byte & 0x80:
                    break
            if len(self.inbox) < pos + length:
                return
            head, body = self.inbox[0], self.inbox[pos:pos + length]
            self.inbox = self.inbox[pos + length:]
            self.packet(head, body)

    def packet(self, head, body):
        kind = head & 0xF0
        if kind == 0x10:  # CONNECT
            _, pos = _string(body, 0)
            flags = body[pos + 1]
            pos += 4
            self.client_id, pos = _string(body, pos)
            if flags & 0x04:
                topic, pos = _string(body, pos)
                message, pos = _string(body, pos)
                self.will = (topic.decode(), message, bool(flags & 0x20))
            if flags & 0x80:
                self.username, pos = _string(body, pos)
            self.broker.connects += 1
            self.reader.feed(bytes([0x20, 2, 0, 0]))
        elif kind == 0x30:  # PUBLISH
            topic, pos = _string(body, 0)
            qos = (head >> 1) & 3
            if qos:
                pid = bytes(body[pos:pos + 2])
                pos += 2
            if self.broker.silent:
                return  # a broker that swallows messages: no PUBACK ever comes
            self.broker.deliver(topic.decode(), bytes(body[pos:]), bool(head & 1))
            if qos:
                self.reader.feed(bytes([0x40, 2]) + pid)
        elif kind == 0x80:  # SUBSCRIBE
            pid = bytes(body[:2])
            topic, pos = _string(body, 2)
            self.reader.feed(bytes([0x90, 3]) + pid + bytes([1]))
            retained = self.broker.retained.get(topic.decode())
            if retained:
                t = topic
                payload = struct.pack("!H", len(t)) + t + b"\x00\x01" + retained
                self.reader.feed(bytes([0x33]) + _remaining(len(payload)) + payload)
        elif kind == 0x40:  # PUBACK from the device (for the retained config we sent)
            pass
        elif kind == 0xC0:  # PINGREQ
            self.reader.feed(bytes([0xD0, 0]))
        elif kind == 0xE0:  # DISCONNECT: a clean end, no will
            self.will = None
            self.drop(clean=True)


def _remaining(n):
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        out += bytes([byte | 0x80 if n else byte])
        if not n:
            return out


class FakeBroker:
    def __init__(self):
        self.up = True
        self.silent = False
        self.connections = []
        self.messages = []  # (topic, payload, retain) in arrival order
        self.retained = {}
        self.connects = 0

    def deliver(self, topic, payload, retain):
        self.messages.append((topic, payload, retain))
        if retain:
            self.retained[topic] = payload

    async def open_connection(self, host, port):
        await asyncio.sleep_ms(1) if hasattr(asyncio, "sleep_ms") else await asyncio.sleep(0.001)
        if not self.up:
            raise OSError(111)  # ECONNREFUSED
        conn = Connection(self)
        self.connections.append(conn)
        return conn.reader, Writer(conn)

    def stop(self):
        """The broker goes away: connections drop uncleanly, new ones are refused."""
        self.up = False
        for conn in list(self.connections):
            conn.drop(clean=False)

    def start(self):
        self.up = True
