"""Level store speed: SQLite against InfluxDB on the same rows, in the same run.

Writes ``--batches`` batches of 64 levels (4 devices, 0.5 s frames, as the preprocess worker
does) into a fresh SQLite store and into the InfluxDB store, then times ``stats`` over one
hour of one device. InfluxDB is Debian's 1.6 started on a free loopback port behind the test
suite's v2-write translation (tests/influxdb.py, a Python proxy in this process), so the
InfluxDB figures include that proxy and a pre-read per batch: a lower bound for a real
InfluxDB 2, not its speed. Writes bench/results/<UTC date>-store.json.

    .venv/bin/python bench/store_backends.py --batches 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soundmon.influxstore import InfluxConfig, InfluxStore  # noqa: E402
from soundmon.store import LevelRow, SQLiteStore  # noqa: E402
from tests.influxdb import InfluxD, V2WriteProxy  # noqa: E402

T0 = 1_767_225_600_000


def batches(n: int, size: int = 64, devices: int = 4) -> list[list[LevelRow]]:
    out, seq = [], 0
    for _ in range(n):
        batch = []
        for _ in range(size // devices):
            for d in range(devices):
                laeq = 55.0 + (seq * 7919 % 200) / 10
                batch.append(LevelRow(
                    device=f"dev-{d}", boot=1, seq=seq, idx=0, t_ms=T0 + 500 * seq, kind=1,
                    rate=8000, n=4000, dbfs=laeq - 100, lzeq=laeq + 1, laeq=laeq, dominant_hz=1000.0,
                    clip_frac=0.0, duty=None, edges=None, k_db=100.0, flags=0, lceq=laeq,
                    lafmax=laeq + 2, lafmin=laeq - 2, lcpeak=laeq + 9, centroid_hz=1100.0))
            seq += 1
        out.append(batch)
    return out


def run(store: SQLiteStore, data: list[list[LevelRow]]) -> dict[str, float]:
    t = time.perf_counter()
    for b in data:
        store.insert_levels(b)
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    store.stats("dev-0", T0, T0 + 3_600_000)
    stats_s = time.perf_counter() - t
    rows = sum(len(b) for b in data)
    return {"levels_per_s": round(rows / write_s), "stats_1h_ms": round(stats_s * 1000, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=300)
    args = ap.parse_args()
    data = batches(args.batches)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = InfluxD(root / "influxd").start()
        proxy = V2WriteProxy(server.port).start()
        try:
            server.query('CREATE DATABASE "bench"')
            server.query('CREATE DATABASE "bench_1m"')
            sqlite = run(SQLiteStore(root / "a.db"), data)
            influx_store = InfluxStore(root / "b.db", InfluxConfig(
                url=proxy.url, token=None, org="soundmon", bucket="bench", bucket_1m="bench_1m",
                raw_retention_days=10_000))
            influx = run(influx_store, data)
            influx_store.close()
        finally:
            proxy.stop()
            server.stop()
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "levels": sum(len(b) for b in data), "batch": 64,
        "sqlite": sqlite, "influxdb_1_6_via_proxy": influx,
        "write_ratio_influx_over_sqlite": round(influx["levels_per_s"] / sqlite["levels_per_s"], 3),
    }
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d}-store.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
