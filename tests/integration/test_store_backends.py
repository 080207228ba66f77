"""The store contract on both backends: SQLite, and InfluxDB (levels) + SQLite (the rest).

The InfluxDB backend runs against a real server: Debian's InfluxDB 1.6 on a free loopback port
(the session's ``influx`` fixture of tests/conftest.py, a database per test), written to by
``influxdb-client`` through the v2 -> 1.x write-path translation of tests/influxdb.py and read
through InfluxQL on ``/query`` (docs/influxdb.md says what this proves and what it does not).
Statistics, chart buckets, the export and the dashboard's read endpoints are compared with
SQLite's on the same rows.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from operator import attrgetter
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from dashboard.app import create_app
from soundmon.bands import encode_bands
from soundmon.influxstore import InfluxConfig, InfluxStore
from soundmon.settings import Settings
from soundmon.store import LevelRow, SQLiteStore
from tests.conftest import Stack, wait_until
from tests.helpers import Publisher, hand_frame, sine
from tests.influxdb import InfluxD, V2WriteProxy

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.fixture(params=["sqlite", "influxdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    if request.param == "sqlite":
        yield SQLiteStore(tmp_path / "soundmon.db")
        return
    s = InfluxStore(tmp_path / "soundmon.db", request.getfixturevalue("influx_db"))
    try:
        yield s
    finally:
        s.close()


def pcm(seq: int, t_ms: int, laeq: float, dur_s: float = 0.5, device: str = "kitchen",
        boot: int = 7, lafmax: float | None = None) -> LevelRow:
    return LevelRow(device=device, boot=boot, seq=seq, idx=0, t_ms=t_ms, kind=1, rate=8000,
                    n=int(8000 * dur_s), dbfs=laeq - 100.0, lzeq=laeq + 1.5, laeq=laeq,
                    dominant_hz=1000.0, clip_frac=0.0, duty=None, edges=None, k_db=100.0, flags=8,
                    lceq=laeq + 0.5, lafmax=laeq + 2.0 if lafmax is None else lafmax,
                    lafmin=laeq - 3.0, lcpeak=laeq + 9.0, centroid_hz=1200.0,
                    bands=encode_bands([-40.0 + b for b in range(10)]))


def record(seq: int, idx: int, t0: int, laeq: float | None, kind: int = 2,
           device: str = "kitchen") -> LevelRow:
    """A kind-2 level record (1 s interval) or, kind 3, a threshold record without a level."""
    return LevelRow(device=device, boot=9, seq=seq, idx=idx, t_ms=t0 + 1000 * idx, kind=kind,
                    rate=1000, n=1, dbfs=None if laeq is None else laeq - 100, lzeq=None,
                    laeq=laeq, dominant_hz=None, clip_frac=None,
                    duty=0.25 if kind == 3 else None, edges=3 if kind == 3 else None,
                    k_db=None if kind == 3 else 100.0, flags=16 if kind == 3 else 0)


def test_inserts_are_idempotent_under_redelivery(store: SQLiteStore) -> None:
    """A redelivered batch stores nothing twice and counts 0 new; a partial one counts the rest."""
    batch = [pcm(s, T0 + 500 * s, 60.0 + s) for s in range(6)]
    assert store.insert_levels(batch) == 6
    assert store.insert_levels(batch) == 0
    assert store.insert_levels(batch[3:] + [pcm(6, T0 + 3000, 66.0)]) == 1
    assert store.count_levels("kitchen") == 7
    # a device without a synced clock: two frames stamped with the same receive ms stay two
    assert store.insert_levels([pcm(20, T0 + 9000, 70.0), pcm(21, T0 + 9000, 71.0)]) == 2
    # the same seq in another boot, or on another device, is another level
    assert store.insert_levels([pcm(0, T0, 50.0, boot=8), pcm(0, T0, 50.0, device="porch")]) == 2
    assert store.count_levels("kitchen") == 10
    assert store.count_levels() == 11
    assert [(r.boot, r.seq) for r in store.levels("kitchen", T0, T0)] == [(7, 0), (8, 0)]


def test_levels_read_back_as_written(store: SQLiteStore) -> None:
    """Every field survives (kind 1, 2 and 3), bounds are inclusive, oldest first, limit holds."""
    rows = [pcm(s, T0 + 500 * s, 55.5 + s / 7) for s in range(4)]
    rows += [record(1, i, T0 + 2000, 48.25 + i) for i in range(3)]
    rows.append(record(2, 0, T0 + 1000, None, kind=3))
    store.insert_levels(list(reversed(rows)))
    got = store.levels("kitchen", T0, T0 + 4000)
    want = sorted(rows, key=lambda r: (r.t_ms, r.boot, r.seq, r.idx))
    assert [dataclasses.asdict(r) for r in got] == [dataclasses.asdict(r) for r in want]
    assert [r.t_ms for r in store.levels("kitchen", T0 + 500, T0 + 1500)] == [T0 + 500, T0 + 1000,
                                                                              T0 + 1000, T0 + 1500]
    assert len(store.levels("kitchen", T0, T0 + 4000, limit=3)) == 3
    assert store.levels("porch", T0, T0 + 4000) == []
    assert json.dumps(got[0].api())  # the API view of a read-back row is plain JSON


def test_iter_levels_gives_the_range_once_in_order(store: SQLiteStore) -> None:
    """iter_levels (the export) gives every level with start <= t < end, of one device or of
    all, each once, oldest first and, within a millisecond, by device, boot, seq and idx."""
    rows = []
    for i in range(30):  # three devices, two boots, levels and records sharing milliseconds
        t = T0 + 500 * (i // 3)
        rows.append(pcm(i, t, 50.0 + i))  # kitchen: seq 0..29
        rows.append(pcm(997 - i, t, 60.0 + i, device="attic", boot=3))  # sub-ms part > kitchen's
        rows.append(pcm(500 + i, t, 40.0, boot=6))  # kitchen, an earlier boot, later sub-ms
    rows += [record(40, i, T0 + 1000, 70.0 - i) for i in range(4)]  # same ms as pcm rows
    rows += [pcm(1000 + i, T0 + 4000, 45.0) for i in range(7)]  # seq mod 1000 = 0..6
    store.insert_levels(rows)
    order = attrgetter("t_ms", "device", "boot", "seq", "idx")  # SQLite's ORDER BY
    for device, lo, hi in [(None, T0, T0 + 4500), ("kitchen", T0, T0 + 4500),
                           (None, T0 + 500, T0 + 4000), ("attic", T0 + 1000, T0 + 1001),
                           (None, T0 + 4500, T0 + 9000)]:
        want = sorted((r for r in rows if lo <= r.t_ms < hi and device in (None, r.device)), key=order)
        got = list(store.iter_levels(device, lo, hi))
        assert [dataclasses.asdict(r) for r in got] == [dataclasses.asdict(r) for r in want], (
            device, lo, hi)
        if isinstance(store, InfluxStore):  # pages that end inside a millisecond, or within one
            for page in (1, 2, 5, 9):
                assert [order(r) for r in store.iter_levels(device, lo, hi, page=page)] == [
                    order(r) for r in want], (device, lo, hi, page)
    # levels() cut by its limit inside a millisecond keeps the first levels in the same order
    assert [order(r) for r in store.levels("kitchen", T0, T0 + 4500, limit=5)] == [
        order(r) for r in sorted((r for r in rows if r.device == "kitchen"), key=order)[:5]]


def _day_of_rows(tz: ZoneInfo, start: int) -> list[LevelRow]:
    """26 h of varied levels: 0.5 s frames (two per 1 s value), 1 s frames, kind-2 records,
    threshold records without a level, and a level set by the local hour (for Lden)."""
    rng = random.Random(8)
    rows: list[LevelRow] = []
    seq = 0
    for minute in range(26 * 60):
        t = start + minute * 60_000
        hour = datetime.fromtimestamp(t / 1000, tz).hour
        base = 68.0 if 7 <= hour < 19 else 61.0 if 19 <= hour < 23 else 47.0
        for k in range(3):  # a burst of three 0.5 s frames: one full second and a half
            rows.append(pcm(seq, t + 500 * k, base + rng.uniform(-6, 6)))
            seq += 1
        rows.append(pcm(seq, t + 20_000, base + rng.uniform(-3, 3), dur_s=1.0))
        seq += 1
    for i in range(40):  # device-computed records of an outage, and threshold records
        rows.append(record(900_000, i, start + 3_600_000 + 30_000 + 1000 * i, 90.0 - i / 3))
        rows.append(record(900_001, i, start + 3_600_000 + 1000 * i + 1, None, kind=3))
    return rows


def test_statistics_equal_sqlites_on_the_same_rows(store: SQLiteStore, tmp_path: Path) -> None:
    """LAeq, LAmax/min, L10/50/90, coverage and Lden equal SQLite's within 0.01 dB, windows of
    a minute, an hour and 24 h (Lden in Berlin time), and an empty one."""
    tz = ZoneInfo("Europe/Berlin")
    start = int(datetime(2026, 3, 10, 0, 0, tzinfo=tz).timestamp() * 1000)
    rows = _day_of_rows(tz, start)
    reference = SQLiteStore(tmp_path / "reference.db")
    reference.insert_levels(rows)
    for i in range(0, len(rows), 2000):
        store.insert_levels(rows[i:i + 2000])
    windows = [(start + 3_600_000, start + 3_660_000), (start + 3_000_000, start + 6_600_000),
               (start, start + 86_400_000), (start + 100 * 86_400_000, start + 101 * 86_400_000)]
    for w0, w1 in windows:
        want = reference.stats("kitchen", w0, w1, "Europe/Berlin")
        got = store.stats("kitchen", w0, w1, "Europe/Berlin")
        assert got.keys() == want.keys()
        for key, value in want.items():
            if value is None:
                assert got[key] is None, (key, w0, got)
            else:
                assert got[key] == pytest.approx(value, abs=0.01), (key, w0, got, want)
    day = store.stats("kitchen", start, start + 86_400_000, "Europe/Berlin")
    assert day["lden"] is not None and day["l10"] > day["l50"] > day["l90"]
    if isinstance(store, InfluxStore):  # the same percentiles when InfluxDB ranks (long windows)
        store.PERCENTILE_FETCH_MAX = 0
        assert store.stats("kitchen", start, start + 86_400_000, "Europe/Berlin") == day
    # known answer: 60 and 80 dB for a second each give 77.03 dB, never the mean 70
    store.insert_levels([pcm(i, T0 + 500 * i, 60.0 if i < 2 else 80.0, device="ref")
                         for i in range(4)])
    assert store.stats("ref", T0, T0 + 2000)["laeq"] == pytest.approx(77.03, abs=0.005)


def test_history_buckets_equal_sqlites(store: SQLiteStore, tmp_path: Path) -> None:
    """The dashboard's chart data (energetic buckets, Fast extremes) is the same on both."""
    tz = ZoneInfo("UTC")
    rows = _day_of_rows(tz, T0)[:1500]
    reference = SQLiteStore(tmp_path / "reference.db")
    reference.insert_levels(rows)
    store.insert_levels(rows)
    for w0, w1, points in [(T0, T0 + 6 * 3_600_000, 50), (T0 + 7_777, T0 + 3_607_777, 7)]:
        want = reference.history("kitchen", w0, w1, points)
        got = store.history("kitchen", w0, w1, points)
        assert got["bucket_ms"] == want["bucket_ms"]
        assert [p["t_ms"] for p in got["points"]] == [p["t_ms"] for p in want["points"]]
        for g, w in zip(got["points"], want["points"], strict=True):
            assert g["n"] == w["n"]
            for key in ("laeq", "lafmax", "lafmin"):
                assert g[key] == pytest.approx(w[key], abs=0.01), (key, g, w)
    exported = list(store.iter_levels(None, T0, T0 + 3_600_000))
    assert [dataclasses.asdict(r) for r in exported] == [
        dataclasses.asdict(r) for r in reference.iter_levels(None, T0, T0 + 3_600_000)]


def _rows_of_three_devices() -> list[LevelRow]:
    """Six hours of the kitchen (frames and device-computed records), an attic whose frames
    share milliseconds with the kitchen's, and a porch with a day of frames (Lden)."""
    day = _day_of_rows(ZoneInfo("UTC"), T0)
    rows = day[:1500] + day[-80:]
    rows += [pcm(500 + i, T0 + 500 * i, 55.0 + i % 5, device="attic", boot=3) for i in range(300)]
    rows += [pcm(i, T0 + 90_000 * i, 50.0 + i % 11, device="porch") for i in range(960)]
    return rows


def test_dashboard_reads_answer_the_same_on_both_stores(influx_db: InfluxConfig,
                                                       tmp_path: Path) -> None:
    """The dashboard's read endpoints over an InfluxStore answer as over an SQLiteStore with the
    same rows: /levels and the CSV and JSON export byte for byte, /history and /stats within
    0.01 dB (energy summed in another order: docs/influxdb.md)."""
    rows = _rows_of_three_devices()
    t_end = T0 + 86_400_000
    requests = {
        "levels": ("/api/devices/kitchen/levels", {"start": T0, "end": T0 + 7_200_000}),
        "levels_cut": ("/api/devices/attic/levels", {"start": T0, "end": t_end, "limit": 100}),
        "history": ("/api/devices/kitchen/history", {"start": T0, "end": T0 + 6 * 3_600_000,
                                                     "points": 50}),
        "history_offset": ("/api/devices/attic/history", {"start": T0 + 7_777, "end": T0 + 157_777,
                                                          "points": 10}),
        "stats": ("/api/devices/kitchen/stats", {"start": T0, "end": T0 + 6 * 3_600_000}),
        "stats_day": ("/api/devices/porch/stats", {"start": T0, "end": t_end,
                                                   "tz": "Europe/Berlin"}),
        "stats_empty": ("/api/devices/kitchen/stats", {"start": t_end, "end": t_end + 3_600_000}),
        "export_csv": ("/api/export/levels", {"start": T0, "end": T0 + 3_600_000}),
        "export_json": ("/api/export/levels", {"start": T0 + 500, "end": T0 + 150_000,
                                               "format": "json"}),
        "export_device": ("/api/export/levels", {"device": "porch", "start": T0, "end": t_end}),
    }
    answers: dict[str, dict[str, Any]] = {}
    for kind in ("sqlite", "influxdb"):
        path = tmp_path / kind / "soundmon.db"
        store = SQLiteStore(path) if kind == "sqlite" else InfluxStore(path, influx_db)
        try:
            for i in range(0, len(rows), 2000):
                store.insert_levels(rows[i:i + 2000])
            store.touch_devices(rows)
            # no Redis runs: these reads never touch it
            settings = Settings(SOUNDMON_DATA=str(path.parent), api_token="test-token",
                                redis_url="redis://127.0.0.1:9/0")
            with TestClient(create_app(settings, store)) as client:
                answers[kind] = {}
                for name, (url, params) in requests.items():
                    got = client.get(url, params=params,
                                     headers={"Authorization": "Bearer test-token"})
                    assert got.status_code == 200, (kind, name, got.text)
                    answers[kind][name] = got
        finally:
            if isinstance(store, InfluxStore):
                store.close()
    want, got = answers["sqlite"], answers["influxdb"]
    for name in ("levels", "levels_cut", "export_csv", "export_json", "export_device"):
        assert got[name].text == want[name].text, name
        assert got[name].headers["content-type"] == want[name].headers["content-type"], name
    assert len(want["levels"].json()["levels"]) == sum(
        1 for r in rows if r.device == "kitchen" and T0 <= r.t_ms <= T0 + 7_200_000)
    assert len(want["levels_cut"].json()["levels"]) == 100
    exported = list(csv.DictReader(io.StringIO(want["export_csv"].text)))
    assert {r["device"] for r in exported} == {"kitchen", "attic", "porch"}
    assert len(json.loads(want["export_json"].text)) > 300
    for name in ("history", "history_offset"):
        w, g = want[name].json(), got[name].json()
        assert {k: v for k, v in g.items() if k != "points"} == {
            k: v for k, v in w.items() if k != "points"}, name
        assert [(p["t_ms"], p["n"]) for p in g["points"]] == [(p["t_ms"], p["n"]) for p in w["points"]]
        for gp, wp in zip(g["points"], w["points"], strict=True):
            for key in ("laeq", "lafmax", "lafmin"):
                assert gp[key] == pytest.approx(wp[key], abs=0.01), (name, key, gp, wp)
    for name in ("stats", "stats_day", "stats_empty"):
        w, g = want[name].json(), got[name].json()
        assert g.keys() == w.keys(), name
        for key, value in w.items():
            if value is None or isinstance(value, str):
                assert g[key] == value, (name, key, g)
            else:
                assert g[key] == pytest.approx(value, abs=0.01), (name, key, g, w)
    assert want["stats_day"].json()["lden"] is not None
    assert want["stats_empty"].json()["laeq"] is None


def test_the_downsampled_bucket_keeps_statistics_energetic(influx_db: InfluxConfig,
                                                           tmp_path: Path) -> None:
    """1-minute aggregates give the raw data's LAeq, LAmax, LAmin, coverage and Lden (exactly:
    energy and duration add up); percentiles of 1 s values cannot come from them and are null."""
    # downsample_every_s=0: every batch refreshes the minutes it wrote to (default: every 10 s)
    store = InfluxStore(tmp_path / "soundmon.db",
                        dataclasses.replace(influx_db, downsample_every_s=0))
    try:
        tz = ZoneInfo("Europe/Berlin")
        start = int(datetime(2026, 3, 10, 0, 0, tzinfo=tz).timestamp() * 1000)
        rows = _day_of_rows(tz, start)
        for i in range(0, len(rows), 2000):
            store.insert_levels(rows[i:i + 2000])
        (count,) = store.query(["SELECT COUNT(dur_s) AS k FROM level_1m"], store.config.bucket_1m)
        assert count[0]["k"] == 26 * 60  # written by the inserts themselves
        written = store.downsample(start, start + 27 * 3_600_000)
        assert written == 26 * 60
        env = {"SOUNDMON_DATA": str(tmp_path), "SOUNDMON_STORE": "influxdb",
               "SOUNDMON_INFLUX_URL": store.config.url, "SOUNDMON_INFLUX_BUCKET": store.config.bucket,
               "SOUNDMON_INFLUX_BUCKET_1M": store.config.bucket_1m}
        out = subprocess.run([sys.executable, "-m", "soundmon.influxstore", "downsample", "--hours", "3",
                              "--end-ms", str(start + 3 * 3_600_000)], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=60, check=True).stdout
        assert f"wrote 180 one-minute points to {store.config.bucket_1m}" in out
        assert store.downsample(start, start + 27 * 3_600_000) == written  # idempotent
        raw = store.stats("kitchen", start, start + 86_400_000, "Europe/Berlin", resolution="raw")
        coarse = store.stats("kitchen", start, start + 86_400_000, "Europe/Berlin", resolution="1m")
        for key in ("laeq", "lamax", "lamin", "coverage", "lden"):
            assert coarse[key] == pytest.approx(raw[key], abs=0.01), key
        assert coarse["l10"] is None and raw["l10"] is not None
        (minute,) = store.query(["SELECT laeq, energy, dur_s FROM level_1m WHERE device = 'kitchen' "
                                 f"AND time = {start * 1_000_000}"], store.config.bucket_1m)[0]
        assert minute["laeq"] == pytest.approx(store.stats("kitchen", start, start + 60_000,
                                                           resolution="raw")["laeq"], abs=0.01)
    finally:
        store.close()


def test_grafana_dashboard_queries_run_on_the_data(influx_db: InfluxConfig, tmp_path: Path) -> None:
    """Every InfluxQL query of deploy/grafana/soundmon.json runs (Grafana's macros filled in as
    Grafana does), returns each device, and the range LAeq panel equals the store's LAeq."""
    dashboard = json.loads((Path(__file__).parents[2] / "deploy/grafana/soundmon.json").read_text())
    store = InfluxStore(tmp_path / "soundmon.db", influx_db)
    try:
        rows = [pcm(i, T0 + 500 * i, 50.0 + i % 7) for i in range(600)]
        rows += [pcm(i, T0 + 500 * i, 66.0 + i % 3, device="porch") for i in range(600)]
        store.insert_levels(rows)
        store.downsample(T0, T0 + 300_000)
        macros = {"$timeFilter": f"time >= {T0}ms AND time <= {T0 + 299_999}ms", "$__interval": "1m",
                  "$device": "(kitchen|porch)", "$bucket_1m": store.config.bucket_1m}
        targets = [(panel["title"], t["query"]) for panel in dashboard["panels"]
                   for t in panel["targets"]]
        assert len(targets) == len(dashboard["panels"]) >= 5
        results = {}
        for title, query in targets:
            for macro, value in macros.items():
                query = query.replace(macro, value)
            assert not re.search(r"\$\w", query), query  # every macro filled in
            (points,) = store.query([query])
            assert {p["device"] for p in points} == {"kitchen", "porch"}, title
            results[title] = points
        (kitchen,) = [p for p in results["LAeq over the range"] if p["device"] == "kitchen"]
        assert kitchen["LAeq"] == pytest.approx(store.stats("kitchen", T0, T0 + 300_000)["laeq"], abs=0.01)
    finally:
        store.close()


def test_levels_older_than_the_retention_are_dropped_not_retried(
        influx: tuple[InfluxD, V2WriteProxy], influx_db: InfluxConfig, tmp_path: Path) -> None:
    """Records from before the bucket's retention (a long outage) are dropped with a warning;
    the rest of the batch is stored and the write does not fail (a retry could never succeed)."""
    config = influx_db
    server, _ = influx
    server.query(f'ALTER RETENTION POLICY "autogen" ON "{config.bucket}" DURATION 1h SHARD DURATION 1h')
    store = InfluxStore(tmp_path / "soundmon.db", config)
    try:
        now = int(time.time() * 1000)
        assert store.insert_levels([pcm(0, now - 2 * 86_400_000, 60.0), pcm(1, now, 61.0)]) == 1
        assert [r.seq for r in store.levels("kitchen", 0, now + 1000)] == [1]
    finally:
        store.close()


@pytest.mark.parametrize("level_store", ["influxdb"], indirect=True)
def test_pipeline_stores_levels_in_influxdb(stack: Stack,
                                           influx: tuple[InfluxD, V2WriteProxy]) -> None:
    """SOUNDMON_STORE=influxdb: the workers write the levels to InfluxDB through influxdb-client's
    v2 write, none to SQLite's level table; the device registry stays in SQLite; the API built
    by create_app from the same settings reads InfluxDB. (Values, duplicates and the rest:
    tests/integration/test_pipeline.py runs on both stores.)"""
    _, proxy = influx
    writes_before = proxy.writes
    pub = Publisher(stack.mqtt_port)
    t0 = int(time.time() * 1000)
    for seq in range(12):
        pub.publish("soundmon/v1/kitchen/frame",
                    hand_frame(seq, 77, t0 + seq * 500, 8000, sine(1000, 1000 * (seq + 1), 8000, 4000)))
    pub.close()
    store = stack.store()
    assert isinstance(store, InfluxStore)
    wait_until(lambda: store.count_levels("kitchen") == 12, timeout=180,  # cold workers: slow
               what="12 levels in InfluxDB")
    assert [r.seq for r in store.levels("kitchen", 0, 2**62)] == list(range(12))
    assert proxy.writes > writes_before
    wait_until(lambda: store.device("kitchen") is not None, what="the device in the registry")
    with sqlite3.connect(stack.data / "soundmon.db") as db:  # levels went to InfluxDB only
        assert db.execute("SELECT count(*) FROM levels").fetchone()[0] == 0
    stats = store.stats("kitchen", t0, t0 + 6000)
    assert stats["coverage"] == 1.0 and stats["laeq"] is not None
    with TestClient(create_app(stack.settings())) as client:
        auth = {"Authorization": "Bearer test-token"}
        got = client.get("/api/devices/kitchen/stats", params={"start": t0, "end": t0 + 6000},
                         headers=auth)
        assert got.status_code == 200, got.text
        assert got.json() == {"device": "kitchen", **stats}
        got = client.get("/api/devices/kitchen/levels", params={"start": t0, "end": t0 + 6000},
                         headers=auth)
        assert [lv["seq"] for lv in got.json()["levels"]] == list(range(12))
        assert isinstance(client.app.state.store, InfluxStore)
        client.app.state.store.close()
