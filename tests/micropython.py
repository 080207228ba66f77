"""Run code under the real MicroPython: the npm WebAssembly build on Node (tests/firmware/run.mjs).

``make install`` (scripts/install.sh) puts ``@micropython/micropython-webassembly-pyscript``
into ``node_modules/`` from the committed package-lock.json.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tests" / "firmware" / "run.mjs"
PACKAGE = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
FIRMWARE = ROOT / "firmware"
DOUBLES = ROOT / "tests" / "firmware" / "doubles"
#: host directory -> MicroPython directory: the firmware as a board has it, doubles on /lib
BOARD_LAYOUT = {FIRMWARE: "/lib/firmware", DOUBLES: "/lib"}


class MicroPythonMissing(RuntimeError):
    """Node or the MicroPython npm package is not installed."""


def node() -> str:
    path = shutil.which("node")
    if path is None or not (PACKAGE / "micropython.mjs").exists():
        raise MicroPythonMissing("MicroPython under Node is not installed: run `make install`")
    return path


def run_micropython(script: Path, mounts: dict[Path, str] | None = None,
                    timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``script`` under MicroPython 1.27 with each host directory's .py files mounted."""
    layout = BOARD_LAYOUT if mounts is None else mounts
    argv = [node(), str(RUNNER), str(script), *(f"{host}:{target}" for host, target in layout.items())]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
