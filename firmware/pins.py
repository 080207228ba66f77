"""Every GPIO the firmware uses, in one place (hardware.md's wiring tables are checked against it).

Pins are for a classic ESP32 DevKitC / WROOM-32 board. The analog input must be on ADC1
(GPIO 32-39): ADC2 cannot be read while Wi-Fi is on. GPIO 34-39 are input only, which
suits a microphone. The I2S pins avoid the strapping pins (0, 2, 5, 12, 15).
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):  # type: ignore[misc]
        return value


# MAX4466 breakout: OUT -> ADC1 channel 6
MAX4466_OUT = const(34)

# LM393 "sound detector" module: DO (open collector, active low) -> any input with pull-up
LM393_DO = const(27)

# I2S MEMS microphone (INMP441, ICS-43434): SCK = bit clock, WS = word select, SD = data
I2S_SCK = const(26)
I2S_WS = const(25)
I2S_SD = const(33)
I2S_ID = const(0)  # machine.I2S peripheral number

# On-board LED (DevKitC has none on GPIO 2; most clones do): lit while connected
STATUS_LED = const(2)

#: name -> GPIO, the table hardware.md's wiring tables must match
PINS = {
    "MAX4466_OUT": MAX4466_OUT,
    "LM393_DO": LM393_DO,
    "I2S_SCK": I2S_SCK,
    "I2S_WS": I2S_WS,
    "I2S_SD": I2S_SD,
    "STATUS_LED": STATUS_LED,
}
