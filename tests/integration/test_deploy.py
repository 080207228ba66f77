"""`soundmon deploy` end to end: mpremote onto a MicroPython raw-REPL peer on a pty."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from soundmon.deploy import DeployError, deploy, device_config, mpremote_argv
from soundmon.services import soundmon_argv
from soundmon.store import SQLiteStore
from tests.micropython import ROOT
from tests.replpeer import ReplPeer

pytestmark = pytest.mark.integration


@pytest.fixture
def peer() -> Iterator[ReplPeer]:
    """MicroPython 1.27's REPL on a pseudo-terminal, with machine/network/ntptime doubles."""
    with ReplPeer() as p:
        yield p


def _exec(peer: ReplPeer, code: str) -> str:
    done = subprocess.run(mpremote_argv(peer.port, "exec", code), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_deploy_puts_firmware_and_config_on_the_board(peer: ReplPeer, tmp_path: Path) -> None:
    """Files and config land on the board's filesystem, the firmware imports, the board resets;
    the data directory records the config without its passwords."""
    done = subprocess.run(soundmon_argv(
        "deploy", "--port", peer.port, "--device", "kitchen", "--wifi-ssid", "lab",
        "--wifi-password", "wifi-secret", "--broker", "192.168.1.20:1884", "--sensor", "i2s",
        "--username", "kitchen", "--password", "mqtt-secret", "--data", str(tmp_path)),
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    recorded = SQLiteStore(tmp_path / "soundmon.db").device("kitchen")["deployed"]
    assert (recorded["port"], recorded["config"]["rate"]) == (peer.port, 16000)
    assert "secret" not in json.dumps(recorded)
    assert "ntptime is on the board" in done.stdout  # nothing missing: no mip install
    out = _exec(peer, "import os, json, machine\n"
                      "print(json.dumps({'root': sorted(os.listdir('/')),"
                      " 'lib': sorted(os.listdir('/lib/firmware')),"
                      " 'cfg': json.load(open('/soundmon.json')), 'resets': machine.resets}))")
    r = json.loads(out.strip().splitlines()[-1])
    assert {"boot.py", "main.py", "soundmon.json", "lib"} <= set(r["root"])
    expected = sorted(p.name for p in (ROOT / "firmware").glob("*.py")
                      if p.name not in ("boot.py", "main.py"))
    assert r["lib"] == expected
    cfg = r["cfg"]
    assert (cfg["device"], cfg["sensor"], cfg["rate"]) == ("kitchen", "i2s", 16000)
    assert (cfg["broker_host"], cfg["broker_port"]) == ("192.168.1.20", 1884)
    assert (cfg["wifi_password"], cfg["username"], cfg["password"]) == \
        ("wifi-secret", "kitchen", "mqtt-secret")
    assert r["resets"] == 1  # `mpremote reset` ran machine.reset()
    # the firmware's pure modules import and run there; its config loader reads the file
    subprocess.run(mpremote_argv(peer.port, "fs", "cp",
                                 str(ROOT / "tests" / "firmware" / "pure_checks.py"), ":lib/"),
                   check=True, capture_output=True, timeout=120)
    out = _exec(peer, "from firmware import config, app, hw, backlog, levels, frame, mqtt\n"
                      "print('device', config.load()['device'])\n"
                      "import pure_checks\npure_checks.run_all()")
    assert "device kitchen" in out and out.count("ok check_") == 8


def test_deploy_installs_what_is_missing_from_micropython_lib() -> None:
    """When the board lacks ntptime, deploy asks mpremote's mip for it (argv-level check)."""
    calls: list[list[str]] = []

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        calls.append(argv)
        missing = argv[-2:] == ["exec", "import ntptime"]
        return subprocess.CompletedProcess(argv, 1 if missing else 0, "", "")

    cfg = device_config("hall", "lab", "pw", "broker.local")
    deploy("/dev/ttyUSB0", cfg, run=run, echo=lambda _: None)
    assert [c[5:] for c in calls[1:]] == [["exec", "import ntptime"],
                                          ["mip", "install", "ntptime"], ["reset"]]
    assert "/dev/ttyUSB0" in calls[0] and ":soundmon.json" in calls[0]


def test_deploy_rejects_bad_arguments_before_touching_the_board() -> None:
    """A bad device id, broker or sensor rate fails in the firmware's own config check."""
    for args in (("Bad Id", "ssid", "pw", "h"), ("ok", "ssid", "pw", "h:port")):
        with pytest.raises(DeployError):
            device_config(*args)
