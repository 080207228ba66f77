"""The firmware under the real MicroPython (npm WebAssembly build, 1.27) and under CPython."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.micropython import DOUBLES, FIRMWARE, ROOT, run_micropython

sys.path.insert(0, str(ROOT / "tests" / "firmware"))
import pure_checks  # noqa: E402 - MicroPython-compatible module, not a package

FIRMWARE_MODULES = sorted(p.stem for p in FIRMWARE.glob("*.py") if p.stem != "__init__")


def _run(script: str, tmp_path: Path, extra: dict[Path, str] | None = None) -> str:
    path = tmp_path / "script.py"
    path.write_text(script)
    done = run_micropython(path, {FIRMWARE: "/lib/firmware", DOUBLES: "/lib", **(extra or {})})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("check", pure_checks.CHECKS, ids=lambda c: c.__name__)
def test_pure_checks_pass_on_cpython(check, tmp_path: Path, monkeypatch) -> None:
    """Each pure-module check passes on CPython (as in the virtual device)."""
    monkeypatch.setattr(pure_checks, "PATH", str(tmp_path / "backlog.bin"))
    check()


def test_pure_checks_pass_under_micropython(tmp_path: Path) -> None:
    """The same checks pass under MicroPython, where no memoryview.cast exists."""
    out = _run("import pure_checks\npure_checks.run_all()\n", tmp_path,
               {ROOT / "tests" / "firmware": "/lib"})
    assert out.split() == [w for c in pure_checks.CHECKS for w in ("ok", c.__name__)]


def test_every_firmware_module_imports_under_micropython(tmp_path: Path) -> None:
    """Every firmware file compiles and imports on MicroPython (main.py stops: no config)."""
    script = "\n".join([
        "import sys",
        "from firmware import " + ", ".join(m for m in FIRMWARE_MODULES if m != "main"),
        "from firmware import main",
        "print('imported', len(sys.modules))",
    ])
    out = _run(script, tmp_path)
    assert "soundmon: no config file /soundmon.json" in out and "imported" in out


def test_main_loop_rides_out_an_outage_under_micropython() -> None:
    """Device tasks on MicroPython: Wi-Fi and broker outage, backfill, NTP, live config."""
    done = run_micropython(ROOT / "tests" / "firmware" / "mp_outage.py")
    assert done.returncode == 0, done.stdout + done.stderr
    r = json.loads(done.stdout.strip().splitlines()[-1])
    made, statuses = r["made"], r["statuses"]
    # every frame captured went out as itself or inside a level record; records add up
    assert r["pcm"] == made["kept"] - made["spilled"]
    after_reconnect = statuses[2]
    assert r["records_sent"] + statuses[-1]["dropped"] == made["records"]
    assert 0 < after_reconnect["dropped"] and after_reconnect["buffered"] <= 4 + 2 + 1
    # one boot, one frame counter without gaps, oldest first, unsynced frames at t0 = 0
    assert len(r["boots"]) == 1 and r["seqs"] == list(range(len(r["seqs"])))
    synced = [t for t in r["t0"] if t]
    assert r["t0"][0] == 0 and synced == sorted(synced)
    assert statuses[1] == {"state": "offline"}  # the last will, sent by the broker
    assert statuses[-1]["frame_ms"] == 200 and statuses[-1]["buffered"] <= 1
    assert set(statuses[0]) == {"state", "fw", "sensor", "rate", "frame_ms", "uptime_s", "rssi",
                                "buffered", "dropped"}
    assert r["connects"] == 2 and r["wdt_feeds"] > 0 and r["ntp_calls"] >= 2
    assert all(1000 <= rate <= 8000 for rate in r["rates"])  # measured, not assumed


def test_lm393_and_i2s_adapters_under_micropython() -> None:
    """LM393: kind-3 (duty, edges) records, never a level; I2S: 24-bit slots become int16."""
    done = run_micropython(ROOT / "tests" / "firmware" / "mp_sensors.py")
    assert done.returncode == 0, done.stdout + done.stderr
    lm393, i2s = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    # the pin double reads active one poll in four, with one falling edge each time
    assert all(f["kind"] == 3 and f["rate"] == 100 and f["body"] == [[2500, 25]]
               for f in lm393["frames"])
    assert lm393["status"]["sensor"] == "lm393"
    # the I2S double sends a ramp as 24-bit samples; >> 8 keeps their top 16 bits
    assert all(f["kind"] == 1 and f["rate"] == 16000 and f["count"] == 1600
               for f in i2s["frames"])
    assert i2s["frames"][0]["body"] == [-256, -255, -254, -253]
