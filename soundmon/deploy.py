"""``soundmon deploy``: the soundmon firmware and a device config onto a MicroPython board.

mpremote (a subprocess of this interpreter) does the work over the board's raw REPL:

1. ``/lib/firmware/`` gets the firmware modules, ``/boot.py`` and ``/main.py`` the entry
   points (``firmware/``, as in this repository);
2. ``/soundmon.json`` gets the device config: id, Wi-Fi and broker credentials, sensor.
   It is written from a private temporary file and is never part of the repository;
3. what the firmware imports beyond its own files and is missing on the board is installed
   from micropython-lib with ``mip`` (``ntptime``: official ESP32 builds freeze it);
4. the board is reset, and ``main.py`` starts the firmware;
5. what was written is recorded in the data directory's store (``soundmon.db``, the device
   registry) with its passwords masked, so the dashboard's settings page and
   ``GET /api/devices/{id}`` (``deployed``) show it (``--no-record`` skips this).

The config is checked with the firmware's own ``firmware.config`` before anything is sent.

Errors: ``DeployError`` (bad arguments, or an mpremote step failed).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from firmware import config as fw_config
from soundmon.protocol import DEVICE_ID
from soundmon.store import SQLiteStore, now_ms

FIRMWARE_DIR = Path(fw_config.__file__).resolve().parent
ENTRY_POINTS = ("boot.py", "main.py")  # to the filesystem root; the rest to /lib/firmware
#: modules the firmware imports that are not its own: micropython-lib name -> import name
MIP_PACKAGES = {"ntptime": "ntptime"}

Runner = Callable[[list[str]], subprocess.CompletedProcess]


class DeployError(RuntimeError):
    """A deploy argument is invalid, or an mpremote step failed."""


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def mpremote_argv(port: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "mpremote", "connect", port, *args]


def device_config(device: str, wifi_ssid: str, wifi_password: str, broker: str,
                  sensor: str = "max4466", username: str = "", password: str = "") -> dict:
    """The ``/soundmon.json`` for a device, validated by the firmware's own config code."""
    if not DEVICE_ID.match(device):
        raise DeployError(f"{device!r} is not a device id ({DEVICE_ID.pattern})")
    host, _, port = broker.partition(":")
    if not host or (port and not port.isdigit()):
        raise DeployError(f"--broker {broker!r} is not HOST[:PORT]")
    rate = fw_config.RATES.get(sensor, (0, 0, 0))[2]
    try:
        cfg = fw_config.merged(fw_config.DEFAULTS, {
            "device": device, "wifi_ssid": wifi_ssid, "wifi_password": wifi_password,
            "broker_host": host, "broker_port": int(port or 1883), "username": username,
            "password": password, "sensor": sensor, "rate": rate,
        })
    except fw_config.ConfigError as err:
        raise DeployError(str(err)) from err
    return cfg


def firmware_files() -> tuple[list[Path], list[Path]]:
    """(modules for /lib/firmware, entry points for /)."""
    files = sorted(p for p in FIRMWARE_DIR.glob("*.py"))
    return ([p for p in files if p.name not in ENTRY_POINTS],
            [p for p in files if p.name in ENTRY_POINTS])


_MKDIRS = ("import os\n"
           "for d in ('/lib', '/lib/firmware'):\n"
           "    try:\n"
           "        os.mkdir(d)\n"
           "    except OSError:\n"
           "        pass\n")


def deploy(port: str, cfg: dict, mip: bool = True, reset: bool = True, run: Runner = _run,
           echo: Callable[[str], None] = click.echo) -> None:
    """Copy the firmware and ``cfg`` to the board on ``port``, install what is missing, reset."""
    modules, entry = firmware_files()
    fd, tmp = tempfile.mkstemp(prefix="soundmon-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:  # 0600: the config holds the Wi-Fi and broker secrets
            json.dump(cfg, f)
        args = ["exec", _MKDIRS, "+", "fs", "cp", *map(str, modules), ":lib/firmware/"]
        for path in entry:
            args += ["+", "fs", "cp", str(path), f":{path.name}"]
        args += ["+", "fs", "cp", tmp, f":{fw_config.CONFIG_PATH.lstrip('/')}"]
        _step("copy the firmware and the device config", mpremote_argv(port, *args), run, echo)
    finally:
        os.unlink(tmp)
    if mip:
        for package, module in MIP_PACKAGES.items():
            probe = run(mpremote_argv(port, "exec", f"import {module}"))
            if probe.returncode == 0:
                echo(f"soundmon deploy: {module} is on the board")
                continue
            _step(f"install {package} from micropython-lib",
                  mpremote_argv(port, "mip", "install", package), run, echo)
    if reset:
        _step("reset the board", mpremote_argv(port, "reset"), run, echo)
    echo(f"soundmon deploy: {cfg['device']} deployed ({cfg['sensor']} at {cfg['rate']} Hz, "
         f"broker {cfg['broker_host']}:{cfg['broker_port']})")


def deploy_record(port: str, cfg: dict, t_ms: int | None = None) -> dict:
    """What the device registry keeps of a deploy: the config with the Wi-Fi and MQTT
    passwords masked (``***`` when set, the firmware's own ``config.public``), the firmware
    version, the serial port and the time (Unix ms)."""
    return {"t_ms": now_ms() if t_ms is None else t_ms, "firmware": fw_config.FIRMWARE_VERSION,
            "port": port, "config": fw_config.public(cfg)}


def record_deploy(data_dir: Path | None, port: str, cfg: dict) -> Path:
    """Store ``deploy_record`` for the device in the data directory's store; returns its path.

    The device registry lives in the SQLite file with either store backend (InfluxDB keeps
    only the levels), so this never needs InfluxDB.
    """
    from soundmon.settings import get_settings

    settings = get_settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    SQLiteStore(settings.db_path).set_deployed(cfg["device"], deploy_record(port, cfg))
    return settings.db_path


def _step(name: str, argv: list[str], run: Runner, echo: Callable[[str], None]) -> None:
    echo(f"soundmon deploy: {name}")
    done = run(argv)
    if done.returncode != 0:
        raise DeployError(f"mpremote could not {name} (exit {done.returncode}): "
                          f"{(done.stderr or done.stdout or '').strip()[-500:]}")


@click.command("deploy")
@click.option("--port", required=True, help="Serial port of the board (/dev/ttyUSB0, COM3).")
@click.option("--device", required=True, help="Device id, as provisioned.")
@click.option("--wifi-ssid", required=True)
@click.option("--wifi-password", required=True)
@click.option("--broker", required=True, metavar="HOST[:PORT]",
              help="MQTT broker as the board reaches it (not 127.0.0.1).")
@click.option("--sensor", type=click.Choice(list(fw_config.SENSORS)), default="max4466",
              show_default=True)
@click.option("--username", default="", help="MQTT username (soundmon provision).")
@click.option("--password", default="", help="MQTT password (soundmon provision).")
@click.option("--no-mip", is_flag=True, help="Do not install missing micropython-lib packages "
                                             "(mpremote fetches them on this computer).")
@click.option("--no-reset", is_flag=True, help="Leave the board in the REPL afterwards.")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Record the config written (passwords masked) in the data directory, for the "
                   "dashboard's settings page.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Data directory holding soundmon.db [default: SOUNDMON_DATA].")
def deploy_command(port: str, device: str, wifi_ssid: str, wifi_password: str, broker: str,
                   sensor: str, username: str, password: str, no_mip: bool,
                   no_reset: bool, record: bool, data_dir: Path | None) -> None:
    """Copy the soundmon firmware and this device's config onto a MicroPython board."""
    try:
        cfg = device_config(device, wifi_ssid, wifi_password, broker, sensor, username, password)
        deploy(port, cfg, mip=not no_mip, reset=not no_reset)
    except DeployError as err:
        raise click.ClickException(str(err)) from err
    if record:
        try:
            db = record_deploy(data_dir, port, cfg)
        except (OSError, sqlite3.Error) as err:  # the board is done: say so, do not fail
            click.echo(f"soundmon deploy: the config was not recorded for the dashboard: {err}",
                       err=True)
        else:
            click.echo(f"soundmon deploy: recorded in {db} (passwords masked)")
