"""The firmware type-checks against micropython-esp32-stubs: every ESP32 API it calls exists."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tests.micropython import FIRMWARE

STUBS = "micropython-esp32-stubs"  # the ESP32 port's machine, network, esp32 ... (1.27)
STDLIB = "micropython-stdlib-stubs"  # MicroPython's own stdlib, used as mypy's typeshed


def _stub_dir(tmp_path: Path) -> tuple[Path, Path]:
    """(MYPYPATH with the port's modules, the typeshed directory of MicroPython's stdlib)."""
    out = tmp_path / "stubs"
    for dist in (STUBS, STDLIB):
        for f in metadata.files(dist) or []:
            parts = f.parts
            if ".dist-info" in parts[0] or parts[0] in ("..", "stdlib") or f.suffix != ".pyi":
                continue
            target = out / f
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f.locate(), target)
    typeshed = Path(str(metadata.distribution(STDLIB).locate_file("")))
    assert (typeshed / "stdlib" / "VERSIONS").exists()
    assert (out / "machine.pyi").exists() and (out / "network.pyi").exists()
    return out, typeshed


def _mypy(package: Path, tmp_path: Path) -> list[str]:
    """mypy's complaints about ``package`` (the stubs' own quirks are not ours to fix)."""
    stubs, typeshed = _stub_dir(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--check-untyped-defs",
         "--no-site-packages", "--custom-typeshed-dir", str(typeshed), "--python-version",
         "3.11", "--cache-dir", str(tmp_path / "cache"), package.name],
        capture_output=True, text=True, timeout=300, cwd=package.parent,
        env={"MYPYPATH": str(stubs), "PATH": "/usr/bin:/bin"})
    return [line for line in done.stdout.splitlines() if line.startswith(package.name + "/")]


def test_firmware_type_checks_against_the_esp32_stubs(tmp_path: Path) -> None:
    """mypy with the ESP32 port's stubs finds nothing wrong in firmware/."""
    assert _mypy(FIRMWARE, tmp_path) == []


def test_the_check_catches_an_api_the_esp32_port_lacks(tmp_path: Path) -> None:
    """A call the ESP32 port does not have (a control for the test above) is reported."""
    copy = tmp_path / "firmware"
    shutil.copytree(FIRMWARE, copy)
    (copy / "bad.py").write_text("import machine\nimport network\n\n\ndef f():\n"
                                 "    machine.ADC(machine.Pin(34)).read_volts()\n"
                                 "    network.WLAN(network.STA_IF).rssi_dbm()\n")
    errors = _mypy(copy, tmp_path)
    assert len(errors) == 2 and all("bad.py" in e and "attr-defined" in e for e in errors)
