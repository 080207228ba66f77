"""`soundmon flash` with the real esptool against esp32-mock-bootloader over socket://."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from soundmon.flash import DEFAULT_BAUD, OFFSETS, esptool_argv
from soundmon.services import Process, free_port, soundmon_argv, wait_port

pytestmark = pytest.mark.integration


def _image(path: Path, seed: int, size: int = 200_000) -> Path:
    """Bytes shaped like an ESP image: the 0xE9 magic, then noise."""
    path.write_bytes(bytes([0xE9]) + os.urandom(size - 1) if seed else b"")
    return path


@pytest.fixture(params=["esp32", "esp32s3"])
def board(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A mock ROM bootloader of the chip (its own process), at socket://127.0.0.1:PORT."""
    port = free_port()
    argv = [sys.executable, "-c", "from esp32_mock_bootloader.cli import main; "
            "raise SystemExit(main())", "run", "--chip", request.param, "--port", str(port)]
    mock = Process("mock-bootloader", argv, dict(os.environ), tmp_path / "mock.log").start()
    try:
        wait_port(port, proc=mock.proc)
        yield request.param, f"socket://127.0.0.1:{port}"
    finally:
        mock.stop()


def _verify(chip: str, url: str, image: Path) -> int:
    argv = esptool_argv(chip, url, DEFAULT_BAUD, "verify-flash", f"0x{OFFSETS[chip]:x}", str(image))
    return subprocess.run(argv, capture_output=True, text=True, timeout=120).returncode


def test_flash_erases_writes_at_the_chip_offset_and_verifies(board, tmp_path: Path) -> None:
    """The image lands at the chip's offset: esptool verify-flash agrees, and rejects another file."""
    chip, url = board
    image = _image(tmp_path / "micropython.bin", 1)
    done = subprocess.run(soundmon_argv("flash", "--port", url, "--firmware", str(image),
                                        "--chip", chip, "--erase"),
                          capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "Erasing" in out or "erase" in out.lower()
    assert "Writing at" in out and "100.0%" in out  # esptool's progress reached the user
    assert "Verification successful" in out
    assert _verify(chip, url, image) == 0
    assert _verify(chip, url, _image(tmp_path / "other.bin", 2)) != 0


def test_flash_reports_a_failed_connection(tmp_path: Path) -> None:
    """Nobody on the port: a clear error and a non-zero exit, not a traceback."""
    image = _image(tmp_path / "micropython.bin", 1, 4096)
    done = subprocess.run(soundmon_argv("flash", "--port", "socket://127.0.0.1:9", "--firmware",
                                        str(image)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "esptool write failed" in done.stderr
