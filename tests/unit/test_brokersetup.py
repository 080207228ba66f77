"""`soundmon broker-setup`: accounts with the operator's service passwords, certificates, owner."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from soundmon.brokersetup import setup_broker
from soundmon.cli import main
from soundmon.provision import AuthFiles, password_hash


def _hash_matches(stored: str, password: str) -> bool:
    salt = stored.split("$")[3]  # $7$<iterations>$<salt>$<hash>
    return password_hash(password, base64.b64decode(salt)) == stored


def test_service_passwords_come_from_the_environment_and_survive_a_rerun(tmp_path: Path,
                                                                        monkeypatch) -> None:
    """Given passwords are hashed into passwd; unset ones stay random; device accounts survive."""
    monkeypatch.setenv("SOUNDMON_MQTT_GATEWAY_PASSWORD", "gw-pass")
    monkeypatch.delenv("SOUNDMON_MQTT_WORKERS_PASSWORD", raising=False)
    monkeypatch.delenv("SOUNDMON_MQTT_ADMIN_PASSWORD", raising=False)
    out = CliRunner().invoke(main, ["broker-setup", "--data", str(tmp_path),
                                    "--tls-host", "localhost 127.0.0.1"])
    assert out.exit_code == 0, out.output
    files = AuthFiles(tmp_path)
    users = dict(line.split(":", 1) for line in files.passwd.read_text().splitlines())
    services = json.loads(files.services.read_text())
    assert _hash_matches(users["svc.gateway"], "gw-pass") and services["svc.gateway"] == "gw-pass"
    assert _hash_matches(users["svc.workers"], services["svc.workers"])
    assert (files.dir / "tls" / "server.crt").exists() and (files.dir / "store").is_dir()
    files.passwd.write_text(files.passwd.read_text() + "kitchen:" + password_hash("k") + "\n")
    CliRunner().invoke(main, ["broker-setup", "--data", str(tmp_path)])
    users = dict(line.split(":", 1) for line in files.passwd.read_text().splitlines())
    assert _hash_matches(users["kitchen"], "k") and _hash_matches(users["svc.gateway"], "gw-pass")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_files_are_handed_to_the_broker_user(tmp_path: Path) -> None:
    """--chown gives every file, the keys included, to the broker's uid and gid."""
    setup_broker(tmp_path, "soundmon", ["localhost"], {}, owner=(10001, 10002))
    for root, dirs, names in os.walk(AuthFiles(tmp_path).dir):
        for name in [*dirs, *names]:
            st = os.stat(os.path.join(root, name))
            assert (st.st_uid, st.st_gid) == (10001, 10002), name
