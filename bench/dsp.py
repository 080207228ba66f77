"""DSP speed: the full per-frame feature extraction against a bare floor, on the same frames.

Full = ``workers.dsp.analyse_streams`` as the preprocess worker calls it: batches of
``--devices`` devices x ``--chain`` consecutive frames, the stream state carried from batch
to batch. Floor = DC removal + RMS + one rfft per frame, vectorised over the same batch.
Both run interleaved in the same process; each is timed as the best of ``--repeats`` passes
(the least disturbed by other load). Writes bench/results/<UTC date>-dsp.json.

    .venv/bin/python bench/dsp.py --rate 8000 --frame-ms 500
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

from workers import dsp  # noqa: E402

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
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    n = args.rate * args.frame_ms // 1000
    rng = np.random.default_rng(0)
    t = np.arange(args.batches * args.chain * n) / args.rate
    # per device: a tone and noise around an ADC bias, as int16 like the wire format
    signals = [np.round(3000 * np.sin(2 * np.pi * (200 + 37 * d) * t) + rng.normal(0, 500, t.size)
                        + 600).astype(np.int16) for d in range(args.devices)]
    batches = [np.stack([s[b * args.chain * n:(b + 1) * args.chain * n].reshape(args.chain, n)
                         for s in signals]) for b in range(args.batches)]
    frames = args.batches * args.devices * args.chain

    def run_full() -> None:
        states: list = [None] * args.devices
        for batch in batches:
            _, states = dsp.analyse_streams(batch, args.rate, states)

    def run_floor() -> None:
        for batch in batches:
            floor(batch)

    run_full()  # warm-up: filter design (cached per rate), allocator
    best = {"full": float("inf"), "floor": float("inf")}
    for _ in range(args.repeats):
        for name, fn in (("floor", run_floor), ("full", run_full)):
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    full_fps, floor_fps = frames / best["full"], frames / best["floor"]
    ratio = full_fps / floor_fps
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "bench/dsp.py " + " ".join(f"--{k.replace('_', '-')} {v}"
                                              for k, v in vars(args).items()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__},
        "frames": frames,
        "samples_per_frame": n,
        "full_fps": round(full_fps, 1),
        "floor_fps": round(floor_fps, 1),
        "full_us_per_frame": round(1e6 / full_fps, 1),
        "floor_us_per_frame": round(1e6 / floor_fps, 1),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
    }
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d}-dsp.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
