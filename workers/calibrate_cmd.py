"""``soundmon calibrate``: measure K from a calibrator tone, store it with its history, report drift.

The audio comes from a file (``--file CAL.wav``, recorded from the device) or live from the
device (``--live SECONDS``: its kind-1 frames are read from the MQTT broker in the settings).
The measurement itself is ``workers.calibration.measure_tone``.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import click
import numpy as np
import paho.mqtt.client as mqtt

from soundmon.protocol import DEVICE_ID, KIND_PCM, FrameError, decode_frame, topic
from soundmon.settings import get_settings
from soundmon.store import SQLiteStore
from workers.calibration import CalibrationError, measure_tone
from workers.fileanalysis import read_audio
from workers.levels import CLIP_HIGH, CLIP_LOW, FILE_CLIP

#: Two calibrations of one chain more than this apart invalidate the measurements between
#: them (a common criterion, shared/acoustics.md section 5).
DRIFT_WARN_DB = 0.5


def capture_live(device: str, seconds: float, host: str, port: int, prefix: str,
                 username: str | None = None, password: str | None = None) -> tuple[np.ndarray, int]:
    """The device's PCM for ``seconds``: its kind-1 frames from MQTT, the longest gap-free run.

    Raises ``CalibrationError`` when no audio frame arrives or the broker cannot be reached.
    """
    frames: list = []
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(client, userdata, msg):  # noqa: ARG001
        try:
            frame = decode_frame(msg.payload)
        except FrameError:
            return
        if frame.kind == KIND_PCM:
            with lock:
                frames.append(frame)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"soundmon-calibrate-{device}-{int(time.time())}")
    if username:
        client.username_pw_set(username, password)
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda c, *a: c.subscribe(topic(device, "frame", prefix), qos=1)
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise CalibrationError(f"cannot reach the MQTT broker at {host}:{port}: {exc}") from exc
    client.loop_start()
    try:
        if not subscribed.wait(10):
            raise CalibrationError(f"no subscription confirmed by {host}:{port} within 10 s")
        time.sleep(seconds)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        got = sorted(frames, key=lambda f: (f.boot, f.seq))
    if not got:
        raise CalibrationError(f"no audio frames from {device!r} on {host}:{port} in {seconds:g} s; "
                               "is the device online and sending PCM (kind 1)?")
    runs, run = [], [got[0]]
    for f in got[1:]:
        prev = run[-1]
        if f.boot == prev.boot and f.seq == prev.seq + 1 and f.rate == prev.rate:
            run.append(f)
        elif not (f.boot == prev.boot and f.seq == prev.seq):  # skip duplicates
            runs.append(run)
            run = [f]
    runs.append(run)
    best = max(runs, key=lambda r: sum(f.count for f in r))
    return np.concatenate([f.samples() for f in best]).astype(np.float64), best[0].rate


@click.command("calibrate")
@click.option("--device", required=True, help="Device id.")
@click.option("--reference-db", type=float, required=True,
              help="The calibrator's level in dB SPL (e.g. 94 or 114).")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A WAV/FLAC recording of the calibrator through the device.")
@click.option("--live", type=click.FloatRange(min=1.0), default=None,
              help="Listen to the device's frames on MQTT for this many seconds.")
@click.option("--frequency", type=float, default=1000.0, show_default=True,
              help="The calibrator's nominal frequency in Hz.")
@click.option("--broker", default=None, metavar="HOST:PORT",
              help="MQTT broker for --live (default: SOUNDMON_MQTT_HOST/PORT).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data directory (default: $SOUNDMON_DATA).")
@click.option("--dry-run", is_flag=True, help="Measure and report, but store nothing.")
def calibrate_command(device: str, reference_db: float, file_: Path | None, live: float | None,
                      frequency: float, broker: str | None, data_dir: Path | None,
                      dry_run: bool) -> None:
    """Measure a device's calibration offset K from a calibrator tone and store it."""
    if (file_ is None) == (live is None):
        raise click.UsageError("give exactly one of --file CAL.wav or --live SECONDS")
    if not DEVICE_ID.match(device):
        raise click.UsageError(f"bad device id {device!r}")
    settings = get_settings()
    host, port = settings.mqtt_host, settings.mqtt_port
    if broker:
        host, _, port_text = broker.rpartition(":")
        if not host or not port_text.isdigit():
            raise click.UsageError(f"--broker wants HOST:PORT, got {broker!r}")
        port = int(port_text)
    try:
        if file_ is not None:
            audio = read_audio(file_)
            x, rate, clip, source = audio.samples, audio.rate_hz, FILE_CLIP, "calibrate:file"
        else:
            x, rate = capture_live(device, float(live or 0), host, port, settings.mqtt_prefix,
                                   settings.mqtt_username, settings.mqtt_password)
            clip, source = (CLIP_LOW, CLIP_HIGH), "calibrate:live"
        m = measure_tone(x, rate, reference_db, frequency, clip)
    except CalibrationError as exc:
        raise click.ClickException(f"calibration refused: {exc}") from exc

    store = SQLiteStore((data_dir / "soundmon.db") if data_dir else settings.db_path)
    previous = [h for h in store.calibration_history(device) if h["offset_db"] is not None]
    click.echo(f"{device}: {m.tone_hz:.1f} Hz tone at {m.tone_dbfs:.2f} dBFS over {m.duration_s:.1f} s "
               f"(steady within {m.spread_db:.2f} dB, {m.snr_db:.0f} dB above the rest)")
    click.echo(f"K = {reference_db:g} - ({m.tone_dbfs:.2f}) = {m.k_db:.2f} dB")
    if previous:
        last = previous[-1]
        drift = m.k_db - last["offset_db"]
        when = datetime.fromtimestamp(last["t_ms"] / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
        click.echo(f"previous K = {last['offset_db']:.2f} dB ({when}, {last['source']}): "
                   f"drift {drift:+.2f} dB")
        if abs(drift) > DRIFT_WARN_DB:
            click.echo(f"warning: drift beyond {DRIFT_WARN_DB} dB: the chain changed (gain, "
                       "microphone, supply) or one of the calibrations is wrong; levels measured "
                       "between the two are doubtful", err=True)
    else:
        click.echo("first calibration of this device")
    if dry_run:
        click.echo("dry run: nothing stored")
        return
    store.set_calibration(device, round(m.k_db, 3), source, reference_db, m.as_dict())
    click.echo(f"stored: levels of {device} from now on are dBFS + {m.k_db:.2f} dB")
