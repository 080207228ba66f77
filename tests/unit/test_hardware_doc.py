"""hardware.md's wiring tables agree with the firmware's pin constants (firmware/pins.py)."""

from __future__ import annotations

import re
from pathlib import Path

from firmware import pins

DOC = (Path(__file__).resolve().parents[2] / "hardware.md").read_text()

#: (section heading, pin label in its table) -> the constant that must hold that GPIO
WIRING = {
    ("MAX4466 electret amplifier", "OUT"): "MAX4466_OUT",
    ("LM393 sound-detector module", "DO"): "LM393_DO",
    ("I2S MEMS microphone", "SCK / BCLK"): "I2S_SCK",
    ("I2S MEMS microphone", "WS / LRCL"): "I2S_WS",
    ("I2S MEMS microphone", "SD"): "I2S_SD",
}


def _section(heading: str) -> str:
    start = DOC.index(heading)
    end = DOC.find("\n#", start + 1)
    return DOC[start:end if end > 0 else None]


def _rows(text: str) -> dict[str, str]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and not set(cells[0]) <= set("-"):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_constants_table_lists_every_firmware_pin():
    """The pin table names each constant of firmware/pins.py with its GPIO, and no other."""
    rows = _rows(_section("## Pin table"))
    table = {k: int(v) for k, v in rows.items() if v.isdigit()}
    assert table == pins.PINS


def test_sensor_wiring_tables_match_the_constants():
    """Each sensor's wiring table puts its signals on the GPIOs the firmware uses."""
    for (heading, label), constant in WIRING.items():
        cell = _rows(_section(heading))[label]
        gpio = re.fullmatch(r"GPIO(\d+)", cell)
        assert gpio and int(gpio.group(1)) == pins.PINS[constant], (heading, label, cell)


def test_analog_input_is_on_adc1():
    """The analog microphone sits on ADC1 (GPIO 32-39): ADC2 fails while Wi-Fi is on."""
    assert 32 <= pins.MAX4466_OUT <= 39
