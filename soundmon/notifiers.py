"""Notification channels: their model, routing, message text and the senders.

A channel is stored as JSON (``SQLiteStore.channels``) and validated by the pydantic models
below, so ``POST /api/channels`` answers a bad one with a 422 naming the field. Kinds:

* ``webhook``: a JSON POST of ``{"event", "alert", "delivery", "sent"}`` with the header
  ``X-Soundmon-Signature: sha256=<hex HMAC-SHA256 of the raw body with the secret>``;
* ``email``: SMTP, with STARTTLS (or implicit TLS) and login;
* ``mqtt``: a JSON message on another broker or topic (``{device}`` is filled in);
* ``apprise``: any service apprise knows by URL (Slack, Telegram, ntfy, Discord, Matrix ...).

Two channels are built in and always on: ``live`` (the dashboard's live stream) and ``mqtt``
(``soundmon/v1/{device}/alert`` on soundmon's own broker, shared/protocol.md).

Every sender raises ``DeliveryError`` when the message did not get through; the notify
worker (``workers.notify``) retries it with backoff and keeps the delivery log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
from email.message import EmailMessage
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from soundmon.protocol import topic as protocol_topic
from soundmon.store import Alert, now_ms

EVENTS = ("opened", "reminder", "resolved")
BUILTIN = ("live", "mqtt")
SIGNATURE_HEADER = "X-Soundmon-Signature"
SECRET_FIELDS = ("secret", "password")


class DeliveryError(Exception):
    """A channel did not take the message (the text says why)."""


# ---- channel model --------------------------------------------------------------------------
class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("", max_length=100)
    enabled: bool = True
    #: routing: only these rules / severities / events (None: all)
    rules: list[Literal["level", "frequency", "threshold"]] | None = None
    severities: list[Literal["info", "warning", "critical"]] | None = None
    events: list[Literal["opened", "reminder", "resolved"]] = list(EVENTS)


class WebhookChannel(_Channel):
    kind: Literal["webhook"]
    url: str
    secret: str | None = Field(None, min_length=8, max_length=256)  # None: one is generated

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        return v


class EmailChannel(_Channel):
    kind: Literal["email"]
    host: str = Field(min_length=1)
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True  # upgrade the plain connection with STARTTLS (port 587)
    ssl: bool = False  # implicit TLS from the start (port 465)
    username: str | None = None
    password: str | None = None
    from_addr: str
    to: list[str] = Field(min_length=1)
    tls_verify: bool = True
    ca_file: str | None = None  # a CA to trust, e.g. a self-signed server's certificate

    @field_validator("from_addr")
    @classmethod
    def _addr(cls, v: str) -> str:
        if "@" not in v:
            raise ValueError(f"{v!r} is not an e-mail address")
        return v

    @field_validator("to")
    @classmethod
    def _addrs(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if "@" not in a]
        if bad:
            raise ValueError(f"not e-mail addresses: {', '.join(bad)}")
        return v


class MqttChannel(_Channel):
    kind: Literal["mqtt"]
    host: str = Field(min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    topic: str = "soundmon/v1/{device}/alert"

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not v or "#" in v or "+" in v:
            raise ValueError("topic must be a plain topic (no wildcards)")
        try:
            v.format(device="x")
        except (KeyError, IndexError, ValueError):
            raise ValueError("topic may contain {device} and no other {...} field") from None
        return v


class AppriseChannel(_Channel):
    kind: Literal["apprise"]
    urls: list[str] = Field(min_length=1)

    @field_validator("urls")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        import apprise

        bad = [u for u in v if apprise.Apprise.instantiate(u) is None]
        if bad:
            raise ValueError(f"apprise does not understand: {', '.join(bad)}")
        return v


ChannelModel = Annotated[WebhookChannel | EmailChannel | MqttChannel | AppriseChannel,
                         Field(discriminator="kind")]


def public(channel: dict[str, Any]) -> dict[str, Any]:
    """A stored channel for the API: secrets and passwords masked."""
    return {k: ("********" if k in SECRET_FIELDS and v else v) for k, v in channel.items()}


def wants(channel: dict[str, Any], alert: Alert, event: str) -> bool:
    """Routing: whether this channel takes this event of this alert."""
    return (channel.get("enabled", True) and event in channel.get("events", EVENTS)
            and (channel.get("rules") is None or alert.rule in channel["rules"])
            and (channel.get("severities") is None or alert.severity in channel["severities"]))


# ---- messages -------------------------------------------------------------------------------
def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def alert_json(a: Alert) -> dict[str, Any]:
    """The alert object of the API, the webhooks and the e-mails."""
    reach = a.last_out_ms if a.last_out_ms is not None else a.ended_ms
    return {
        "id": a.id, "device": a.device, "rule": a.rule, "kind": a.kind,
        "severity": a.severity, "state": a.state,
        "value": a.value, "threshold": a.threshold, "unit": a.unit, "worst": a.worst,
        "started": _iso(a.started_ms), "ended": _iso(a.ended_ms),
        "duration_s": None if reach is None else round((reach - a.started_ms) / 1000, 1),
        "acknowledged_by": a.acked_by, "acknowledged": _iso(a.acked_ms),
        "resolved_by": a.resolved_by,
        "frames": {"boot": a.boot, "first_seq": a.first_seq, "last_seq": a.last_seq},
        "quiet_hours": bool(a.extra.get("quiet_hours")),
    }


def protocol_payload(a: Alert, event: str) -> dict[str, Any]:
    """protocol.md's MQTT alert message (also the live stream's ``alert`` event).

    The ``opened`` message says ``open`` even if the alert resolved meanwhile, so a listener
    always sees open before resolved.
    """
    opened = event == "opened"
    return {
        "id": str(a.id), "device": a.device, "kind": a.kind,
        "state": "open" if opened else a.state,
        "value": a.value, "threshold": a.threshold, "unit": a.unit, "worst": a.worst,
        "started": _iso(a.started_ms), "ended": None if opened else _iso(a.ended_ms),
        "rule": a.rule, "severity": a.severity, "event": event,
    }


def test_alert() -> Alert:
    """The sample alert of ``POST /api/notifications/test``."""
    t = now_ms()
    return Alert(0, "soundmon-test", "level_high", "open", 85.0, 80.0, "dB(A)", t - 3000, None,
                 86.5, {"test": True}, "level", "info", last_out_ms=t)


_TITLES = {"opened": "Alert", "reminder": "Reminder: still open", "resolved": "Resolved",
           "test": "Test message"}


def subject(a: Alert, event: str) -> str:
    bound = "above" if a.kind.endswith("_high") else "below"
    return (f"[soundmon] {_TITLES.get(event, event)}: {a.kind} on {a.device} "
            f"({a.value:g} {a.unit}, {bound} {a.threshold:g}; {a.severity})")


def text(a: Alert, event: str) -> str:
    j = alert_json(a)
    lines = [subject(a, event), ""]
    lines += [f"{k}: {j[k]}" for k in ("device", "rule", "kind", "severity", "state", "value",
                                       "worst", "threshold", "unit", "started", "ended",
                                       "duration_s", "acknowledged_by", "resolved_by")]
    frames = j["frames"]
    lines.append(f"frames: boot {frames['boot']}, seq {frames['first_seq']}-{frames['last_seq']}")
    if event == "test":
        lines += ["", "This is a test message from soundmon (POST /api/notifications/test)."]
    return "\n".join(lines) + "\n"


def body(a: Alert, event: str, delivery: str) -> bytes:
    """The JSON body of a webhook or MQTT-channel message."""
    return json.dumps({"event": event, "alert": alert_json(a), "delivery": delivery,
                       "sent": _iso(now_ms())}, separators=(",", ":")).encode()


def sign(secret: str, raw: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the raw body with the channel's secret."""
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


# ---- senders --------------------------------------------------------------------------------
def send(channel: dict[str, Any], a: Alert, event: str, delivery: str, timeout_s: float) -> None:
    """Deliver one event to one stored channel; ``DeliveryError`` if it did not get through."""
    kind = channel["kind"]
    try:
        if kind == "webhook":
            _webhook(channel, a, event, delivery, timeout_s)
        elif kind == "email":
            _email(channel, a, event, delivery, timeout_s)
        elif kind == "mqtt":
            _mqtt(channel, a, event, delivery, timeout_s)
        elif kind == "apprise":
            _apprise(channel, a, event)
        else:
            raise DeliveryError(f"unknown channel kind {kind!r}")
    except DeliveryError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a channel's library raises is its failure
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc


def _webhook(ch: dict[str, Any], a: Alert, event: str, delivery: str, timeout_s: float) -> None:
    import httpx

    raw = body(a, event, delivery)
    headers = {"Content-Type": "application/json", "User-Agent": "soundmon",
               "X-Soundmon-Event": event, "X-Soundmon-Delivery": delivery}
    if ch.get("secret"):
        headers[SIGNATURE_HEADER] = sign(ch["secret"], raw)
    try:
        r = httpx.post(ch["url"], content=raw, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
    if not 200 <= r.status_code < 300:
        raise DeliveryError(f"HTTP {r.status_code} from {ch['url']}: {r.text[:200]}")


def _email(ch: dict[str, Any], a: Alert, event: str, delivery: str, timeout_s: float) -> None:
    msg = EmailMessage()
    msg["Subject"] = subject(a, event)
    msg["From"] = ch["from_addr"]
    msg["To"] = ", ".join(ch["to"])
    # the same id on every attempt: a mail system that sees it twice can drop the copy
    msg["Message-ID"] = f"<soundmon-{delivery}@soundmon>"
    msg.set_content(text(a, event))
    ctx = ssl.create_default_context(cafile=ch.get("ca_file"))
    if not ch.get("tls_verify", True):
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    smtp_cls = smtplib.SMTP_SSL if ch.get("ssl") else smtplib.SMTP
    kwargs: dict[str, Any] = {"context": ctx} if ch.get("ssl") else {}
    with smtp_cls(ch["host"], ch.get("port", 587), timeout=timeout_s, **kwargs) as smtp:
        smtp.ehlo()
        if ch.get("starttls", True) and not ch.get("ssl"):
            smtp.starttls(context=ctx)
            smtp.ehlo()
        if ch.get("username"):
            smtp.login(ch["username"], ch.get("password") or "")
        smtp.send_message(msg)


def _mqtt(ch: dict[str, Any], a: Alert, event: str, delivery: str, timeout_s: float) -> None:
    _mqtt_publish(ch, ch.get("topic", "soundmon/v1/{device}/alert").format(device=a.device),
                  body(a, event, delivery), f"soundmon-notify-{delivery}", timeout_s)


def _mqtt_publish(ch: dict[str, Any], topic: str, payload: bytes, client_id: str,
                  timeout_s: float) -> None:
    """One QoS 1 message on ``ch``'s broker (host, port, username, password), confirmed."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if ch.get("username"):
        client.username_pw_set(ch["username"], ch.get("password"))
    client.connect(ch["host"], ch.get("port", 1883), keepalive=30)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise DeliveryError(f"mqtt://{ch['host']}:{ch.get('port', 1883)} did not confirm")
    except RuntimeError as exc:
        raise DeliveryError(f"mqtt: {exc}") from exc
    finally:
        client.disconnect()
        client.loop_stop()


def send_builtin_mqtt(settings: Any, a: Alert, event: str, delivery: str,
                      timeout_s: float) -> str:
    """The built-in ``mqtt`` channel from outside the workers (``POST /api/notifications/test``):
    protocol.md's alert message on ``{prefix}/v1/{device}/alert`` of soundmon's own broker, as
    ``workers.outputs.publish_alert`` sends it. Returns the topic; ``DeliveryError`` if the
    broker did not confirm."""
    topic = protocol_topic(a.device, "alert", settings.mqtt_prefix)
    ch = {"host": settings.mqtt_host, "port": settings.mqtt_port,
          "username": settings.mqtt_username, "password": settings.mqtt_password}
    try:
        _mqtt_publish(ch, topic, json.dumps(protocol_payload(a, event)).encode(),
                      f"soundmon-test-{delivery}", timeout_s)
    except DeliveryError:
        raise
    except Exception as exc:  # noqa: BLE001 - refused connection, unknown host ...
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
    return topic


def _apprise(ch: dict[str, Any], a: Alert, event: str) -> None:
    import apprise

    ap = apprise.Apprise()
    for url in ch["urls"]:
        ap.add(url)
    if not ap.notify(title=subject(a, event), body=text(a, event)):
        raise DeliveryError(f"apprise could not deliver to {len(ch['urls'])} URL(s); "
                            "see the notify worker's log")
