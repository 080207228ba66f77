"""The Compose broker setup on a real mosquitto: accounts, ACL and the TLS listener of `soundmon certs`."""

from __future__ import annotations

import os
import pwd
import queue
import socket
import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from soundmon.brokersetup import compose_mosquitto_conf, setup_broker
from soundmon.certs import CertFiles, ensure_certs
from soundmon.provision import AuthFiles, provision
from soundmon.services import MOSQUITTO_CANDIDATES, Process, find_binary, free_port, wait_port

pytestmark = pytest.mark.integration


def _client(port: int, user: str | None, password: str | None, ca: Path | None,
            client_id: str) -> tuple[mqtt.Client, mqtt.ReasonCode | Exception]:
    """Connect (TLS when ``ca`` is given); return the client and the CONNACK reason or error."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if user:
        c.username_pw_set(user, password)
    if ca:
        c.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    result: queue.Queue = queue.Queue()
    c.on_connect = lambda _c, _u, _f, reason, _p: result.put(reason)
    try:
        c.connect("localhost" if ca else "127.0.0.1", port, keepalive=10)
    except (ssl.SSLError, OSError) as exc:
        return c, exc
    c.loop_start()
    try:
        return c, result.get(timeout=10)
    except queue.Empty:
        return c, TimeoutError("no CONNACK")


def test_devices_reach_the_compose_broker_over_tls_with_their_own_account(tmp_path: Path) -> None:
    """broker-setup's files + deploy's config: TLS with the private CA, accounts and ACL enforced."""
    binary = find_binary(MOSQUITTO_CANDIDATES)
    assert binary, "mosquitto is not installed: run `make install`"
    data = tmp_path / "data"
    result = setup_broker(data, "soundmon", ["localhost", "127.0.0.1"],
                          {"svc.admin": "admin-secret", "svc.gateway": "gw-secret"})
    assert (result["ca"], result["server"]) == ("created", "issued")
    device = provision("porch", data)
    base = AuthFiles(data).dir
    port, tls_port = free_port(), free_port()
    run_as = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(compose_mosquitto_conf(str(base), port, tls_port, "127.0.0.1", run_as=run_as))
    broker = Process("mosquitto", [binary, "-c", str(conf)], dict(os.environ),
                     tmp_path / "mosquitto.log").start()
    clients: list[mqtt.Client] = []
    try:
        wait_port(tls_port, proc=broker.proc)
        ca = CertFiles(base / "tls").ca_cert
        admin, reason = _client(tls_port, "svc.admin", "admin-secret", ca, "admin")
        clients.append(admin)
        assert isinstance(reason, mqtt.ReasonCode) and not reason.is_failure, reason
        got: queue.Queue = queue.Queue()
        admin.on_message = lambda _c, _u, msg: got.put((msg.topic, msg.payload))
        admin.subscribe("soundmon/v1/#", qos=1)

        dev, reason = _client(tls_port, "porch", device["password"], ca, "porch")
        clients.append(dev)
        assert isinstance(reason, mqtt.ReasonCode) and not reason.is_failure, reason
        dev.publish("soundmon/v1/mallory/frame", b"spoof", qos=1).wait_for_publish(5)  # ACL: dropped
        dev.publish("soundmon/v1/porch/frame", b"real", qos=1).wait_for_publish(5)
        assert got.get(timeout=10) == ("soundmon/v1/porch/frame", b"real")

        # the gateway's account has the password broker-setup was given
        gw, reason = _client(port, "svc.gateway", "gw-secret", None, "gw")
        clients.append(gw)
        assert isinstance(reason, mqtt.ReasonCode) and not reason.is_failure, reason
        # refused: anonymous, a wrong password, and a server the client's CA did not sign
        anon, reason = _client(port, None, None, None, "anon")
        clients.append(anon)
        assert isinstance(reason, mqtt.ReasonCode) and reason.is_failure, reason
        bad, reason = _client(tls_port, "porch", "wrong", ca, "porch-bad")
        clients.append(bad)
        assert isinstance(reason, mqtt.ReasonCode) and reason.is_failure, reason
        other = ensure_certs(tmp_path / "other-ca", ["localhost"])
        assert other["ca"] == "created"
        context = ssl.create_default_context(cafile=str(CertFiles(tmp_path / "other-ca").ca_cert))
        with pytest.raises(ssl.SSLCertVerificationError), \
                socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost"):
            pass
        # ... while the right CA verifies the name devices use (the certificate's SAN)
        context = ssl.create_default_context(cafile=str(ca))
        with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert got.empty()  # the spoofed frame never arrived
    finally:
        for c in clients:
            c.loop_stop()
            c.disconnect()
        broker.stop()
