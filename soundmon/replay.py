"""``soundmon replay``: a WAV/FLAC file or a device's recording, sent again as a virtual device.

The audio goes out as protocol-v1 kind-1 frames (shared/protocol.md) at QoS 1 on
``soundmon/v1/<replay device>/frame``, so it takes the live pipeline's whole road: gateway,
preprocess, analyze, alerts. The replay device has its own id (default ``replay-<name>``) and
a new random boot, so its levels never mix with live data.

* A file is cut into frames of ``--frame-ms`` (default 1000 ms, as ``soundmon analyze``), so
  its levels match ``soundmon analyze FILE`` frame for frame; a rate above what the frame
  header holds (65535 Hz) is resampled with scipy to 48 kHz. Frame times start now.
* ``recording:DEVICE`` sends the recorded frames as they were (same sizes, same times).
  Where the recording has a gap, the replayed ``seq`` skips one, so the pipeline restarts
  its filters there exactly as it did for the original.

Pacing: real time by default, ``--speed`` times faster. Frames due are sent in bursts at
most every ``BURST_S``, so consecutive frames of a fast replay reach the pipeline in one
batch and its filter state carries from frame to frame as for a live device.

Broker account: the command publishes with ``--username``/``--password`` (default
``SOUNDMON_MQTT_USERNAME``/``_PASSWORD``), or with an account of the replay device made by
``--provision`` in the data directory, which works where the broker reads that directory
(``soundmon up``). Replays started from the dashboard run in the recording worker and publish
with that worker's own account, ``svc.replay`` (soundmon.provision), on one host as under
Docker Compose: no account is made per replay. ``svc.replay`` may publish as any device, so
``refuse_live_device`` keeps those replays off the ids of real devices.

Errors: ``ReplayError`` (bad source, span or broker), turned into click errors by the command.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from soundmon.protocol import DEVICE_ID, KIND_PCM, encode_frame, topic
from soundmon.recording import Recording, RecordingError, parse_time, runs

MAX_RATE_HZ = 0xFFFF  # the frame header's u16 rate
RESAMPLE_TO_HZ = 48_000  # what an I2S MEMS microphone sends (hardware.md)
BURST_S = 0.2  # s between bursts of due frames
WINDOW = 100  # unacknowledged frames at most: the broker sets the pace
CONNECT_TIMEOUT_S = 10.0
DRAIN_TIMEOUT_S = 30.0
REPLAY_FW = "soundmon-replay"  # the "fw" of a replay device's status


class ReplayError(Exception):
    """A source, span or broker problem; the message says what to do."""


@dataclass(frozen=True, slots=True)
class OutFrame:
    """One frame to send: ``restart`` makes the seq skip one (the original had a gap)."""

    t0_ms: int
    rate: int
    samples: np.ndarray  # int16
    restart: bool = False


@dataclass
class Source:
    """Frames to replay, their count and audio length, and the status fields to announce."""

    name: str
    frames: Iterator[OutFrame]
    total: int
    audio_s: float
    rate: int
    frame_ms: int
    sensor: str | None = None
    k_db: float | None = None  # the original device's K, when calibrated


def default_device(name: str) -> str:
    """``replay-<name>`` squeezed into a device id (lower case, [a-z0-9_-], 32 characters)."""
    clean = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_") or "file"
    return f"replay-{clean}"[:32].rstrip("-_")


def refuse_live_device(device: str, info: dict[str, Any] | None) -> None:
    """``ReplayError`` if ``device`` (the store's ``device()`` of it) is a real device: one
    that announced firmware other than a replay's. Unknown ids and earlier replays pass."""
    fw = (info or {}).get("fw")
    if fw is not None and fw != REPLAY_FW:
        raise ReplayError(f"{device} is a live device (firmware {fw!r}); a replay must not "
                          f"publish as it: choose another id, e.g. {default_device(device)}")


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def file_source(path: Path, frame_ms: float = 1000, start_s: float | None = None,
                end_s: float | None = None, now: int | None = None) -> Source:
    """Frames of a WAV/FLAC file (first channel), cut as ``soundmon analyze`` cuts them."""
    from soundmon.recording import resample
    from workers.fileanalysis import read_audio

    try:
        audio = read_audio(path)
    except click.ClickException as exc:
        raise ReplayError(exc.message) from exc
    rate, x = audio.rate_hz, audio.samples
    a = 0 if start_s is None else int(round(start_s * rate))
    b = x.size if end_s is None else int(round(end_s * rate))
    x = x[max(a, 0): max(b, 0)]
    if x.size == 0:
        raise ReplayError(f"{path}: no samples in the span asked for")
    samples = to_int16(x)
    if rate > MAX_RATE_HZ:
        samples, rate = resample(samples, rate, RESAMPLE_TO_HZ), RESAMPLE_TO_HZ
    n = max(1, int(round(rate * frame_ms / 1000)))
    if n > 0xFFFF:
        raise ReplayError(f"--frame-ms {frame_ms:g} at {rate} Hz is {n} samples; a frame holds "
                          "at most 65535")
    t0 = now if now is not None else int(time.time() * 1000)

    def frames() -> Iterator[OutFrame]:
        for i in range(0, samples.size, n):
            yield OutFrame(t0 + i * 1000 // rate, rate, samples[i: i + n])

    return Source(path.stem, frames(), -(-samples.size // n), samples.size / rate, rate,
                  int(frame_ms))


def recording_source(data_dir: Path, device: str, start_ms: int, end_ms: int,
                     default_enabled: bool = True) -> Source:
    """The recorded frames of ``device`` in ``[start_ms, end_ms)``, with their own times."""
    rec = Recording(data_dir, default_enabled)
    rows = [dict(r) for r in rec.frame_rows(device, start_ms, end_ms)]
    if not rows:
        raise ReplayError(f"nothing recorded for {device} in that span (see GET "
                          f"/api/recordings/{device})")
    audio_s = sum(r["n"] / r["rate"] for r in rows)
    first_of_run = {(run[0]["boot"], run[0]["seq"]) for run in runs(rows)}
    sensor, k_db = _device_calibration(data_dir, device)

    def frames() -> Iterator[OutFrame]:
        prev_boot = None
        for f in rec.frames(device, start_ms, end_ms):
            restart = prev_boot is not None and ((f.boot, f.seq) in first_of_run
                                                 or f.boot != prev_boot)
            prev_boot = f.boot
            yield OutFrame(f.t_ms, f.rate, f.samples, restart)

    first, last = rows[0], rows[-1]
    end_ms = last["t_ms"] + 1  # frames recorded from now on are not part of this replay
    return Source(device, frames(), len(rows), audio_s, first["rate"],
                  int(round(1000 * first["n"] / first["rate"])), sensor, k_db)


def _device_calibration(data_dir: Path, device: str) -> tuple[str | None, float | None]:
    """The original device's sensor and, if calibrated, its K (from the local store)."""
    db = data_dir / "soundmon.db"
    if not db.exists():
        return None, None
    from soundmon.store import SQLiteStore

    info = SQLiteStore(db).device(device) or {}
    return info.get("sensor"), info.get("calibration_db") if info.get("calibrated") else None


def replay(source: Source, device: str, host: str, port: int, speed: float = 1.0,
           username: str | None = None, password: str | None = None,
           prefix: str = "soundmon", stop: threading.Event | None = None,
           on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Publish ``source`` as ``device``; returns counts and times. Stops early on ``stop``."""
    import paho.mqtt.client as mqtt

    if not DEVICE_ID.match(device):
        raise ReplayError(f"{device!r} is not a device id ({DEVICE_ID.pattern})")
    if speed <= 0:
        raise ReplayError("--speed must be > 0")
    stop = stop or threading.Event()
    boot = secrets.randbits(32)
    status_topic, frame_topic = topic(device, "status", prefix), topic(device, "frame", prefix)
    offline = json.dumps({"state": "offline"})
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device}-{boot:08x}")
    client.will_set(status_topic, offline, qos=1, retain=True)
    client.max_inflight_messages_set(WINDOW)
    if username:
        client.username_pw_set(username, password)
    connected, refused = threading.Event(), []

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        (refused.append(str(rc)) if rc.is_failure else connected.set())

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise ReplayError(f"cannot reach the MQTT broker at {host}:{port}: {exc}") from exc
    client.loop_start()
    sent = acked = seq = 0
    pending: list[Any] = []
    started = time.monotonic()
    try:
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not connected.wait(0.1):
            if refused or time.monotonic() > deadline:
                raise ReplayError(f"the MQTT broker at {host}:{port} did not accept {device}: "
                                  f"{refused[0] if refused else 'no answer'} (give --username/"
                                  "--password or --provision)")
        status = {"state": "online", "fw": REPLAY_FW, "rate": source.rate,
                  "frame_ms": source.frame_ms, "replay_of": source.name}
        if source.sensor:
            status["sensor"] = source.sensor
        client.publish(status_topic, json.dumps(status), qos=1, retain=True).wait_for_publish(10)
        # the first frame goes at once, then bursts: never two batches of one stream in flight
        audio_sent_s, last_burst = 0.0, started
        for frame in source.frames:
            due = started + audio_sent_s / speed  # when the frame's first sample was "captured"
            now = time.monotonic()
            if due > now:  # everything due went out: wait for the next burst
                stop.wait(max(due - now, last_burst + BURST_S - now))  # Ctrl-C ends it at once
                last_burst = time.monotonic()
            while sum(not p.is_published() for p in pending) >= WINDOW and not stop.is_set():
                time.sleep(0.005)
            if stop.is_set():
                break
            seq += 2 if frame.restart else 1
            payload = encode_frame(KIND_PCM, (seq - 1) & 0xFFFFFFFF, boot, frame.t0_ms,
                                   frame.rate, frame.samples.astype("<i2"))
            pending.append(client.publish(frame_topic, payload, qos=1))
            pending = [p for p in pending if not p.is_published()] if len(pending) > WINDOW \
                else pending
            sent += 1
            audio_sent_s += frame.samples.size / frame.rate
            if on_progress:
                on_progress(sent)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while any(not p.is_published() for p in pending) and time.monotonic() < deadline:
            time.sleep(0.02)
        unacked = sum(not p.is_published() for p in pending)
        acked = sent - unacked
        client.publish(status_topic, offline, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
    return {"device": device, "boot": boot, "frames": sent, "acked": acked,
            "total": source.total, "stopped": stop.is_set(),
            "elapsed_s": round(time.monotonic() - started, 3)}


def credentials_for(device: str, data_dir: Path, prefix: str) -> tuple[str, str]:
    """Provision the replay device's own broker account (as ``soundmon simulate --provision``)."""
    from soundmon.provision import provision

    creds = provision(device, data_dir, prefix)
    return creds["username"], creds["password"]


def connect_with_retries(run: Callable[[], dict[str, Any]], tries: int = 10) -> dict[str, Any]:
    """A just-provisioned account may take the broker a moment to reload: retry a refusal."""
    for attempt in range(tries):
        try:
            return run()
        except ReplayError as exc:
            if "did not accept" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(0.3)
    raise AssertionError("unreachable")


def open_source(source: str, data_dir: Path, start: str | None, end: str | None,
                frame_ms: float | None, default_enabled: bool = True) -> Source:
    """``recording:DEVICE`` (times: ISO, Unix ms or -N[smhd]) or a file (times: seconds)."""
    if source.startswith("recording:"):
        device = source.split(":", 1)[1]
        if not DEVICE_ID.match(device):
            raise ReplayError(f"{device!r} is not a device id")
        try:
            start_ms = parse_time(start, "--start") if start else 0
            end_ms = parse_time(end, "--end") if end else int(time.time() * 1000)
        except RecordingError as exc:
            raise ReplayError(str(exc)) from exc
        if end_ms <= start_ms:
            raise ReplayError("--end must be after --start")
        return recording_source(data_dir, device, start_ms, end_ms, default_enabled)
    path = Path(source)
    if not path.is_file():
        raise ReplayError(f"{source}: no such file (or use recording:DEVICE)")
    try:
        start_s = float(start) if start else None
        end_s = float(end) if end else None
    except ValueError as exc:
        raise ReplayError("for a file, --start and --end are seconds from its start") from exc
    return file_source(path, frame_ms or 1000, start_s, end_s)


def _broker(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``HOST`` (port 1883)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, "1883"
    if not host or not port.isdigit() or not 0 < int(port) <= 0xFFFF:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint="--broker")
    return host.strip("[]"), int(port)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM set ``stop``: the replay ends after the frame in hand."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.command("replay")
@click.argument("source")
@click.option("--device", default=None,
              help="Device id of the replay [default: replay-<file name or device>].")
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Audio seconds per real second (20 = twenty times faster).")
@click.option("--broker", metavar="HOST:PORT", default=None,
              help="MQTT broker [default: $SOUNDMON_MQTT_HOST:$SOUNDMON_MQTT_PORT].")
@click.option("--start", default=None, help="recording: ISO 8601, Unix ms or -8h (ago); "
                                            "file: seconds from its start.")
@click.option("--end", default=None, help="As --start [default: the end].")
@click.option("--frame-ms", type=click.FloatRange(min=1), default=None,
              help="File only: audio per frame [default 1000, as soundmon analyze].")
@click.option("--username", default=None, help="MQTT user [default: $SOUNDMON_MQTT_USERNAME].")
@click.option("--password", default=None, help="MQTT password.")
@click.option("--provision", is_flag=True,
              help="Create the replay device's broker account in the data directory first "
                   "(as soundmon simulate --provision); needed by `soundmon up`'s broker "
                   "unless you give --username/--password.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Data directory [default: $SOUNDMON_DATA].")
def replay_command(source: str, device: str | None, speed: float, broker: str | None,
                   start: str | None, end: str | None, frame_ms: float | None,
                   username: str | None, password: str | None, provision: bool,
                   data_dir: Path | None) -> None:
    """Replay SOURCE (a WAV/FLAC file or recording:DEVICE) through the pipeline as a device."""
    from soundmon.settings import get_settings

    settings = get_settings()
    data = (data_dir or settings.data_dir).resolve()
    host, port = _broker(broker) if broker else (settings.mqtt_host, settings.mqtt_port)
    try:
        src = open_source(source, data, start, end, frame_ms, settings.recording_default)
        device = device or default_device(src.name)
        if src.k_db is not None and (data / "soundmon.db").exists():
            from soundmon.store import SQLiteStore  # the original's K, so the levels compare

            SQLiteStore(data / "soundmon.db").set_calibration(device, src.k_db, "replay")
        if provision:
            username, password = credentials_for(device, data, settings.mqtt_prefix)
        elif username is None:
            username, password = settings.mqtt_username, settings.mqtt_password
        stop = threading.Event()
        click.echo(f"replay: {source} as {device}: {src.total} frames, {src.audio_s:.1f} s of "
                   f"audio at {src.rate} Hz, speed {speed:g} -> mqtt://{host}:{port}", err=True)
        with _stop_on_signals(stop), click.progressbar(length=src.total, label="replay",
                                                        file=click.get_text_stream("stderr")) as bar:
            done = [0]

            def progress(n: int) -> None:
                bar.update(n - done[0])
                done[0] = n

            result = connect_with_retries(lambda: replay(
                src, device, host, port, speed, username, password, settings.mqtt_prefix,
                stop, progress))
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(result))
    if result["stopped"]:
        click.echo(f"replay: stopped after {result['frames']} of {result['total']} frames",
                   err=True)
    if result["acked"] < result["frames"]:
        raise click.ClickException(f"{result['frames'] - result['acked']} frames were not "
                                   "acknowledged by the broker")
