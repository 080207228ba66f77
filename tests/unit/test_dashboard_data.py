"""Dashboard accounts, downsampled history, device settings and exports, on a real SQLite file."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from dashboard.app import create_app
from soundmon.cli import main
from soundmon.metrics import flags_to_mask
from soundmon.settings import Settings
from soundmon.store import LevelRow, SQLiteStore
from soundmon.users import ADMIN_PASSWORD_FILE, UserError, UserStore, ensure_admin
from tests.unit.test_api import FakeRedis

TOKEN = "unit-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def row(seq: int, t_ms: int, laeq: float, lafmax: float | None = None, device: str = "dev") -> LevelRow:
    return LevelRow(device=device, boot=1, seq=seq, idx=0, t_ms=t_ms, kind=1, rate=8000, n=4000,
                    dbfs=laeq - 100.0, lzeq=laeq + 1, laeq=laeq, dominant_hz=500.0, clip_frac=0.0,
                    duty=None, edges=None, k_db=100.0, flags=flags_to_mask(["nyquist_limited"]),
                    lafmax=lafmax if lafmax is not None else laeq + 2, lafmin=laeq - 2)


@pytest.fixture
def store(tmp_path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "soundmon.db")
    rows = [row(i, T0 + 500 * i, 60.0 if i % 2 else 80.0) for i in range(40)]  # 20 s
    rows.append(row(40, T0 + 500 * 40, 70.0, lafmax=99.0))
    s.insert_levels(rows)
    s.touch_devices(rows[-1:])
    return s


@pytest.fixture
def client(tmp_path, store) -> TestClient:
    app = create_app(Settings(SOUNDMON_DATA=str(tmp_path), api_token=TOKEN), store, FakeRedis())
    with TestClient(app) as c:
        yield c


# ---- users ------------------------------------------------------------------------------------
def test_passwords_are_argon2_hashes_and_verify(tmp_path):
    """A user's password is stored as an argon2id hash and only the right one verifies."""
    users = UserStore(tmp_path / "soundmon.db")
    assert users.add("alice", "correct horse") is True
    import sqlite3
    stored = sqlite3.connect(tmp_path / "soundmon.db").execute("SELECT hash FROM users").fetchone()[0]
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert users.verify("alice", "correct horse")
    assert not users.verify("alice", "wrong horse") and not users.verify("bob", "correct horse")


def test_bad_names_short_passwords_and_duplicates_are_refused(tmp_path):
    """Clear errors for a bad name, a short password and an existing user without --replace."""
    users = UserStore(tmp_path / "soundmon.db")
    with pytest.raises(UserError, match="user name"):
        users.add("no spaces", "long enough")
    with pytest.raises(UserError, match="at least 8"):
        users.add("alice", "short")
    users.add("alice", "long enough")
    with pytest.raises(UserError, match="exists already"):
        users.add("alice", "another one")


def test_new_password_ends_sessions(tmp_path):
    """Replacing a password (or removing the user) ends that user's sessions."""
    users = UserStore(tmp_path / "soundmon.db")
    users.add("alice", "long enough")
    token, session = users.start_session("alice")
    assert users.session(token) == session
    users.add("alice", "even longer one", replace=True)
    assert users.session(token) is None
    token, _ = users.start_session("alice")
    users.remove("alice")
    assert users.session(token) is None


def test_ensure_admin_creates_one_account_once(tmp_path):
    """A fresh data directory gets `admin` with a saved random password; later starts keep it."""
    name, password = ensure_admin(tmp_path, tmp_path / "soundmon.db")
    assert name == "admin" and password and len(password) >= 12
    assert (tmp_path / ADMIN_PASSWORD_FILE).read_text().strip() == password
    assert (tmp_path / ADMIN_PASSWORD_FILE).stat().st_mode & 0o077 == 0
    assert ensure_admin(tmp_path, tmp_path / "soundmon.db") == ("admin", password)
    assert UserStore(tmp_path / "soundmon.db").verify("admin", password)


def test_user_command_adds_lists_and_removes(tmp_path):
    """`soundmon user add/list/remove` work on the data directory; errors are clean."""
    runner = CliRunner()
    data = ["--data", str(tmp_path)]
    r = runner.invoke(main, ["user", "add", "carol", "--password", "s3cret-pass", *data])
    assert r.exit_code == 0 and "created" in r.output
    r = runner.invoke(main, ["user", "add", "carol", "--password", "s3cret-pass", *data])
    assert r.exit_code == 1 and "exists already" in r.output
    assert runner.invoke(main, ["user", "list", *data]).output.split() == ["carol"]
    assert runner.invoke(main, ["user", "remove", "carol", *data]).exit_code == 0
    assert runner.invoke(main, ["user", "remove", "carol", *data]).exit_code == 1


# ---- history ---------------------------------------------------------------------------------
def test_history_buckets_are_energetic_and_keep_the_peak(client):
    """Each bucket's LAeq is the energetic mean; LAFmax keeps a short peak; empty buckets are gaps."""
    r = client.get("/api/devices/dev/history", headers=AUTH,
                   params={"start": T0, "end": T0 + 40_000, "points": 10})
    assert r.status_code == 200
    body = r.json()
    assert body["bucket_ms"] == 4000
    first = body["points"][0]
    expected = 10 * math.log10((10 ** 8 + 10 ** 6) / 2)  # 80 and 60 dB alternating: 77.0, not 70
    assert first["t_ms"] == T0 and first["n"] == 8
    assert first["laeq"] == pytest.approx(expected, abs=0.01)
    assert first["lafmax"] == 82.0 and first["lafmin"] == 58.0
    assert len(body["points"]) == 6  # 20.5 s of data in 4 s buckets; the rest left out
    assert body["points"][-1]["lafmax"] == 99.0


def test_history_bad_input(client):
    """points out of range and unknown devices get clear 4xx answers."""
    assert client.get("/api/devices/dev/history", headers=AUTH, params={"points": 5}).status_code == 422
    assert client.get("/api/devices/nosuch/history", headers=AUTH).status_code == 404
    r = client.get("/api/devices/dev/history", headers=AUTH, params={"start": T0 + 1, "end": T0})
    assert r.status_code == 422 and "after" in r.json()["detail"]


# ---- device settings ------------------------------------------------------------------------
def test_patch_device_sets_and_clears_fields(client):
    """PATCH sets name/location/notes, leaves unset fields alone, clears with an empty string."""
    r = client.patch("/api/devices/dev", headers=AUTH, json={"name": "Kitchen", "location": "wall"})
    assert r.status_code == 200 and r.json()["name"] == "Kitchen" and r.json()["location"] == "wall"
    r = client.patch("/api/devices/dev", headers=AUTH, json={"location": ""})
    assert r.json()["name"] == "Kitchen" and r.json()["location"] is None
    listed = client.get("/api/devices", headers=AUTH).json()
    assert listed[0]["name"] == "Kitchen"
    assert client.patch("/api/devices/dev", headers=AUTH, json={"id": "x"}).status_code == 422
    assert client.patch("/api/devices/nosuch", headers=AUTH, json={"name": "x"}).status_code == 404
    assert client.patch("/api/devices/dev", headers=AUTH, json={"name": "x" * 81}).status_code == 422


# ---- export ----------------------------------------------------------------------------------
def test_export_levels_csv_and_json(client):
    """Levels of a range as CSV (a header, one row per level, flags joined by |) and as JSON."""
    params = {"device": "dev", "start": T0, "end": T0 + 10_000}
    r = client.get("/api/export/levels", headers=AUTH, params=params)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 20 and rows[0]["time"] == "2026-01-01T00:00:00.000Z"
    assert rows[0]["laeq"] == "80.0" and rows[0]["flags"] == "nyquist_limited"
    data = client.get("/api/export/levels", headers=AUTH, params={**params, "format": "json"}).json()
    assert [d["t_ms"] for d in data] == [int(r["t_ms"]) for r in rows]


def test_export_pages_through_large_ranges(client, store):
    """More rows than one page (5000) come out complete, in order, across devices."""
    many = [row(i, T0 + 100_000 + 10 * i, 65.0, device="big") for i in range(6001)]
    store.insert_levels(many)
    r = client.get("/api/export/levels", headers=AUTH, params={"start": T0, "end": T0 + 200_000})
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 41 + 6001
    t = [int(x["t_ms"]) for x in rows]
    assert t == sorted(t)


def test_export_alerts_overlapping_the_range(client, store):
    """The alerts export holds the alerts that overlap the range, as JSON or CSV."""
    r = client.get("/api/export/alerts", headers=AUTH, params={"format": "json", "start": T0, "end": T0 + 1})
    assert r.status_code == 200 and json.loads(r.text) == []
    r = client.get("/api/export/alerts", headers=AUTH, params={"start": T0, "end": T0 + 1})
    assert r.text.splitlines()[0].startswith("id,device,")
    assert client.get("/api/export/alerts", headers=AUTH, params={"format": "xml"}).status_code == 422


def test_touch_devices_registers_new_devices_and_keeps_the_newest_level(tmp_path) -> None:
    """One upsert per device: a device seen first is registered with its level and rate; a
    late batch (an older level) moves last_seen on but leaves the newer level in place."""
    s = SQLiteStore(tmp_path / "soundmon.db")
    s.touch_devices([row(5, T0 + 5000, 70.0, device="a"), row(1, T0 + 1000, 50.0, device="b")])
    a = s.device("a")
    assert a is not None and a["rate"] == 8000 and a["laeq"] == 70.0
    seen_before = s.device("a")["last_seen"]
    s.touch_devices([row(3, T0 + 3000, 40.0, device="a")])  # older than what a has: ignored
    a = s.device("a")
    assert a["laeq"] == 70.0 and a["last_seen"] >= seen_before
    s.touch_devices([row(9, T0 + 9000, 65.0, device="a")])
    assert s.device("a")["laeq"] == 65.0 and s.device("b")["laeq"] == 50.0
    assert sorted(d["id"] for d in s.devices()) == ["a", "b"]
