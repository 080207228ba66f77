"""End-to-end throughput: `soundmon simulate --full-speed` through the whole `soundmon up` stack.

Starts `soundmon up` (no simulated devices, no Flower) on free ports in a temporary data
directory, waits until it is healthy, publishes ``--devices`` x ``--frames`` frames at full
speed with the simulator, and measures how long it takes until every frame is stored.
Writes a JSON summary to bench/results/<UTC date>-throughput.json.

    .venv/bin/python bench/throughput.py --devices 4 --frames 2500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from soundmon.services import free_port
from soundmon.store import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]


def pids(data: Path) -> dict[str, int]:
    return {f.stem: int(f.read_text()) for f in (data / "run").glob("*.pid")}


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        todo += _children(p)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--frames", type=int, default=2500, help="frames per device")
    args = ap.parse_args()
    total = args.devices * args.frames
    with tempfile.TemporaryDirectory(prefix="soundmon-bench-") as tmp:
        data = Path(tmp) / "data"
        http, mqtt, redis_port = free_port(), free_port(), free_port()
        env = dict(os.environ, SOUNDMON_API_TOKEN="bench", PYTHONUNBUFFERED="1")
        up = subprocess.Popen(
            [sys.executable, "-m", "soundmon", "up", "--no-flower", "--data", str(data),
             "--http-port", str(http), "--mqtt-port", str(mqtt), "--redis-port", str(redis_port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/health", timeout=2):
                        break
                except OSError:
                    time.sleep(0.5)
            else:
                print("stack did not become healthy", file=sys.stderr)
                return 1
            store = SQLiteStore(data / "soundmon.db")
            time.sleep(2)  # let start-up work settle before taking CPU readings
            cpu_before = {name: cpu_s(pid) for name, pid in pids(data).items()}
            t0 = time.monotonic()
            sim = subprocess.run(
                [sys.executable, "-m", "soundmon", "simulate", "--devices", str(args.devices),
                 "--full-speed", "--frames", str(args.frames), "--broker", f"127.0.0.1:{mqtt}",
                 "--device-prefix", "bench", "--provision"],
                env={**env, "SOUNDMON_DATA": str(data)}, capture_output=True, text=True,
                check=True)
            t_published = time.monotonic() - t0
            stored = 0
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                stored = store.count_levels()
                if stored >= total:
                    break
                time.sleep(0.05)
            t_stored = time.monotonic() - t0
            cpu = {name: round(cpu_s(pid) - cpu_before.get(name, 0.0), 2)
                   for name, pid in pids(data).items()}
        finally:
            os.killpg(up.pid, signal.SIGINT)
            up.wait(60)
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bench/throughput.py", f"--devices {args.devices}",
                             f"--frames {args.frames}"]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "frames": total,
        "stored": stored,
        "lost_frames": total - stored,
        "publish_s": round(t_published, 2),
        "publish_fps": round(total / t_published, 1),
        "end_to_end_s": round(t_stored, 2),
        "soundmon_fps": round(stored / t_stored, 1),
        "cpu_s": cpu,
        "cpu_ms_per_frame": {k: round(1000 * v / max(stored, 1), 3) for k, v in cpu.items()},
        "simulator": sim.stdout.strip().splitlines()[-1] if sim.stdout.strip() else "",
    }
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d}-throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if stored == total else 1


if __name__ == "__main__":
    sys.exit(main())
