"""``soundmon worker`` and ``soundmon flower``: each runs ``celery -A workers.app`` in its place.

Kept apart from ``workers.app`` on purpose: importing the app (scipy, numba, Celery: about
2 s of CPU) here would be thrown away by the ``exec``, and paid again by Celery.
"""

from __future__ import annotations

import os
import sys

import click

from soundmon import tasknames

#: niceness of the recording worker (0 is normal, 19 the lowest priority)
BACKGROUND_NICE = 10


def _celery_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "workers.app", *args]


@click.command("worker")
@click.argument("queue", type=click.Choice([tasknames.PREPROCESS_QUEUE, tasknames.ANALYZE_QUEUE,
                                           tasknames.RECORDING_QUEUE, tasknames.NOTIFY_QUEUE]))
@click.option("--concurrency", "-c", type=int, default=None,
              help="Worker processes (default 2).")
@click.option("--name", default=None, help="Node name (default QUEUE@%h).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Data directory (default: $SOUNDMON_DATA).")
def worker_command(queue: str, concurrency: int | None, name: str | None, loglevel: str,
                   data_dir: str | None) -> None:
    """Run a Celery worker for the preprocess, analyze, recording or notify queue."""
    if data_dir:
        os.environ["SOUNDMON_DATA"] = data_dir
    # analyze: two processes too, so one slow store step (a batch with many alerts) never
    # holds up the next; the store's write lock keeps each device's analysis whole, and the
    # analysis puts each device's frames back in order (workers.analysis.release_in_order)
    conc = concurrency or 2
    if queue == tasknames.RECORDING_QUEUE:
        # Background work (FLAC rotation, alert clips, file analyses) yields the CPU to the
        # live path: an alert storm's clips once took both cores for seconds and delayed
        # every level by up to 0.7 s (docs/performance.md). Raising one's niceness needs no
        # privilege, in a container too.
        os.nice(BACKGROUND_NICE)
    argv = _celery_argv("worker", "-Q", queue, "-n", name or f"{queue}@%h", "-c", str(conc),
                        "--loglevel", loglevel, "--without-gossip", "--without-mingle")
    os.execv(sys.executable, argv)


@click.command("flower")
@click.option("--port", type=int, default=5555, show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
def flower_command(port: int, address: str) -> None:
    """Run Flower, the Celery monitor that shows each worker's load."""
    os.execv(sys.executable, _celery_argv("flower", f"--port={port}", f"--address={address}"))
