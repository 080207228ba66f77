"""``soundmon simulate``: simulated ESP32 sound sensors publishing synthetic scenes to MQTT.

``simulate`` runs N boards (``soundmon.simdevice``) playing scenes (``soundmon.scenes``)
from one thread: each pass publishes the frames that are due, then waits on all the
boards' sockets at once for PUBACKs. That beats a thread per board by half again on two
cores (no GIL hand-offs between a publisher and paho's network thread) and scales to
thousands of boards. Ctrl-C and SIGTERM stop it cleanly: last PUBACKs, retained offline
statuses, DISCONNECT.

Errors: ``SimulatorError`` and its subclasses ``BadArguments`` and ``BrokerError``
(``soundmon.simdevice``); the command turns them into click errors.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np
from pydantic import ValidationError

from soundmon.protocol import DEFAULT_PREFIX, DEVICE_ID
from soundmon.scenes import SCENES, Scene
from soundmon.settings import get_settings
from soundmon.simdevice import (
    DRAIN_TIMEOUT_S,
    BadArguments,
    BrokerError,
    Poller,
    RunConfig,
    SimDevice,
    SimulatorError,
)

__all__ = ["BadArguments", "BrokerError", "SimulatorError", "simulate", "simulate_command"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
POLL_S = 0.1  # longest wait on the sockets: how quickly a stop or a due frame is seen


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM set ``stop`` (a second Ctrl-C aborts); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _device_seed(seed: int, index: int) -> int:
    """An independent scene seed for device ``index`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def simulate(devices: int, broker_host: str = "127.0.0.1", broker_port: int = 1883,
             scene: str | Scene | None = None, rate: int = 8000, frame_ms: int = 500,
             duration_s: float | None = None, frames: int | None = None, speed: float = 1.0,
             full_speed: bool = False, prefix: str = DEFAULT_PREFIX, seed: int = 0,
             device_prefix: str = "sim", username: str | None = None,
             password: str | None = None, stop: threading.Event | None = None,
             credentials: dict[str, tuple[str, str]] | None = None,
             ram_frames: int | None = None, file_records: int | None = None,
             on_start: Callable[[list[SimDevice]], None] | None = None) -> dict[str, Any]:
    """Run simulated boards against an MQTT broker until a limit, Ctrl-C, SIGTERM or ``stop``.

    Parameters
    ----------
    devices : int, boards to run, named ``{device_prefix}-00``, ``-01``, ...
    scene : a name of ``SCENES`` or a ``Scene`` for every board; None cycles through SCENES.
    rate : int, sample rate in Hz (the frame header's u16); frame_ms : int, frame length in ms.
    duration_s : float, stop after this many seconds of wall-clock time.
    frames : int, stop after this many frames per board.
    speed : float, simulated seconds per wall-clock second when pacing in real time.
    full_speed : bool, publish as fast as the broker acknowledges; ``t0_ms`` still advances
        by one frame per frame (simulated time).
    seed : int, scene randomness; each board derives its own from it.
    stop : threading.Event, optional; set it (from another thread) to stop the run.
    credentials : dict, device id -> (username, password) of its own broker account
        (``soundmon provision``); otherwise every device uses ``username``/``password``.
    ram_frames, file_records : int, each device's outage buffer (firmware.backlog):
        frames kept in RAM, then per-second level records in its ring file; the firmware's
        defaults if None.
    on_start : called with the devices once all are connected (tests watch them).

    Returns
    -------
    dict: ``published`` (frames captured) and ``acked`` (messages the broker acknowledged:
    frames, and level frames made during an outage), all boards; ``undelivered`` (frames
    and records still held at the end) and ``dropped`` (records the full outage buffer
    overwrote); ``elapsed_s`` (s, first frame to last acknowledgement), ``fps``
    (acknowledged per s) and ``devices``, one dict per board (``device``, ``scene``,
    ``boot``, ``published``, ``acked``, ``undelivered``, ``dropped``).
    """
    samples_per_frame = _check_arguments(devices, scene, rate, frame_ms, duration_s, frames,
                                         speed, device_prefix)
    cycle = list(SCENES.values())
    scenes = [SCENES[scene] if isinstance(scene, str) else scene or cycle[i % len(cycle)]
              for i in range(devices)]
    stop = stop or threading.Event()
    with tempfile.TemporaryDirectory(prefix="soundmon-sim-") as backlog_dir:
        buffers = {k: v for k, v in (("ram_frames", ram_frames), ("file_records", file_records))
                   if v is not None}
        run = RunConfig(broker_host, broker_port, prefix, rate, frame_ms, samples_per_frame,
                        speed, full_speed, frames, username, password,
                        backlog_dir=Path(backlog_dir), credentials=credentials, **buffers)
        sims = [SimDevice(f"{device_prefix}-{i:02d}", scenes[i], _device_seed(seed, i), run)
                for i in range(devices)]
        for sim in sims:
            sim.stream.warm()  # render each scene's noise banks before the clock starts
        poller = Poller()
        elapsed = 0.0
        with _stop_on_signals(stop):
            try:
                _connect_all(sims, poller, f"{broker_host}:{broker_port}")
                if on_start:
                    on_start(sims)
                elapsed = _publish(sims, poller, run, stop, duration_s)
            finally:
                _say_goodbye(sims, poller)
                for sim in sims:
                    sim.backlog.close()
        return _report(sims, elapsed)


def _check_arguments(devices: int, scene: str | Scene | None, rate: int, frame_ms: int,
                     duration_s: float | None, frames: int | None, speed: float,
                     device_prefix: str) -> int:
    """Raise BadArguments for anything out of range; return the samples per frame."""
    samples_per_frame = round(rate * frame_ms / 1000)
    last = f"{device_prefix}-{devices - 1:02d}"  # the longest name
    if devices < 1 or not DEVICE_ID.match(f"{device_prefix}-00") or not DEVICE_ID.match(last):
        raise BadArguments(f"need at least 1 device, named like {last!r} matching "
                           f"{DEVICE_ID.pattern}")
    if not 0 < rate <= 0xFFFF or not 0 < samples_per_frame <= 0xFFFF:
        raise BadArguments(f"rate {rate} Hz and frame {frame_ms} ms give {samples_per_frame} "
                           "samples per frame; the frame header needs 1..65535 of each")
    if speed <= 0 or (frames is not None and frames < 1) or (duration_s or 0) < 0:
        raise BadArguments("speed must be > 0, frames >= 1 and duration >= 0")
    if isinstance(scene, str) and scene not in SCENES:
        raise BadArguments(f"unknown scene {scene!r}; choose from {', '.join(SCENES)}")
    return samples_per_frame


def _publish(sims: list[SimDevice], poller: Poller, run: RunConfig, stop: threading.Event,
             duration_s: float | None) -> float:
    """Publish until every device is done, the duration is up or ``stop`` is set, then wait
    for the last PUBACKs. Returns the elapsed time in s."""
    start = time.monotonic()
    start_unix_ms = time.time_ns() // 1_000_000
    end = float("inf") if duration_s is None else start + duration_s
    while not stop.is_set() and time.monotonic() < end:
        active = [sim for sim in sims if not sim.finished()]
        if not active:
            break
        now = time.monotonic()
        sent = False
        for sim in active:  # one frame per device per pass: fair at full speed
            if sim.ready(now, start):
                sim.publish_frame(start_unix_ms)
                sent = True
        next_due = now if run.full_speed else min(sim.due(start) for sim in active)
        poller.poll(sims, 0.0 if sent else min(POLL_S, max(0.0, next_due - now)))
    _wait_for(lambda: not any(sim.pending or not sim.backlog.empty() for sim in sims), sims,
              poller)
    return time.monotonic() - start


def _say_goodbye(sims: list[SimDevice], poller: Poller) -> None:
    """Retained offline statuses, their PUBACKs, then DISCONNECT (so no will is sent)."""
    for sim in sims:
        sim.close()
    _wait_for(lambda: all(sim.said_goodbye() for sim in sims), sims, poller)
    for sim in sims:
        sim.client.disconnect()
    poller.close()


def _connect_all(sims: list[SimDevice], poller: Poller, where: str) -> None:
    """Connect every device and wait for all CONNACKs; SimulatorError if any fails."""
    for sim in sims:
        sim.connect()
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while not all(sim.connected for sim in sims):
        refused = next((sim for sim in sims if sim.refused), None)
        if refused and sim.run.credentials and time.monotonic() < deadline:
            # just provisioned: the broker may not have reloaded its password file yet
            refused.refused = None
            time.sleep(0.2)
            refused.connect()
            continue
        if refused or time.monotonic() > deadline:
            name, why = (refused.name, refused.refused) if refused else ("a device", "no answer")
            raise BrokerError(f"the MQTT broker at {where} did not accept {name}: {why}")
        poller.poll(sims, 0.05)


def _wait_for(done: Callable[[], bool], sims: list[SimDevice], poller: Poller) -> None:
    """Keep the clients running until ``done()`` or DRAIN_TIMEOUT_S."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while not done() and time.monotonic() < deadline:
        poller.poll(sims, 0.05)


def _report(sims: list[SimDevice], elapsed: float) -> dict[str, Any]:
    """The stats dict of ``simulate``, also printed as one line."""
    acked = sum(sim.acked for sim in sims)
    devices = [{"device": sim.name, "scene": sim.scene.name, "boot": sim.boot,
                "published": sim.published, "acked": sim.acked,
                "undelivered": len(sim.pending) + sim.backlog.buffered(),
                "dropped": sim.backlog.dropped} for sim in sims]
    stats = {
        "published": sum(sim.published for sim in sims), "acked": acked,
        "undelivered": sum(d["undelivered"] for d in devices),
        "dropped": sum(d["dropped"] for d in devices),
        "elapsed_s": elapsed, "fps": acked / elapsed if elapsed > 0 else 0.0,
        "devices": devices,
    }
    used = ", ".join(dict.fromkeys(sim.scene.name for sim in sims))
    print(f"simulate: {len(sims)} device(s) ({used}) published {stats['published']} frames, "
          f"{acked} acknowledged in {elapsed:.2f} s ({stats['fps']:.0f} frames/s)", flush=True)
    return stats


def _broker(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``HOST`` (port 1883) -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or host.count(":") and not host.startswith("["):
        host, port = value, "1883"  # no port given (or a bare IPv6 address)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) <= 0xFFFF:
        raise click.BadParameter(f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:1883",
                                 param_hint="--broker")
    return host, int(port)


_SCENE_HELP = "\n".join(f"  {s.name:<10} {s.summary}" for s in SCENES.values())


@click.command("simulate", help=f"""Run simulated ESP32 sound sensors that publish to MQTT.

Each device is its own MQTT client, named DEVICE_PREFIX-00, -01, ... It publishes a
retained online status, then an audio frame every FRAME_MS (protocol v1: 16-bit PCM at
QoS 1) from a synthetic sound scene, and goes offline cleanly at the end, on Ctrl-C or
on SIGTERM. It prints a one-line summary; it exits 1 if the broker did not acknowledge
every frame.

\b
Scenes (default: each device a different one, in this order):
{_SCENE_HELP}

\b
Examples:
  soundmon simulate --devices 4                      # real time, until Ctrl-C
  soundmon simulate --devices 1 --scene alarm --duration 30
  soundmon simulate --devices 4 --full-speed --frames 2000   # load test
""")
@click.option("--devices", "-n", type=click.IntRange(1, 10_000), default=4, show_default=True,
              help="Number of simulated devices.")
@click.option("--broker", metavar="HOST:PORT", default=None,
              help="MQTT broker [default: $SOUNDMON_MQTT_HOST:$SOUNDMON_MQTT_PORT, "
                   "else 127.0.0.1:1883].")
@click.option("--scene", type=click.Choice(list(SCENES)), default=None,
              help="One scene for every device [default: a different one per device].")
@click.option("--rate", type=click.IntRange(1, 0xFFFF), default=8000, show_default=True,
              help="Sample rate in Hz, as an ESP32 ADC would sample.")
@click.option("--frame-ms", type=click.IntRange(1, 60_000), default=500, show_default=True,
              help="Audio per frame, in ms.")
@click.option("--duration", type=click.FloatRange(min=0), default=None,
              help="Stop after this many seconds (wall clock) [default: never].")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Stop after this many frames per device [default: never].")
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Simulated seconds per real second (2 = twice as fast).")
@click.option("--full-speed", is_flag=True,
              help="Publish as fast as the broker acknowledges (a load test); frame "
                   "timestamps still advance by FRAME_MS per frame.")
@click.option("--device-prefix", default="sim", show_default=True,
              help="Device id prefix; give each simulator on one broker its own.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the scenes' randomness: the same seed renders the same sound.")
@click.option("--provision", is_flag=True,
              help="Give each device its own broker account in $SOUNDMON_DATA first "
                   "(soundmon provision), as `soundmon up` does; a running broker of "
                   "`soundmon up` reloads them.")
def simulate_command(devices: int, broker: str | None, scene: str | None, rate: int,
                     frame_ms: int, duration: float | None, frames: int | None, speed: float,
                     full_speed: bool, device_prefix: str, seed: int,
                     provision: bool = False) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = get_settings()
    except ValidationError as err:
        raise click.ClickException(f"invalid SOUNDMON_* environment variable: {err}") from err
    host, port = _broker(broker) if broker else (settings.mqtt_host, settings.mqtt_port)
    credentials = None
    if provision:
        from soundmon.provision import provision_many

        names = [f"{device_prefix}-{i:02d}" for i in range(devices)]
        credentials = provision_many(names, settings.data_dir, settings.mqtt_prefix)
    try:
        stats = simulate(devices, host, port, scene=scene, rate=rate, frame_ms=frame_ms,
                         duration_s=duration, frames=frames, speed=speed,
                         full_speed=full_speed, prefix=settings.mqtt_prefix, seed=seed,
                         device_prefix=device_prefix, username=settings.mqtt_username,
                         password=settings.mqtt_password, credentials=credentials)
    except BadArguments as err:
        raise click.UsageError(str(err)) from err
    except BrokerError as err:
        raise click.ClickException(f"{err}. Is mosquitto running there? Set --broker or "
                                   "SOUNDMON_MQTT_HOST/SOUNDMON_MQTT_PORT.") from err
    if stats["undelivered"] or stats["dropped"]:
        raise click.ClickException(
            f"{stats['undelivered']} frames or level records were not acknowledged by the "
            f"broker, {stats['dropped']} level records were dropped by a full outage buffer")
