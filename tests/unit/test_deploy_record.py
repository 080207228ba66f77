"""`soundmon deploy` records the config it wrote (passwords masked) for the dashboard."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from soundmon import deploy as deploy_mod
from soundmon.store import SQLiteStore
from tests.unit.test_api import AUTH, make_client

ARGS = ["--port", "/dev/ttyUSB0", "--device", "kitchen", "--wifi-ssid", "lab",
        "--wifi-password", "wifi-secret", "--broker", "192.168.1.20:1884", "--sensor", "i2s",
        "--username", "kitchen", "--password", "mqtt-secret"]


@pytest.fixture
def boards(monkeypatch) -> list[dict]:
    """The configs `deploy` would have copied to a board (no board, no mpremote here)."""
    written: list[dict] = []
    monkeypatch.setattr(deploy_mod, "deploy", lambda port, cfg, **kw: written.append(cfg))
    return written


def test_deploy_record_masks_both_passwords():
    """The record keeps what was configured and only *** for the Wi-Fi and MQTT passwords."""
    cfg = deploy_mod.device_config("kitchen", "lab", "wifi-secret", "10.0.0.2:1884", "i2s",
                                   "kitchen", "mqtt-secret")
    rec = deploy_mod.deploy_record("/dev/ttyACM0", cfg, t_ms=1234)
    text = json.dumps(rec)
    assert "wifi-secret" not in text and "mqtt-secret" not in text
    c = rec["config"]
    assert (c["wifi_password"], c["password"]) == ("***", "***")
    assert (c["device"], c["wifi_ssid"], c["username"], c["sensor"], c["rate"]) == \
        ("kitchen", "lab", "kitchen", "i2s", 16000)
    assert (c["broker_host"], c["broker_port"]) == ("10.0.0.2", 1884)
    assert (rec["t_ms"], rec["port"], rec["firmware"]) == (1234, "/dev/ttyACM0", "1.0.0")
    empty = deploy_mod.deploy_record("p", deploy_mod.device_config("hall", "lab", "", "h"))
    assert empty["config"]["password"] == ""  # nothing set: nothing to mask


def test_deploy_command_records_the_config_and_the_api_shows_it(tmp_path, boards):
    """After a deploy, GET /api/devices/{id} has ``deployed``: that config, passwords masked."""
    done = CliRunner().invoke(deploy_mod.deploy_command, [*ARGS, "--data", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert "recorded in" in done.output
    assert boards[0]["wifi_password"] == "wifi-secret"  # the board itself gets the secrets
    store = SQLiteStore(tmp_path / "soundmon.db")
    with make_client(tmp_path, store) as client:
        dev = client.get("/api/devices/kitchen", headers=AUTH).json()
    assert dev["deployed"]["config"]["sensor"] == "i2s"
    assert dev["deployed"]["config"]["broker_port"] == 1884
    assert dev["deployed"]["port"] == "/dev/ttyUSB0"
    assert "secret" not in json.dumps(dev)
    assert dev["status"] is None  # deployed, never heard from yet


def test_deploy_without_record_or_with_an_unusable_data_dir(tmp_path, boards):
    """--no-record stores nothing; a data directory that cannot be written only warns."""
    done = CliRunner().invoke(deploy_mod.deploy_command,
                              [*ARGS, "--data", str(tmp_path), "--no-record"])
    assert done.exit_code == 0, done.output
    assert SQLiteStore(tmp_path / "soundmon.db").device("kitchen") is None
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    done = CliRunner().invoke(deploy_mod.deploy_command,
                              [*ARGS, "--data", str(blocker / "data")])
    assert done.exit_code == 0, done.output
    assert "not recorded" in done.output and len(boards) == 2
