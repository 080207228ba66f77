"""Real receivers for notification tests: an HTTP server that checks webhook signatures, an
SMTP server (aiosmtpd) with STARTTLS and login, and an MQTT listener. All on loopback."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class WebhookReceiver:
    """Records every POST: path, headers, JSON body, and whether its signature verified.

    ``secrets`` maps a path to the secret its sender signs with. A path in ``hold`` is held
    open (the request read, no answer) until ``release`` is set, once.
    """

    def __init__(self, secrets: dict[str, str] | None = None) -> None:
        self.secrets = dict(secrets or {})
        self.requests: list[dict[str, Any]] = []
        self.hold: set[str] = set()
        self.holding = threading.Event()
        self.release = threading.Event()
        #: called with each request's entry before it is answered (e.g. to look at the store)
        self.on_request: Any = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                secret = receiver.secrets.get(self.path)
                expected = ("sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
                            if secret else None)
                got = self.headers.get("X-Soundmon-Signature")
                entry = {"path": self.path, "headers": dict(self.headers), "body": json.loads(raw),
                         "signature_ok": expected is not None and got is not None
                         and hmac.compare_digest(expected, got), "answered": False}
                if receiver.on_request is not None:
                    receiver.on_request(entry)
                receiver.requests.append(entry)
                if self.path in receiver.hold:
                    receiver.hold.discard(self.path)
                    receiver.holding.set()
                    receiver.release.wait(60)
                    self.close_connection = True
                    return  # never answered: the sender died meanwhile
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                entry["answered"] = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class SmtpReceiver:
    """aiosmtpd on a free port: STARTTLS required, login required (``user``/``password``)."""

    user, password = "alerts@example.org", "smtp-pass-123"

    def __init__(self, directory: Path) -> None:
        self.cert, key = self_signed_cert(directory)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, key)
        self.messages: list[Any] = []
        self.logins: list[str] = []
        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                msg = message_from_bytes(envelope.original_content or envelope.content,
                                         policy=policy.default)
                receiver.messages.append({"msg": msg, "tls": session.ssl is not None,
                                          "rcpt": list(envelope.rcpt_tos),
                                          "subject": " ".join(str(msg["Subject"]).split())})
                return "250 OK"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                          auth_data: Any) -> AuthResult:
            ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.user
                  and auth_data.password.decode() == self.password)
            if ok:
                receiver.logins.append(auth_data.login.decode())
            return AuthResult(success=ok)

        from soundmon.services import free_port

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                     tls_context=ctx, require_starttls=True,
                                     authenticator=authenticator, auth_require_tls=True)

    def channel(self, to: str = "ops@example.org") -> dict[str, Any]:
        """The ``POST /api/channels`` body of an e-mail channel to this server."""
        return {"kind": "email", "host": "127.0.0.1", "port": self.port, "starttls": True,
                "username": self.user, "password": self.password, "from_addr": self.user,
                "to": [to], "ca_file": str(self.cert)}

    def __enter__(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


class MqttListener:
    """Subscribes to ``topic`` on a broker and keeps the JSON payloads."""

    def __init__(self, port: int, topic: str, auth: tuple[str, str] | None = None,
                 client_id: str = "test-alert-listener") -> None:
        self.messages: list[dict[str, Any]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if auth:
            self.client.username_pw_set(*auth)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append(json.loads(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError(f"could not subscribe to {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
