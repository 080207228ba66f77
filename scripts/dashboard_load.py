"""How smooth the overview stays with many streaming devices: a measurement, not a test.

Starts a redis-server and the dashboard (uvicorn, its own data directory with N devices), opens
the overview in Debian's Chromium (headless, Playwright), then publishes level events for N
devices at RATE frames/s each on the live-event channel, as the workers would, for SECONDS. The
page counts animation frames, long tasks (> 50 ms, the browser's own PerformanceObserver) and
the level events it received. Prints one JSON line.

    .venv/bin/python scripts/dashboard_load.py --devices 500 --rate 2 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import redis
import uvicorn
from playwright.sync_api import sync_playwright

from dashboard.app import create_app
from soundmon import events
from soundmon.services import REDIS_CANDIDATES, Process, find_binary, free_port, prepare_redis, wait_port
from soundmon.settings import Settings
from soundmon.store import LevelRow, SQLiteStore, now_ms

PROBE = """() => {
  window.__load = { frames: 0, long: 0, longMs: 0 };
  const tick = () => { window.__load.frames++; requestAnimationFrame(tick); };
  requestAnimationFrame(tick);
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) { window.__load.long++; window.__load.longMs += e.duration; }
  }).observe({ type: "longtask", buffered: false });
}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--rate", type=float, default=2.0, help="frames per second per device")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="soundmon-load-"))
    redis_port, http_port = free_port(), free_port()
    binary = find_binary(REDIS_CANDIDATES)
    assert binary, "redis-server not found: make install"
    rproc = Process("redis", [binary, str(prepare_redis(tmp, redis_port))], {}, tmp / "redis.log").start()
    server = None
    try:
        wait_port(redis_port, proc=rproc.proc)
        url = f"redis://127.0.0.1:{redis_port}/0"
        settings = Settings(SOUNDMON_DATA=str(tmp), api_token="load", redis_url=url, broker_url=url)
        store = SQLiteStore(settings.db_path)
        ids = [f"load-{i:03d}" for i in range(args.devices)]
        t0 = now_ms()
        store.touch_devices([_row(d, 0, t0, 60.0) for d in ids])
        app = create_app(settings, store)
        app.state.users.add("load", "load-password")
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=http_port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        pub = redis.Redis.from_url(url)
        with sync_playwright() as p:
            exe = shutil.which("chromium") or "/usr/bin/chromium"
            browser = p.chromium.launch(executable_path=exe, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{http_port}/")
            page.fill("#user", "load")
            page.fill("#password", "load-password")
            page.click("button[type=submit]")
            page.wait_for_selector("#conn.live", timeout=30_000)
            page.wait_for_selector(f".card[data-id='{ids[-1]}']", timeout=30_000)
            page.evaluate(PROBE)
            sent = 0
            start = time.monotonic()
            seq = 1
            # one message per batch of 50 devices, as the preprocess worker publishes per batch
            while (elapsed := time.monotonic() - start) < args.seconds:
                t = now_ms()
                for i in range(0, len(ids), 50):
                    batch = [_live(d, seq, t, 55.0 + (seq + j) % 30) for j, d in enumerate(ids[i:i + 50])]
                    pub.publish(events.CHANNEL, events.encode("level", batch))
                    sent += len(batch)
                seq += 1
                time.sleep(max(0.0, seq / args.rate - (time.monotonic() - start) - 1 / args.rate))
            page.wait_for_timeout(500)
            stats = page.evaluate("() => window.__load")
            level = page.locator(f".card[data-id='{ids[0]}'] .level").inner_text()
            browser.close()
        print(json.dumps({
            "devices": args.devices, "rate_per_device": args.rate, "seconds": round(elapsed, 1),
            "level_events_sent": sent, "frames_per_s": round(stats["frames"] / elapsed, 1),
            "long_tasks": stats["long"], "long_task_ms_per_s": round(stats["longMs"] / elapsed, 1),
            "first_card_shows": level.replace("\n", " "),
        }))
    finally:
        if server is not None:
            server.should_exit = True
        rproc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _row(device: str, seq: int, t_ms: int, laeq: float) -> LevelRow:
    return LevelRow(device=device, boot=1, seq=seq, idx=0, t_ms=t_ms, kind=1, rate=8000, n=4000,
                    dbfs=laeq - 100, lzeq=laeq + 1, laeq=laeq, dominant_hz=500.0, clip_frac=0.0,
                    duty=None, edges=None, k_db=100.0, flags=0, lafmax=laeq + 2, lafmin=laeq - 2)


def _live(device: str, seq: int, t_ms: int, laeq: float) -> dict:
    d = _row(device, seq, t_ms, laeq).api()
    d["device"] = device
    return d


if __name__ == "__main__":
    main()
