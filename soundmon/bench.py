"""``soundmon bench``: the benchmarks of docs/performance.md (run from a source checkout).

The harness lives in the checkout's ``bench/`` package (it writes ``bench/results/`` and
``docs/performance.md`` next to it); this is its command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]


@click.command("bench")
@click.option("--quick", is_flag=True,
              help="A small run of every phase (about a minute on a quiet machine): checks the "
                   "harness, not speed.")
@click.option("--devices", type=click.IntRange(1, 1000), default=None,
              help="Full-speed devices in the throughput phases [8; quick 4].")
@click.option("--ceiling-frames", type=click.IntRange(1), default=None,
              help="Frames per device for the transport ceiling [5000].")
@click.option("--naive-frames", type=click.IntRange(1), default=None,
              help="Frames per device for the naive baseline [400].")
@click.option("--soundmon-frames", type=click.IntRange(1), default=None,
              help="Frames per device for soundmon's throughput [2500].")
@click.option("--latency-s", type=click.FloatRange(1), default=None,
              help="Seconds of the half-load latency run [60].")
@click.option("--scale-hold", type=click.FloatRange(1), default=None,
              help="Seconds each scale step is held [60; the issue's figure needs 300].")
@click.option("--scale-steps", type=click.IntRange(0, 50), default=None,
              help="Most device counts tried [4].")
@click.option("--scale-start", type=click.IntRange(0), default=None,
              help="First device count [0: 70% of the measured throughput].")
@click.option("--scale-max", type=click.IntRange(1, 10_000), default=None,
              help="Largest device count tried [4000].")
@click.option("--profile", is_flag=True,
              help="py-spy the gateway and preprocess worker during soundmon's throughput phase "
                   "(speedscope JSON next to the results).")
@click.option("--set", "settings", multiple=True, metavar="SOUNDMON_X=VALUE",
              help="A setting for soundmon's parts in this run, e.g. "
                   "SOUNDMON_BATCH_MAX_FRAMES=256 (repeatable).")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where <date>.json goes [bench/results].")
@click.option("--docs", "docs_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where performance.png and the results section of performance.md go "
                   "[docs; quick runs: nowhere].")
def bench_command(quick: bool, devices: int | None, ceiling_frames: int | None,
                  naive_frames: int | None, soundmon_frames: int | None, latency_s: float | None,
                  scale_hold: float | None, scale_steps: int | None, scale_start: int | None,
                  scale_max: int | None, profile: bool, settings: tuple[str, ...],
                  results_dir: Path | None, docs_dir: Path | None) -> None:
    """Measure throughput, latency and scale against the transport ceiling and the naive design.

    \b
    make bench                          # the full run, about 10-15 minutes
    soundmon bench --quick              # every phase, small (the test suite runs this)
    soundmon bench --scale-hold 300 --scale-steps 8   # the 5-minute scale search (long)
    """
    if not (ROOT / "bench" / "run.py").exists():
        raise click.ClickException(f"soundmon bench runs from a source checkout; no bench/ in {ROOT}")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bench.run import Plan, main

    given = {"devices": devices, "ceiling_frames": ceiling_frames, "naive_frames": naive_frames,
             "soundmon_frames": soundmon_frames, "latency_s": latency_s, "scale_hold_s": scale_hold,
             "scale_steps": scale_steps, "scale_start": scale_start, "scale_max": scale_max}
    kw: dict = {k: v for k, v in given.items() if v is not None}
    kw["profile"] = profile
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("SOUNDMON_"):
            raise click.BadParameter(f"{item!r} is not SOUNDMON_NAME=VALUE", param_hint="--set")
        kw.setdefault("settings", {})[key] = value
    kw["command"] = "soundmon bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "soundmon bench"
    if results_dir is not None:
        kw["results_dir"] = results_dir
    if quick:
        kw["docs_dir"] = docs_dir
        plan = Plan.quick(**kw)
    else:
        if docs_dir is not None:
            kw["docs_dir"] = docs_dir
        plan = Plan(**kw)
    sys.exit(main(plan))
