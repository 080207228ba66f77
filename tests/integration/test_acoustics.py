"""Measurement-grade levels through the real pipeline, and `soundmon calibrate --live` on mosquitto."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from soundmon.store import SQLiteStore
from tests.conftest import Stack, wait_until
from tests.helpers import Publisher, hand_frame
from workers.fileanalysis import analyse_samples

pytestmark = pytest.mark.integration

RATE, N = 8000, 4000


def test_streamed_frames_measure_as_the_file_does(stack: Stack) -> None:
    """Frames of one device, streamed in order, store the numbers `analyze` gives the same audio."""
    rng = np.random.default_rng(11)
    t = np.arange(10 * N) / RATE
    audio = np.round(5000 * np.sin(2 * np.pi * 180.0 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.3 * t))
                     + rng.normal(0, 400, t.size) + 700).astype(np.int16)
    k = 100.0
    SQLiteStore(stack.data / "soundmon.db").set_calibration("streamer", k, "test")
    pub = Publisher(stack.mqtt_port)
    store = SQLiteStore(stack.data / "soundmon.db")
    t0 = int(time.time() * 1000)
    for seq in range(10):
        pub.publish("soundmon/v1/streamer/frame",
                    hand_frame(seq, 5, t0 + 500 * seq, RATE, audio[seq * N:(seq + 1) * N].tolist()))
        # the next frame only once this one is stored (its filter state is saved before),
        # so each continues the stream whichever worker process takes it
        wait_until(lambda s=seq: store.count_levels("streamer") == s + 1, what=f"level {seq}")
    pub.close()
    rows = store.levels("streamer", 0, 2**62)
    frames, _ = analyse_samples(audio.astype(float), RATE, k, 500)
    for r, f in zip(rows, frames, strict=True):
        for key in ("laeq", "lceq", "lzeq", "lafmax", "dominant_hz"):
            assert getattr(r, key) == pytest.approx(f[key], abs=0.01), (r.seq, key)
        api = r.api()
        assert len(api["bands_db"]) == len(api["bands_hz"]) == 23
        assert api["lcpeak"] > api["lceq"] and api["lafmin"] <= api["laeq"] <= api["lafmax"]


def test_calibrate_live_from_mqtt(mosquitto: int, tmp_path: Path) -> None:
    """`soundmon calibrate --live` hears a device's 94 dB tone on MQTT and stores its K."""
    amp = 4000.0
    stop = threading.Event()

    def device() -> None:
        pub = Publisher(mosquitto, client_id="fake-device")
        seq, n_sent = 0, 0
        while not stop.is_set():
            i = np.arange(n_sent, n_sent + N)
            samples = np.round(amp * np.sin(2 * np.pi * 1000.0 * i / RATE) - 300).astype(int)
            pub.publish("soundmon/v1/calmic/frame", hand_frame(seq, 42, 0, RATE, samples.tolist()))
            seq, n_sent = seq + 1, n_sent + N
            time.sleep(0.1)
        pub.close()

    thread = threading.Thread(target=device, daemon=True)
    thread.start()
    env = dict(os.environ, SOUNDMON_DATA=str(tmp_path))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "soundmon", "calibrate", "--device", "calmic",
             "--reference-db", "94", "--live", "3", "--broker", f"127.0.0.1:{mosquitto}"],
            env=env, capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        thread.join(10)
    assert result.returncode == 0, result.stdout + result.stderr
    k = SQLiteStore(tmp_path / "soundmon.db").calibrations(["calmic"])["calmic"]
    assert k.calibrated
    assert k.k_db == pytest.approx(94 - 20 * math.log10(amp / math.sqrt(2) / 32768), abs=0.02)
    assert "first calibration" in result.stdout
