"""DSP speed: the full per-frame feature extraction against a bare floor, on the same frames.

Full = ``workers.dsp.analyse_streams`` as the preprocess worker calls it: batches of
``--devices`` devices x ``--chain`` consecutive frames, the stream state carried from batch
to batch. Floor = DC removal + RMS + one rfft per frame, vectorised over the same batch.
Both run in the same process, interleaved (floor, full, full, floor, ...) ``--repeats``
times over all batches, so a busy machine slows both alike. Reported:

* ``ratio``: the median over repeats of (full frames/s) / (floor frames/s) of the same
  repeat, with its spread (min, quartiles, max); the target applies to it;
* ``ratio_best_of``: best full time against best floor time (the least disturbed passes);
* ``process_batch_us_per_frame``: the whole preprocess path (``workers.preprocess.process_batch``:
  decoded frames -> level rows, states carried) on batches of ``--devices`` x ``--chain``
  frames, best of the repeats.

Writes bench/results/<UTC date>-dsp.json.

    .venv/bin/python bench/dsp.py --rate 8000 --frame-ms 500 --repeats 31
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soundmon.protocol import KIND_PCM, decode_frame, encode_frame  # noqa: E402
from soundmon.store import DeviceCalibration  # noqa: E402
from workers import dsp, kernels  # noqa: E402
from workers.preprocess import process_batch  # noqa: E402

TARGET_RATIO = 0.5  # issue 3: full features at least 50 % of the floor's frames/s


def floor(batch: np.ndarray) -> None:
    """DC removal + RMS + one rfft per frame (the bare minimum any level meter does)."""
    x = batch.reshape(-1, batch.shape[-1]).astype(np.float64)
    x -= x.mean(axis=1, keepdims=True)
    np.sqrt(np.mean(x * x, axis=1))
    np.fft.rfft(x, axis=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=8000)
    ap.add_argument("--frame-ms", type=int, default=500)
    ap.add_argument("--devices", type=int, default=16)
    ap.add_argument("--chain", type=int, default=4, help="consecutive frames per device per batch")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=31)
    ap.add_argument("--no-write", action="store_true", help="print only, keep bench/results as it is")
    args = ap.parse_args()

    t0 = time.perf_counter()
    kernels.warm_up()  # compiles the kernels, or loads them from numba's cache
    warm_up_s = time.perf_counter() - t0

    n = args.rate * args.frame_ms // 1000
    rng = np.random.default_rng(0)
    t = np.arange(args.batches * args.chain * n) / args.rate
    # per device: a tone and noise around an ADC bias, as int16 like the wire format
    signals = [np.round(3000 * np.sin(2 * np.pi * (200 + 37 * d) * t) + rng.normal(0, 500, t.size)
                        + 600).astype(np.int16) for d in range(args.devices)]
    batches = [np.stack([s[b * args.chain * n:(b + 1) * args.chain * n].reshape(args.chain, n)
                         for s in signals]) for b in range(args.batches)]
    frames = args.batches * args.devices * args.chain
    decoded = [[(f"dev{d}", 0, decode_frame(encode_frame(
        KIND_PCM, b * args.chain + i, 1, 0, args.rate, batches[b][d, i])))
        for d in range(args.devices) for i in range(args.chain)] for b in range(args.batches)]
    cal = {f"dev{d}": DeviceCalibration(100.0, True, None) for d in range(args.devices)}

    def run_full() -> None:
        states: list = [None] * args.devices
        for batch in batches:
            _, states = dsp.analyse_streams(batch, args.rate, states)

    def run_floor() -> None:
        for batch in batches:
            floor(batch)

    def run_pipeline() -> None:
        states: dict = {}
        for batch in decoded:
            _, states = process_batch(batch, cal, states)

    run_full()  # warm-up: filter design (cached per rate), allocator
    run_pipeline()
    times: dict[str, list[float]] = {"floor": [], "full": [], "pipeline": []}
    for r in range(args.repeats):
        order = ("floor", "full", "pipeline") if r % 2 == 0 else ("pipeline", "full", "floor")
        for name in order:
            fn = {"floor": run_floor, "full": run_full, "pipeline": run_pipeline}[name]
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    paired = np.array(times["floor"]) / np.array(times["full"])  # = full fps / floor fps
    q = np.percentile(paired, [0, 25, 50, 75, 100])
    full_fps, floor_fps = frames / min(times["full"]), frames / min(times["floor"])
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "bench/dsp.py " + " ".join(f"--{k.replace('_', '-')} {v}"
                                              for k, v in vars(args).items() if k != "no_write"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "load_average_1min": round(os.getloadavg()[0], 2)},
        "frames": frames,
        "samples_per_frame": n,
        "full_fps": round(full_fps, 1),
        "floor_fps": round(floor_fps, 1),
        "full_us_per_frame": round(1e6 / full_fps, 1),
        "floor_us_per_frame": round(1e6 / floor_fps, 1),
        "process_batch_us_per_frame": round(1e6 * min(times["pipeline"]) / frames, 1),
        "ratio": round(float(q[2]), 3),
        "ratio_spread": {"min": round(float(q[0]), 3), "q25": round(float(q[1]), 3),
                         "q75": round(float(q[3]), 3), "max": round(float(q[4]), 3)},
        "ratio_best_of": round(full_fps / floor_fps, 3),
        "target_ratio": TARGET_RATIO,
        "target_met": bool(q[2] >= TARGET_RATIO),
        "kernel_warm_up_s": round(warm_up_s, 2),
    }
    if not args.no_write:
        out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d}-dsp.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
