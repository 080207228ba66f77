"""The store contract on both backends: SQLite, and InfluxDB (levels) + SQLite (the rest).

The InfluxDB backend runs against a real server: Debian's InfluxDB 1.6 on a free loopback port,
written to by ``influxdb-client`` through the v2 -> 1.x write-path translation of
tests/influxdb.py and read through InfluxQL on ``/query`` (docs/influxdb.md says what this
proves and what it does not). Statistics are compared with SQLite's on the same rows.
"""

from __future__ import annotations

import dataclasses
import itertools
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
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from dashboard.app import create_app
from soundmon.bands import encode_bands
from soundmon.influxstore import InfluxConfig, InfluxStore
from soundmon.settings import Settings
from soundmon.store import LevelRow, SQLiteStore
from tests.conftest import Stack, wait_until
from tests.helpers import Publisher, dbfs_by_hand, hand_frame, sine
from tests.influxdb import InfluxD, V2WriteProxy

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_db_names = itertools.count()


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InfluxD, V2WriteProxy]]:
    """One influxd for the module, and the v2 write translation in front of it."""
    server = InfluxD(tmp_path_factory.mktemp("influxd")).start()
    proxy = None
    try:
        proxy = V2WriteProxy(server.port).start()
        yield server, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()


def influx_config(influx: tuple[InfluxD, V2WriteProxy]) -> InfluxConfig:
    """Fresh databases for one test (kept forever: the test data is from 2026-01-01)."""
    server, proxy = influx
    name = f"t{next(_db_names)}"
    server.query(f'CREATE DATABASE "{name}"')
    server.query(f'CREATE DATABASE "{name}_1m"')
    return InfluxConfig(url=proxy.url, token="test-token", org="soundmon", bucket=name,
                        bucket_1m=f"{name}_1m", raw_retention_days=10_000)


@pytest.fixture(params=["sqlite", "influxdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    if request.param == "sqlite":
        yield SQLiteStore(tmp_path / "soundmon.db")
        return
    s = InfluxStore(tmp_path / "soundmon.db", influx_config(request.getfixturevalue("influx")))
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


def test_the_downsampled_bucket_keeps_statistics_energetic(influx, tmp_path: Path) -> None:
    """1-minute aggregates give the raw data's LAeq, LAmax, LAmin, coverage and Lden (exactly:
    energy and duration add up); percentiles of 1 s values cannot come from them and are null."""
    # downsample_every_s=0: every batch refreshes the minutes it wrote to (default: every 10 s)
    store = InfluxStore(tmp_path / "soundmon.db",
                        dataclasses.replace(influx_config(influx), downsample_every_s=0))
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


def test_grafana_dashboard_queries_run_on_the_data(influx, tmp_path: Path) -> None:
    """Every InfluxQL query of deploy/grafana/soundmon.json runs (Grafana's macros filled in as
    Grafana does), returns each device, and the range LAeq panel equals the store's LAeq."""
    dashboard = json.loads((Path(__file__).parents[2] / "deploy/grafana/soundmon.json").read_text())
    store = InfluxStore(tmp_path / "soundmon.db", influx_config(influx))
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


def test_levels_older_than_the_retention_are_dropped_not_retried(influx, tmp_path: Path) -> None:
    """Records from before the bucket's retention (a long outage) are dropped with a warning;
    the rest of the batch is stored and the write does not fail (a retry could never succeed)."""
    config = influx_config(influx)
    server, _ = influx
    server.query(f'ALTER RETENTION POLICY "autogen" ON "{config.bucket}" DURATION 1h SHARD DURATION 1h')
    store = InfluxStore(tmp_path / "soundmon.db", config)
    try:
        now = int(time.time() * 1000)
        assert store.insert_levels([pcm(0, now - 2 * 86_400_000, 60.0), pcm(1, now, 61.0)]) == 1
        assert [r.seq for r in store.levels("kitchen", 0, now + 1000)] == [1]
    finally:
        store.close()


def test_pipeline_stores_levels_in_influxdb(request: pytest.FixtureRequest, influx, tmp_path: Path,
                                           mosquitto: int, redis_port: int) -> None:
    """SOUNDMON_STORE=influxdb: gateway and workers as processes write the levels to InfluxDB
    (through influxdb-client's v2 write), the device registry stays in SQLite."""
    config = influx_config(influx)
    _, proxy = influx
    writes_before = proxy.writes
    stack = Stack(tmp_path, mosquitto, redis_port, SOUNDMON_VISIBILITY_TIMEOUT_S="8",
                  SOUNDMON_STORE="influxdb", SOUNDMON_INFLUX_URL=config.url,
                  SOUNDMON_INFLUX_TOKEN="test-token", SOUNDMON_INFLUX_ORG=config.org,
                  SOUNDMON_INFLUX_BUCKET=config.bucket, SOUNDMON_INFLUX_BUCKET_1M=config.bucket_1m)
    stack.start()
    store = None
    try:
        pub = Publisher(stack.mqtt_port)
        t0 = int(time.time() * 1000)
        sent = {}
        for seq in range(12):
            samples = sine(1000, 1000 * (seq + 1), 8000, 4000, offset=300)
            sent[seq] = dbfs_by_hand(samples)
            pub.publish("soundmon/v1/kitchen/frame", hand_frame(seq, 77, t0 + seq * 500, 8000, samples))
        pub.publish("soundmon/v1/kitchen/frame", hand_frame(3, 77, t0 + 1500, 8000,
                                                            sine(1000, 4000, 8000, 4000, offset=300)))
        pub.close()
        store = InfluxStore(stack.data / "soundmon.db", config)
        wait_until(lambda: store.count_levels("kitchen") == 12, timeout=180,  # cold workers: slow
                   what="12 levels in InfluxDB")
        rows = store.levels("kitchen", 0, 2**62)
        assert [r.seq for r in rows] == list(range(12))
        assert [r.t_ms for r in rows] == [t0 + s * 500 for s in range(12)]
        for r in rows:
            assert r.dbfs == pytest.approx(sent[r.seq], abs=0.01)
            assert r.laeq == pytest.approx(sent[r.seq] + r.k_db, abs=0.05)
        assert proxy.writes > writes_before
        wait_until(lambda: store.device("kitchen") is not None, what="the device in the registry")
        with sqlite3.connect(stack.data / "soundmon.db") as db:  # levels went to InfluxDB only
            assert db.execute("SELECT count(*) FROM levels").fetchone()[0] == 0
        stats = store.stats("kitchen", t0, t0 + 6000)
        assert stats["coverage"] == 1.0 and stats["laeq"] is not None
        # the API, built by create_app from the same settings, reads the levels from InfluxDB
        settings = Settings(SOUNDMON_DATA=str(stack.data), api_token="test-token",
                            redis_url=f"redis://127.0.0.1:{redis_port}/0", store="influxdb",
                            influx_url=config.url, influx_token="test-token",
                            influx_bucket=config.bucket, influx_bucket_1m=config.bucket_1m)
        with TestClient(create_app(settings)) as client:
            auth = {"Authorization": "Bearer test-token"}
            got = client.get("/api/devices/kitchen/stats", params={"start": t0, "end": t0 + 6000},
                             headers=auth)
            assert got.status_code == 200, got.text
            assert got.json() == {"device": "kitchen", **stats}
            got = client.get("/api/devices/kitchen/levels", params={"start": t0, "end": t0 + 6000},
                             headers=auth)
            assert [lv["seq"] for lv in got.json()["levels"]] == list(range(12))
            assert isinstance(client.app.state.store, InfluxStore)
    finally:
        if store is not None:
            store.close()
        stack.stop()
        request.node.add_report_section("teardown", "service logs", stack.logs())
