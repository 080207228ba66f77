"""Per-device MQTT accounts and ACLs in the real mosquitto (soundmon provision)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from soundmon.provision import SERVICES, AuthFiles, provision
from soundmon.services import (
    MOSQUITTO_CANDIDATES,
    Process,
    find_binary,
    free_port,
    prepare_mosquitto,
    soundmon_argv,
    wait_port,
)
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


class Broker:
    def __init__(self, data: Path, port: int) -> None:
        self.data = data
        self.port = port
        self.services = json.loads(AuthFiles(data).services.read_text())


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto with soundmon's accounts and ACL, its pid where `soundmon up` keeps it."""
    binary = find_binary(MOSQUITTO_CANDIDATES)
    assert binary, "mosquitto is not installed: run `make install`"
    data = tmp_path / "data"
    port = free_port()
    conf = prepare_mosquitto(data, port, auth=True)
    p = Process("mosquitto", [binary, "-c", str(conf)], dict(os.environ),
                tmp_path / "mosquitto.log").start()
    try:
        wait_port(port, proc=p.proc)
        (data / "run").mkdir()
        (data / "run" / "mosquitto.pid").write_text(f"{p.pid}\n")
        yield Broker(data, port)
    finally:
        p.stop()


class Client:
    """An MQTT v5 client (v5 so the broker tells us why a publish or subscribe was refused)."""

    def __init__(self, port: int, user: str | None, password: str | None, client_id: str) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        if user:
            self.c.username_pw_set(user, password)
        self.connack: ReasonCode | None = None
        self.got: list[tuple[str, bytes]] = []
        self.suback: list[ReasonCode] = []
        self.puback: dict[int, ReasonCode] = {}
        self.event = threading.Event()
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.on_subscribe = lambda c, u, mid, codes, p: (self.suback.extend(codes),
                                                           self.event.set())
        self.c.on_publish = lambda c, u, mid, rc, p: self.puback.__setitem__(mid, rc)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_until(lambda: self.connack is not None, 10, what="CONNACK")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connack = reason_code

    def subscribe(self, topic: str) -> ReasonCode:
        self.event.clear()
        self.c.subscribe(topic, qos=1)
        assert self.event.wait(10)
        return self.suback[-1]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> ReasonCode:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        wait_until(lambda: info.mid in self.puback, 10, what="PUBACK")
        return self.puback[info.mid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_anonymous_and_wrong_passwords_are_refused(broker: Broker) -> None:
    """With accounts on, no password or a wrong one gets no connection."""
    provision("dev-a", broker.data)
    for user, password in ((None, None), ("dev-a", "wrong"), ("nobody", "x")):
        c = Client(broker.port, user, password, f"try-{user}")
        assert c.connack is not None and c.connack.is_failure, user
        c.close()


def test_a_device_publishes_only_as_itself(broker: Broker) -> None:
    """dev-a's frames arrive; its attempts to publish as dev-b are refused and never delivered."""
    a = provision("dev-a", broker.data)
    provision("dev-b", broker.data)
    admin = Client(broker.port, "svc.admin", broker.services["svc.admin"], "admin")
    assert admin.subscribe("soundmon/v1/#").value == 1
    dev = Client(broker.port, a["username"], a["password"], "dev-a")
    assert not dev.connack.is_failure
    assert dev.publish("soundmon/v1/dev-a/frame", b"mine").value == 0
    assert dev.publish("soundmon/v1/dev-a/status", b"{}", retain=True).value == 0
    for leaf in ("frame", "status", "config"):
        assert dev.publish(f"soundmon/v1/dev-b/{leaf}", b"forged").value == 135  # not authorized
    assert dev.publish("soundmon/v1/dev-a/alert", b"forged").value == 135
    wait_until(lambda: len(admin.got) >= 2, 10, what="dev-a's own messages")
    dev.close()
    admin.close()
    assert all(topic.startswith("soundmon/v1/dev-a/") for topic, _ in admin.got)
    assert b"forged" not in [p for _, p in admin.got]


def test_a_device_reads_only_its_own_config(broker: Broker) -> None:
    """The retained config reaches its device; other devices' configs and frames never do."""
    a = provision("dev-a", broker.data)
    admin = Client(broker.port, "svc.admin", broker.services["svc.admin"], "admin")
    for device in ("dev-a", "dev-b"):
        rc = admin.publish(f"soundmon/v1/{device}/config", device.encode(), retain=True)
        assert not rc.is_failure
    dev = Client(broker.port, a["username"], a["password"], "dev-a")
    assert dev.subscribe("soundmon/v1/dev-a/config").value == 1
    dev.subscribe("soundmon/v1/dev-b/config")  # mosquitto 2.0 grants it, then delivers nothing
    dev.subscribe("soundmon/v1/+/frame")
    assert not admin.publish("soundmon/v1/dev-b/frame", b"other").is_failure
    wait_until(lambda: dev.got, 10, what="the retained config")
    admin.publish("soundmon/v1/dev-a/config", b"again", retain=True)  # a marker, sent last
    wait_until(lambda: len(dev.got) >= 2, 10, what="the second config")
    dev.close()
    admin.close()
    assert dev.got == [("soundmon/v1/dev-a/config", b"dev-a"),
                       ("soundmon/v1/dev-a/config", b"again")]


def test_service_accounts_do_only_their_job(broker: Broker) -> None:
    """The gateway reads frames but cannot publish them; the workers may publish alerts only."""
    gw = Client(broker.port, "svc.gateway", broker.services["svc.gateway"], "gw")
    assert gw.subscribe("soundmon/v1/+/frame").value == 1
    assert gw.publish("soundmon/v1/dev-a/frame", b"x").value == 135
    workers = Client(broker.port, "svc.workers", broker.services["svc.workers"], "wk")
    assert not workers.publish("soundmon/v1/dev-a/alert", b"{}").is_failure
    assert workers.publish("soundmon/v1/dev-a/frame", b"x").value == 135
    gw.close()
    workers.close()
    assert set(SERVICES) <= set(broker.services)


def test_the_replay_account_publishes_frames_and_status_only(broker: Broker) -> None:
    """svc.replay publishes a replay device's frame and status; it reads nothing and cannot
    publish alerts or configs."""
    admin = Client(broker.port, "svc.admin", broker.services["svc.admin"], "admin")
    assert admin.subscribe("soundmon/v1/#").value == 1
    rp = Client(broker.port, "svc.replay", broker.services["svc.replay"], "replay-x-1")
    assert not rp.connack.is_failure
    rp.subscribe("soundmon/v1/#")  # mosquitto 2.0 grants it, then delivers nothing
    assert rp.publish("soundmon/v1/replay-x/status", b"{}", retain=True).value == 0
    assert rp.publish("soundmon/v1/replay-x/frame", b"replayed").value == 0
    for leaf in ("alert", "config"):
        assert rp.publish(f"soundmon/v1/replay-x/{leaf}", b"forged").value == 135
    assert rp.publish("soundmon/other", b"forged").value == 135
    assert not admin.publish("soundmon/v1/dev-a/config", b"cfg", retain=True).is_failure
    assert not admin.publish("soundmon/v1/dev-a/frame", b"live").is_failure
    wait_until(lambda: len(admin.got) >= 4, 10, what="every message at the admin")
    # a PUBACK after them on the same connection: anything routed to rp before is in by now
    assert rp.publish("soundmon/v1/replay-x/frame", b"last").value == 0
    wait_until(lambda: len(admin.got) >= 5, 10, what="the last frame at the admin")
    rp.close()
    admin.close()
    assert rp.got == []
    assert sorted(admin.got) == sorted([("soundmon/v1/replay-x/status", b"{}"),
                                        ("soundmon/v1/replay-x/frame", b"replayed"),
                                        ("soundmon/v1/dev-a/config", b"cfg"),
                                        ("soundmon/v1/dev-a/frame", b"live"),
                                        ("soundmon/v1/replay-x/frame", b"last")])


def test_provision_cli_takes_effect_without_a_broker_restart(broker: Broker) -> None:
    """`soundmon provision ID --json` prints working credentials at once (SIGHUP reload)."""
    out = subprocess.run(soundmon_argv("provision", "late-dev", "--data", str(broker.data),
                                       "--json"), capture_output=True, text=True, check=True)
    creds = json.loads(out.stdout)
    assert set(creds) == {"device", "username", "password"} and creds["device"] == "late-dev"
    dev = wait_until(lambda: (c := Client(broker.port, creds["username"], creds["password"],
                                          "late")).connack.value == 0 and c, 10,
                     what="the reloaded password file")
    assert not dev.publish("soundmon/v1/late-dev/frame", b"hi").is_failure
    dev.close()
    bad = subprocess.run(soundmon_argv("provision", "Bad/Id", "--data", str(broker.data)),
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a device id" in bad.stderr
