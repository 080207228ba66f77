"""Energetic statistics computed by the store (SQLite), its migration, and the stats endpoint."""

from __future__ import annotations

import math
import sqlite3
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from soundmon.store import LevelRow, SQLiteStore
from tests.unit.test_api import AUTH, make_client

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def row(seq: int, t_ms: int, laeq: float, dur_s: float = 1.0, lafmax: float | None = None,
        device: str = "kitchen") -> LevelRow:
    return LevelRow(device=device, boot=1, seq=seq, idx=0, t_ms=t_ms, kind=1, rate=8000,
                    n=int(8000 * dur_s), dbfs=laeq - 100, lzeq=laeq, laeq=laeq, dominant_hz=None,
                    clip_frac=0.0, duty=None, edges=None, k_db=100.0, flags=0, lafmax=lafmax,
                    lafmin=None if lafmax is None else laeq - 1)


@pytest.fixture
def store(tmp_path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "soundmon.db")


def test_leq_of_60_and_80_db_is_77_03(store):
    """Two seconds at 60 and 80 dB, as four 0.5 s frames, give LAeq 77.03 dB."""
    store.insert_levels([row(i, T0 + 500 * i, 60.0 if i < 2 else 80.0, 0.5) for i in range(4)])
    s = store.stats("kitchen", T0, T0 + 2000)
    assert s["laeq"] == pytest.approx(77.03, abs=0.005)
    assert (s["l10"], s["l50"], s["l90"]) == (80.0, 60.0, 60.0)
    assert s["coverage"] == 1.0 and s["lden"] is None


def test_one_second_values_group_half_second_frames_energetically(store):
    """A second made of a 60 and an 80 dB half-second is one 1 s value of 77.03 dB."""
    store.insert_levels([row(0, T0, 60.0, 0.5), row(1, T0 + 500, 80.0, 0.5)])
    s = store.stats("kitchen", T0, T0 + 1000)
    assert s["l50"] == pytest.approx(77.03, abs=0.005)


def test_percentiles_are_nearest_rank_of_1_s_values(store):
    """With 1 s levels 1..100 dB, L10 = 90, L50 = 50, L90 = 10."""
    store.insert_levels([row(i, T0 + 1000 * i, float(i + 1)) for i in range(100)])
    s = store.stats("kitchen", T0, T0 + 100_000)
    assert (s["l10"], s["l50"], s["l90"]) == (90.0, 50.0, 10.0)


def test_max_and_min_come_from_the_fast_detector(store):
    """LAmax and LAmin are the extremes of LAFmax / LAFmin, not of the frame Leq."""
    store.insert_levels([row(0, T0, 70.0, lafmax=75.5), row(1, T0 + 1000, 65.0, lafmax=66.0)])
    s = store.stats("kitchen", T0, T0 + 2000)
    assert (s["lamax"], s["lamin"]) == (75.5, 64.0)


def test_coverage_and_empty_window(store):
    """Coverage is the measured share of the window; an empty window gives nulls and 0."""
    store.insert_levels([row(i, T0 + 1000 * i, 70.0) for i in range(30)])
    assert store.stats("kitchen", T0, T0 + 60_000)["coverage"] == 0.5
    empty = store.stats("kitchen", T0 + 100_000, T0 + 200_000)
    assert empty == {"laeq": None, "lamax": None, "lamin": None, "l10": None, "l50": None,
                     "l90": None, "coverage": 0.0, "lden": None}


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York"])
def test_lden_with_local_day_evening_and_night(store, zone):
    """Lden over 24 h = 10 lg((12*10^(Ld/10) + 4*10^((Le+5)/10) + 8*10^((Ln+10)/10)) / 24)."""
    tz = ZoneInfo(zone)
    start = int(datetime(2026, 3, 10, 0, 0, tzinfo=tz).timestamp() * 1000)
    rows = []
    for minute in range(24 * 60):  # one 1 s frame per minute, its level set by local hour
        t = start + minute * 60_000
        hour = datetime.fromtimestamp(t / 1000, tz).hour
        level = 70.0 if 7 <= hour < 19 else 65.0 if 19 <= hour < 23 else 50.0
        rows.append(row(minute, t, level))
    store.insert_levels(rows)
    s = store.stats("kitchen", start, start + 86_400_000, zone)
    expected = 10 * math.log10((12 * 10**7.0 + 4 * 10**7.0 + 8 * 10**6.0) / 24)
    assert s["lden"] == pytest.approx(expected, abs=0.01)
    assert store.stats("kitchen", start, start + 86_399_000, zone)["lden"] is None


def test_migration_adds_the_new_columns_to_an_old_database(tmp_path):
    """A database made by the first release gains the new columns and keeps its rows."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE levels (device TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
            idx INTEGER NOT NULL, t_ms INTEGER NOT NULL, kind INTEGER NOT NULL,
            rate INTEGER NOT NULL, n INTEGER NOT NULL, dbfs REAL, lzeq REAL, laeq REAL,
            dominant_hz REAL, clip_frac REAL, duty REAL, edges INTEGER, k_db REAL,
            flags INTEGER NOT NULL, PRIMARY KEY (device, boot, seq, idx)) WITHOUT ROWID;
        CREATE TABLE calibrations (id INTEGER PRIMARY KEY, device TEXT NOT NULL,
            t_ms INTEGER NOT NULL, offset_db REAL NOT NULL, source TEXT NOT NULL);
        INSERT INTO levels VALUES ('old', 1, 1, 0, 1000, 1, 8000, 4000, -30, 70, 68, 1000, 0,
                                   NULL, NULL, 100, 0);
        INSERT INTO calibrations (device, t_ms, offset_db, source) VALUES ('old', 1, 99.5, 'api');
    """)
    db.commit()
    db.close()
    store = SQLiteStore(path)
    (old,) = store.levels("old", 0, 10_000)
    assert old.laeq == 68 and old.lceq is None and old.bands is None
    assert old.api()["bands_db"] is None
    store.insert_levels([row(2, 2000, 71.0, device="old")])
    assert store.count_levels("old") == 2
    assert store.calibration_history("old")[0]["reference_db"] is None
    SQLiteStore(path)  # opening again is a no-op


def test_bands_are_exposed_in_db_with_their_centres(store):
    """The levels API gives band levels in dB (dBFS + K) and the band centre frequencies."""
    r = row(0, T0, 70.0)
    from soundmon.bands import encode_bands

    r.bands = encode_bands([-40.0] * 23)
    api = r.api()
    assert api["bands_hz"][0] == 20 and api["bands_hz"][-1] == 3150
    assert api["bands_db"] == [60.0] * 23


def test_stats_endpoint(tmp_path, store):
    """GET /api/devices/{id}/stats returns the contract's keys computed by the store."""
    store.insert_levels([row(i, T0 + 1000 * i, 60.0 if i % 2 else 80.0) for i in range(10)])
    store.touch_devices([row(9, T0 + 9000, 60.0)])
    with make_client(tmp_path, store) as client:
        r = client.get("/api/devices/kitchen/stats", headers=AUTH,
                       params={"start": str(T0), "end": str(T0 + 10_000)})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"device", "laeq", "lamax", "lamin", "l10", "l50", "l90", "lden",
                             "coverage"}
        assert body["laeq"] == pytest.approx(77.03, abs=0.01) and body["lden"] is None
        assert client.get("/api/devices/kitchen/stats", headers=AUTH,
                          params={"tz": "Mars/Olympus"}).status_code == 422
        assert client.get("/api/devices/ghost/stats", headers=AUTH).status_code == 404
