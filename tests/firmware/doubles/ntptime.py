"""Test double of micropython-lib's ``ntptime``: fails until the test lets it answer."""

host = "pool.ntp.org"
answers = False
calls = 0


def settime():
    global calls
    calls += 1
    if not answers:
        raise OSError(110)  # ETIMEDOUT, as on a board without a route to the NTP server
