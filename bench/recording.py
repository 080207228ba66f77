"""Recording cost: staging a batch's audio against computing its levels, on the same frames.

Both run in one process, interleaved per repeat (levels, record, levels, record, ...), on
batches of ``--devices`` x ``--chain`` frames of 500 ms at 8 kHz, as the preprocess task
meets them. Reported, as medians over repeats of the same-repeat ratio:

* ``record_over_levels``: time of ``Recording.record`` (what the preprocess task adds when
  recording is on) / time of ``workers.preprocess.process_batch`` (the levels);
* ``flush_over_levels``: time of rotating the staged frames into FLAC (the recording worker's
  upkeep, off the preprocess path) / the same levels time.

Writes bench/results/<UTC date>-recording.json.

    .venv/bin/python bench/recording.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soundmon.protocol import KIND_PCM, decode_frame, encode_frame  # noqa: E402
from soundmon.recording import Recording  # noqa: E402
from soundmon.store import DeviceCalibration  # noqa: E402
from workers.preprocess import process_batch  # noqa: E402

RATE, N = 8000, 4000


def batches(n_batches: int, devices: int, chain: int, seq0: int) -> list[list]:
    rng = np.random.default_rng(seq0)
    out = []
    for b in range(n_batches):
        batch = []
        for d in range(devices):
            for s in range(seq0 + b * chain, seq0 + (b + 1) * chain):
                samples = rng.integers(-3000, 3000, N).astype("<i2")
                batch.append((f"d{d:03d}", 0, decode_frame(encode_frame(
                    KIND_PCM, s, 1, 1_700_000_000_000 + s * 500, RATE, samples))))
        out.append(batch)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--chain", type=int, default=8, help="consecutive frames per device per batch")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cal = {f"d{d:03d}": DeviceCalibration(100.0, False, -60.0) for d in range(args.devices)}
    rec_ratio, flush_ratio, rec_fps = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recording(tmp)
        process_batch(batches(1, 1, 1, 0)[0], cal)  # warm up (compiles the DSP kernels)
        for r in range(args.repeats):
            work = batches(args.batches, args.devices, args.chain, 1000 * (r + 1))
            frames = sum(len(b) for b in work)
            t = time.perf_counter()
            for b in work:
                process_batch(b, cal)
            levels_s = time.perf_counter() - t
            t = time.perf_counter()
            for b in work:
                rec.record(b)
            record_s = time.perf_counter() - t
            t = time.perf_counter()
            rec.flush(force=True)
            flush_s = time.perf_counter() - t
            rec_ratio.append(record_s / levels_s)
            flush_ratio.append(flush_s / levels_s)
            rec_fps.append(frames / record_s)
    result = {
        "bench": "recording", "utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "frames_per_repeat": args.batches * args.devices * args.chain,
        "batch": {"devices": args.devices, "chain": args.chain, "rate_hz": RATE, "frame_ms": 500},
        "record_over_levels": {"median": round(statistics.median(rec_ratio), 3),
                               "min": round(min(rec_ratio), 3), "max": round(max(rec_ratio), 3)},
        "flush_over_levels": {"median": round(statistics.median(flush_ratio), 3)},
        "record_frames_per_s_median": round(statistics.median(rec_fps)),
    }
    if not args.no_write:
        out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d}-recording.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
