"""``soundmon flash``: MicroPython onto an ESP32 with esptool (erase, write, verify).

esptool runs as a subprocess of this interpreter (``python -m esptool``), so its own
progress bars reach the terminal unchanged and its exit status says what happened. The
image goes where MicroPython's download page says for each chip: 0x1000 on the ESP32 and
ESP32-S2 (the second-stage bootloader comes first in those images), 0x0 on the newer
chips. After writing, ``verify-flash`` reads the flash back by digest and compares.

Errors: ``FlashError`` (a step failed, or the image is unusable).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

#: chip -> offset of MicroPython's combined image (micropython.org/download, esptool docs)
OFFSETS = {
    "esp32": 0x1000,
    "esp32s2": 0x1000,
    "esp32s3": 0x0,
    "esp32c3": 0x0,
    "esp32c6": 0x0,
}
ESP_IMAGE_MAGIC = 0xE9  # first byte of an ESP-IDF app or bootloader image
DEFAULT_BAUD = 460800


class FlashError(RuntimeError):
    """esptool failed, or the file is not something to flash."""


def esptool_argv(chip: str, port: str, baud: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "esptool", "--chip", chip, "--port", port, "--baud",
            str(baud), *args]


def flash(port: str, firmware: Path, chip: str = "esp32", erase: bool = False,
          baud: int = DEFAULT_BAUD, echo=click.echo) -> None:
    """Erase (optionally), write ``firmware`` at the chip's offset, and verify it."""
    if chip not in OFFSETS:
        raise FlashError(f"unknown chip {chip!r}; choose from {', '.join(OFFSETS)}")
    data = firmware.read_bytes()
    if not data:
        raise FlashError(f"{firmware} is empty")
    if data[0] != ESP_IMAGE_MAGIC:
        echo(f"warning: {firmware.name} does not start like an ESP image (0x{data[0]:02x}, "
             "expected 0xe9); is it the .bin from micropython.org/download?")
    offset = f"0x{OFFSETS[chip]:x}"
    steps = [("erase", ["erase-flash"])] if erase else []
    steps += [("write", ["write-flash", offset, str(firmware)]),
              ("verify", ["verify-flash", offset, str(firmware)])]
    for name, args in steps:
        echo(f"soundmon flash: {name} ({chip} on {port})")
        done = subprocess.run(esptool_argv(chip, port, baud, *args), check=False)
        if done.returncode != 0:
            raise FlashError(f"esptool {name} failed (exit {done.returncode}); see its "
                             "message above")
    echo(f"soundmon flash: {firmware.name} written at {offset} and verified. Next: "
         "soundmon deploy --port ... --device ID ...")


@click.command("flash")
@click.option("--port", required=True, help="Serial port of the board (/dev/ttyUSB0, COM3, "
                                            "or an esptool URL such as socket://host:port).")
@click.option("--firmware", "firmware", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="MicroPython image (.bin) for the chip, from micropython.org/download.")
@click.option("--chip", type=click.Choice(list(OFFSETS)), default="esp32", show_default=True)
@click.option("--erase", is_flag=True, help="Erase the whole flash first (a blank board, or "
                                            "to wipe an old filesystem).")
@click.option("--baud", type=int, default=DEFAULT_BAUD, show_default=True)
def flash_command(port: str, firmware: Path, chip: str, erase: bool, baud: int) -> None:
    """Write MicroPython onto an ESP32 with esptool, then verify it."""
    try:
        flash(port, firmware, chip, erase, baud)
    except FlashError as err:
        raise click.ClickException(str(err)) from err
