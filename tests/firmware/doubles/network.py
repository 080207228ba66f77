"""Test double of MicroPython's ``network``: a station interface the test switches on and off."""

STA_IF = 0
up = True  # the access point is in range; tests set False for a Wi-Fi outage
connects = 0


class WLAN:
    def __init__(self, interface=STA_IF):
        self._active = False
        self._connected = False

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = on

    def connect(self, ssid, key):
        global connects
        connects += 1
        self._connected = True  # the ESP32 keeps trying in the background from now on

    def isconnected(self):
        return up and self._active and self._connected

    def status(self, param=None):
        return -61 if param == "rssi" else 1010
