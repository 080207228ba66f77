"""A real InfluxDB 1.6 (Debian's ``influxdb``) for the tests, and the thin v2-write translation.

Debian ships InfluxDB 1.6: it speaks line protocol on ``/write?db=`` and InfluxQL on ``/query``,
but not ``/api/v2/write``, which ``influxdb-client`` (the store's writer) uses. ``V2WriteProxy``
is the only thing between the store and the server: it rewrites
``POST /api/v2/write?org=O&bucket=B&precision=P`` to ``POST /write?db=B&precision=P`` (a
``db/rp`` bucket to ``db=db&rp=rp``, as InfluxDB 2's DBRP mapping does) and forwards every
other request (``/query``, ``/ping``) untouched. Bodies, status codes and errors pass through.
"""

from __future__ import annotations

import http.client
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from soundmon.services import Process, free_port, wait_port

INFLUXD_CANDIDATES = ("influxd", "/usr/bin/influxd")
#: v2 precision names -> InfluxDB 1.x names
PRECISION = {"ns": "ns", "us": "u", "ms": "ms", "s": "s"}


def find_influxd() -> str | None:
    for c in INFLUXD_CANDIDATES:
        found = shutil.which(c)
        if found:
            return found
    return None


def influxd_config(root: Path, http_port: int, rpc_port: int) -> Path:
    """A config keeping everything under ``root`` and on loopback ports, quiet, no telemetry."""
    conf = root / "influxdb.conf"
    conf.write_text(f"""\
reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root}/meta"
  logging-enabled = false
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  pprof-enabled = false
[logging]
  level = "warn"
""")
    return conf


class InfluxD:
    """``influxd run`` on free loopback ports with a data directory under ``root``."""

    def __init__(self, root: Path) -> None:
        binary = find_influxd()
        if binary is None:
            raise RuntimeError("influxd is not installed: run `make install` (Debian package influxdb)")
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = influxd_config(root, self.port, free_port())
        self.proc = Process("influxd", [binary, "run", "-config", str(conf)], dict(os.environ),
                            root / "influxd.log")

    def start(self) -> InfluxD:
        self.proc.start()
        wait_port(self.port, proc=self.proc.proc)
        return self

    def stop(self) -> None:
        self.proc.stop()

    def query(self, q: str) -> str:
        """Run an InfluxQL statement (e.g. CREATE DATABASE); raise on an error."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", "/query", urlencode({"q": q}),
                         {"Content-Type": "application/x-www-form-urlencoded"})
            resp = conn.getresponse()
            body = resp.read().decode()
        finally:
            conn.close()
        if resp.status != 200 or '"error"' in body:
            raise RuntimeError(f"influxd refused {q!r}: {resp.status} {body}")
        return body


class _Handler(BaseHTTPRequestHandler):
    server: V2WriteProxy
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body wait on a delayed ACK (~40 ms)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        return None

    def _forward(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        url = urlsplit(self.path)
        path = url.path
        query = url.query
        if method == "POST" and url.path == "/api/v2/write":
            args = {k: v[-1] for k, v in parse_qs(url.query).items()}
            db, _, rp = args.get("bucket", "").partition("/")
            new = {"db": db, "precision": PRECISION.get(args.get("precision", "ns"), "ns")}
            if rp:
                new["rp"] = rp
            path, query = "/write", urlencode(new)
            self.server.writes += 1
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "content-length", "connection")}
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        try:
            conn.request(method, path + ("?" + query if query else ""), body, headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._forward("GET")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._forward("POST")

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        self._forward("HEAD")


class V2WriteProxy(ThreadingHTTPServer):
    """The path translation above, on a free loopback port, served by a thread."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.upstream_port = upstream_port
        self.writes = 0  # v2 writes translated: proves the store's writes went this way
        self._thread = threading.Thread(target=self.serve_forever, name="influx-v2-proxy",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> V2WriteProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)
