"""deploy/nginx.conf on a real nginx: Server-Sent Events pass through one by one, unbuffered."""

from __future__ import annotations

import http.client
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from soundmon.services import Process, free_port, wait_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class _Upstream(BaseHTTPRequestHandler):
    """Sends one event, waits until the test has received it through nginx, then a second one."""

    protocol_version = "HTTP/1.0"  # the body ends when the connection closes
    first_seen = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/api/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.write(b"event: level\ndata: {\"n\": 1}\n\n")
            self.wfile.flush()
            # a buffering proxy holds the first event back: the test then never sets this
            self.first_seen.wait(20)
            self.wfile.write(b"event: level\ndata: {\"n\": 2}\n\n")
        else:
            body = b'{"ok": ["store"], "failing": {}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_nginx_passes_live_events_through_one_at_a_time(tmp_path: Path) -> None:
    """An event reaches the client through nginx before the upstream sends the next one."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(binary).exists(), "nginx is not installed: run `make install`"
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    conf = (ROOT / "deploy/nginx.conf").read_text()
    for old, new in (("server dashboard:8000;", f"server 127.0.0.1:{upstream.server_port};"),
                     ("listen 80;", f"listen 127.0.0.1:{port};"),
                     ("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;")):
        assert conf.count(old) == 1, old
        conf = conf.replace(old, new)
    (tmp_path / "nginx.conf").write_text(conf)
    argv = [binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proxy = Process("nginx", argv, {}, tmp_path / "nginx.log").start()
    try:
        wait_port(port, proc=proxy.proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        conn.request("GET", "/nginx-health")
        assert conn.getresponse().read() == b"ok\n"
        conn.request("GET", "/api/health")
        assert b'"failing"' in conn.getresponse().read()
        conn.close()

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            conn.request("GET", "/api/stream", headers={"Accept": "text/event-stream"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
            first = b""
            while not first.endswith(b"\n\n"):
                first += resp.read1(1024)  # times out (15 s) if nginx holds the event back
            assert first == b"event: level\ndata: {\"n\": 1}\n\n"
            _Upstream.first_seen.set()
            assert resp.read() == b"event: level\ndata: {\"n\": 2}\n\n"
        finally:
            conn.close()
    finally:
        _Upstream.first_seen.set()
        proxy.stop()
        upstream.shutdown()
        upstream.server_close()
