"""The level store: devices, per-frame levels, alerts and calibration offsets.

``Store`` is the interface every backend implements (SQLite now, InfluxDB later); the
services only use these methods. ``SQLiteStore`` is the embedded default: one file under the
data directory in WAL mode, shared safely by the worker processes and the API.

Writes are idempotent: a level is keyed by (device, boot, seq, idx) and inserted with
``INSERT OR IGNORE``, so a batch that Celery redelivers is stored once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from soundmon import jsonfast
from soundmon.bands import band_centres_hz, decode_bands
from soundmon.history import alerts_between, downsample, iter_level_rows
from soundmon.metrics import mask_to_flags
from soundmon.profiles import profile_for
from soundmon.stats import level_stats


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class LevelRow:
    """One stored measurement: a kind-1 frame, or one record of a kind-2/3 frame."""

    device: str
    boot: int
    seq: int
    idx: int
    t_ms: int
    kind: int
    rate: int
    n: int
    dbfs: float | None
    lzeq: float | None
    laeq: float | None
    dominant_hz: float | None
    clip_frac: float | None
    duty: float | None
    edges: int | None
    k_db: float | None
    flags: int
    # measurement-grade fields (issue 3); None for kind-2/3 records and rows stored before them
    lceq: float | None = None
    lafmax: float | None = None
    lafmin: float | None = None
    lcpeak: float | None = None
    centroid_hz: float | None = None
    bands: bytes | None = None  # 1/3-octave Z levels in dBFS, int16 centi-dB (workers.spectrum)

    def api(self) -> dict[str, Any]:
        bands = decode_bands(self.bands)
        offset = self.k_db if self.k_db is not None else 0.0
        return {
            "t_ms": self.t_ms,
            "seq": self.seq,
            "boot": self.boot,
            "kind": self.kind,
            "dbfs": _round(self.dbfs, 3),
            "laeq": _round(self.laeq, 3),
            "lzeq": _round(self.lzeq, 3),
            "lceq": _round(self.lceq, 3),
            "lafmax": _round(self.lafmax, 3),
            "lafmin": _round(self.lafmin, 3),
            "lcpeak": _round(self.lcpeak, 3),
            "dominant_hz": _round(self.dominant_hz, 2),
            "centroid_hz": _round(self.centroid_hz, 1),
            # band levels in dB (dBFS + K; dBFS when the sensor has no K) and their centres
            "bands_db": None if bands is None else [round(b + offset, 2) for b in bands],
            "bands_hz": None if bands is None else list(band_centres_hz(self.rate))[: len(bands)],
            "duty": self.duty,
            "edges": self.edges,
            "clip_frac": self.clip_frac,
            "flags": mask_to_flags(self.flags),
        }


@dataclass(slots=True)
class Alert:
    id: int
    device: str
    kind: str
    state: str
    value: float
    threshold: float
    unit: str
    started_ms: int
    ended_ms: int | None
    worst: float
    extra: dict[str, Any] = field(default_factory=dict)
    rule: str = "level"  # workers.rules: level, frequency or threshold
    severity: str = "warning"
    acked_by: str | None = None
    acked_ms: int | None = None
    last_out_ms: int | None = None  # end of the last level out of bounds
    boot: int | None = None  # the frames that caused it: (device, boot, first_seq..last_seq)
    first_seq: int | None = None
    last_seq: int | None = None
    resolved_by: str | None = None  # who resolved it by hand (POST .../resolve); None: by itself


@dataclass(slots=True)
class DeviceCalibration:
    k_db: float | None  # None: the sensor gives no level (lm393)
    calibrated: bool
    noise_floor_dbfs: float | None


class Store(Protocol):
    """What the services need from a level store."""

    def insert_levels(self, rows: Sequence[LevelRow]) -> int: ...
    def levels(self, device: str, start_ms: int, end_ms: int, limit: int) -> list[LevelRow]: ...
    def touch_devices(self, latest: Iterable[LevelRow]) -> None: ...
    def set_status(self, device: str, status: dict[str, Any], recv_ms: int) -> None: ...
    def devices(self) -> list[dict[str, Any]]: ...
    def device(self, device: str) -> dict[str, Any] | None: ...
    def calibrations(self, devices: Iterable[str]) -> dict[str, DeviceCalibration]: ...
    def set_calibration(self, device: str, offset_db: float, source: str) -> None: ...
    def alerts(self, device: str | None, state: str | None, limit: int) -> list[Alert]: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    sensor TEXT,
    fw TEXT,
    rate INTEGER,
    frame_ms INTEGER,
    state TEXT NOT NULL DEFAULT 'unknown',
    status_json TEXT,
    last_status_ms INTEGER,
    last_seen_ms INTEGER,
    calibration_db REAL,
    last_t_ms INTEGER,
    dbfs REAL, lzeq REAL, laeq REAL, dominant_hz REAL, flags INTEGER,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS levels (
    device TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL,
    t_ms INTEGER NOT NULL, kind INTEGER NOT NULL, rate INTEGER NOT NULL, n INTEGER NOT NULL,
    dbfs REAL, lzeq REAL, laeq REAL, dominant_hz REAL, clip_frac REAL,
    duty REAL, edges INTEGER, k_db REAL, flags INTEGER NOT NULL,
    lceq REAL, lafmax REAL, lafmin REAL, lcpeak REAL, centroid_hz REAL, bands BLOB,
    PRIMARY KEY (device, boot, seq, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS levels_by_time ON levels (device, t_ms);
CREATE TABLE IF NOT EXISTS calibrations (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL, t_ms INTEGER NOT NULL, offset_db REAL NOT NULL, source TEXT NOT NULL,
    reference_db REAL, detail TEXT
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL,
    value REAL NOT NULL, threshold REAL NOT NULL, unit TEXT NOT NULL,
    started_ms INTEGER NOT NULL, ended_ms INTEGER, worst REAL NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (started_ms);
CREATE TABLE IF NOT EXISTS rule_sets (
    scope TEXT PRIMARY KEY,         -- '' for the defaults, else a device id (a partial override)
    rules_json TEXT NOT NULL, updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS channels (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, config_json TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
-- what happened to an alert that channels are told about: the outbox of the notify queue
CREATE TABLE IF NOT EXISTS alert_events (
    id INTEGER PRIMARY KEY, alert_id INTEGER NOT NULL, event TEXT NOT NULL, n INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, planned INTEGER NOT NULL DEFAULT 0,
    UNIQUE (alert_id, event, n)
);
CREATE INDEX IF NOT EXISTS alert_events_unplanned ON alert_events (created_ms) WHERE planned = 0;
-- the delivery log: one row per (event, channel)
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY, event_id INTEGER NOT NULL, channel TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
    dispatched INTEGER NOT NULL DEFAULT 0, lease_until_ms INTEGER,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    UNIQUE (event_id, channel)
);
CREATE TABLE IF NOT EXISTS alert_state (
    device TEXT PRIMARY KEY,
    hwm_t_ms INTEGER NOT NULL,      -- newest level time analysed (redelivered batches skip)
    state_json TEXT NOT NULL
);
"""


#: Columns added after the first release: (table, column, type). ``SQLiteStore`` adds the
#: missing ones to an existing database file when it opens it (ALTER TABLE ... ADD COLUMN).
MIGRATIONS: tuple[tuple[str, str, str], ...] = (
    ("levels", "lceq", "REAL"),
    ("levels", "lafmax", "REAL"),
    ("levels", "lafmin", "REAL"),
    ("levels", "lcpeak", "REAL"),
    ("levels", "centroid_hz", "REAL"),
    ("levels", "bands", "BLOB"),
    ("calibrations", "reference_db", "REAL"),
    ("calibrations", "detail", "TEXT"),
    # alert rules and notifications (issue 5)
    ("alerts", "rule", "TEXT NOT NULL DEFAULT 'level'"),
    ("alerts", "severity", "TEXT NOT NULL DEFAULT 'warning'"),
    ("alerts", "acked_by", "TEXT"),
    ("alerts", "acked_ms", "INTEGER"),
    ("alerts", "last_out_ms", "INTEGER"),
    ("alerts", "boot", "INTEGER"),
    ("alerts", "first_seq", "INTEGER"),
    ("alerts", "last_seq", "INTEGER"),
    # dashboard device settings (issue 6): a display name, where it hangs, free notes
    ("devices", "name", "TEXT"),
    ("devices", "location", "TEXT"),
    ("devices", "notes", "TEXT"),
    # resolving by hand (POST /api/alerts/{id}/resolve): who; ended_ms is when
    ("alerts", "resolved_by", "TEXT"),
    # what `soundmon deploy` last wrote to the board, without its passwords (soundmon.deploy)
    ("devices", "deployed_json", "TEXT"),
)
#: Run after MIGRATIONS (they may need the columns added there).
POST_MIGRATION = (
    "DROP INDEX IF EXISTS one_open_alert",
    # alerts from before the rules had names: frequency kinds belong to the frequency rule
    "UPDATE alerts SET rule='frequency' WHERE kind LIKE 'freq%' AND rule='level'",
    # exactly one unresolved alert per device, rule and kind: the database enforces "no storm"
    "CREATE UNIQUE INDEX IF NOT EXISTS one_open_alert_per_rule ON alerts (device, rule, kind) "
    "WHERE ended_ms IS NULL",
)
ALERT_COLUMNS = ("device", "kind", "state", "value", "threshold", "unit", "started_ms",
                 "ended_ms", "worst", "extra", "rule", "severity", "last_out_ms", "boot",
                 "first_seq", "last_seq")
LEVEL_COLUMNS = ("device", "boot", "seq", "idx", "t_ms", "kind", "rate", "n", "dbfs", "lzeq",
                 "laeq", "dominant_hz", "clip_frac", "duty", "edges", "k_db", "flags", "lceq",
                 "lafmax", "lafmin", "lcpeak", "centroid_hz", "bands")


def _migrate(db: sqlite3.Connection) -> None:
    for table, column, kind in MIGRATIONS:
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    for statement in POST_MIGRATION:
        db.execute(statement)


def _round(v: float | None, nd: int) -> float | None:
    return None if v is None else round(v, nd)


class SQLiteStore:
    """SQLite in WAL mode; one connection per thread, safe across processes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as db:
            db.executescript(SCHEMA)
            with _transaction(db):
                _migrate(db)

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return _Tx(db)  # type: ignore[return-value]

    def ping(self) -> None:
        with self._conn() as db:
            db.execute("SELECT 1").fetchone()

    # ---- levels -------------------------------------------------------------------------
    def insert_levels(self, rows: Sequence[LevelRow]) -> int:
        """Insert rows not stored yet; return how many were new."""
        if not rows:
            return 0
        with self._conn() as db, _transaction(db):
            before = db.total_changes
            db.executemany(
                f"INSERT OR IGNORE INTO levels ({','.join(LEVEL_COLUMNS)}) "
                f"VALUES ({','.join('?' * len(LEVEL_COLUMNS))})",
                [tuple(getattr(r, c) for c in LEVEL_COLUMNS) for r in rows],
            )
            return db.total_changes - before

    def levels(self, device: str, start_ms: int, end_ms: int, limit: int = 10_000) -> list[LevelRow]:
        """Levels of one device with start_ms <= t_ms <= end_ms, oldest first."""
        with self._conn() as db:
            cur = db.execute(
                f"SELECT {','.join(LEVEL_COLUMNS)} FROM levels WHERE device=? AND t_ms BETWEEN ? AND ? "
                "ORDER BY t_ms, boot, seq, idx LIMIT ?",
                (device, start_ms, end_ms, limit),
            )
            return [LevelRow(**dict(row)) for row in cur]

    def count_levels(self, device: str | None = None) -> int:
        with self._conn() as db:
            if device is None:
                return db.execute("SELECT count(*) FROM levels").fetchone()[0]
            return db.execute("SELECT count(*) FROM levels WHERE device=?", (device,)).fetchone()[0]

    # ---- devices ------------------------------------------------------------------------
    def _ensure_device(self, db: sqlite3.Connection, device: str) -> None:
        db.execute("INSERT OR IGNORE INTO devices (id, created_ms) VALUES (?, ?)",
                   (device, now_ms()))

    def touch_devices(self, latest: Iterable[LevelRow]) -> None:
        """Record the newest level of each device (for the device list) and its last-seen time."""
        seen = now_ms()
        with self._conn() as db, _transaction(db):
            for r in latest:
                self._ensure_device(db, r.device)
                db.execute(
                    "UPDATE devices SET last_seen_ms=max(coalesce(last_seen_ms,0), ?), "
                    "rate=coalesce(rate, ?) WHERE id=?",
                    (seen, r.rate if r.kind == 1 else None, r.device),
                )
                db.execute(
                    "UPDATE devices SET last_t_ms=?, dbfs=?, lzeq=?, laeq=?, dominant_hz=?, "
                    "flags=? WHERE id=? AND coalesce(last_t_ms, -1) <= ?",
                    (r.t_ms, r.dbfs, r.lzeq, r.laeq, r.dominant_hz, r.flags, r.device, r.t_ms),
                )

    def set_status(self, device: str, status: dict[str, Any], recv_ms: int) -> None:
        state = str(status.get("state", "unknown"))[:16]
        with self._conn() as db:
            self._ensure_device(db, device)
            db.execute(
                "UPDATE devices SET state=?, status_json=?, last_status_ms=?, "
                "sensor=coalesce(?, sensor), fw=coalesce(?, fw), rate=coalesce(?, rate), "
                "frame_ms=coalesce(?, frame_ms), last_seen_ms=max(coalesce(last_seen_ms,0), ?) "
                "WHERE id=?",
                (
                    state, json.dumps(status), recv_ms,
                    _str_or_none(status.get("sensor")), _str_or_none(status.get("fw")),
                    _int_or_none(status.get("rate")), _int_or_none(status.get("frame_ms")),
                    recv_ms, device,
                ),
            )

    def devices(self) -> list[dict[str, Any]]:
        with self._conn() as db:
            return [self._device_dict(row) for row in db.execute("SELECT * FROM devices ORDER BY id")]

    def device(self, device: str) -> dict[str, Any] | None:
        with self._conn() as db:
            row = db.execute("SELECT * FROM devices WHERE id=?", (device,)).fetchone()
        return self._device_dict(row) if row else None

    @staticmethod
    def _device_dict(row: sqlite3.Row) -> dict[str, Any]:
        profile = profile_for(row["sensor"])
        k = row["calibration_db"]
        return {
            "id": row["id"],
            "online": row["state"] == "online",
            "state": row["state"],
            "last_seen": row["last_seen_ms"],
            "sensor": row["sensor"],
            "fw": row["fw"],
            "rate": row["rate"],
            "frame_ms": row["frame_ms"],
            "laeq": _round(row["laeq"], 2),
            "lzeq": _round(row["lzeq"], 2),
            "dbfs": _round(row["dbfs"], 2),
            "dominant_hz": _round(row["dominant_hz"], 1),
            "level_t_ms": row["last_t_ms"],
            "flags": mask_to_flags(row["flags"] or 0),
            "calibration_db": k if k is not None else profile.default_k_db,
            "calibrated": k is not None,
            "status": json.loads(row["status_json"]) if row["status_json"] else None,
            "name": row["name"],
            "location": row["location"],
            "notes": row["notes"],
            "deployed": json.loads(row["deployed_json"]) if row["deployed_json"] else None,
        }

    def set_device_info(self, device: str, info: dict[str, str | None]) -> None:
        """Set some of ``name``, ``location``, ``notes`` (None clears one) of a known device."""
        cols = [c for c in ("name", "location", "notes") if c in info]
        if cols:
            with self._conn() as db:
                db.execute(f"UPDATE devices SET {', '.join(c + '=?' for c in cols)} WHERE id=?",
                           [*(info[c] for c in cols), device])

    def set_deployed(self, device: str, record: dict[str, Any]) -> None:
        """Remember what ``soundmon deploy`` wrote to a device (creating it if never seen).

        ``record`` must hold no secrets: ``soundmon.deploy.deploy_record`` masks them.
        """
        with self._conn() as db, _transaction(db):
            self._ensure_device(db, device)
            db.execute("UPDATE devices SET deployed_json=? WHERE id=?",
                       (json.dumps(record), device))

    # ---- history and export (soundmon.history) -------------------------------------------
    def history(self, device: str, start_ms: int, end_ms: int, points: int) -> dict[str, Any]:
        """LAeq (energetic), LAFmax and LAFmin in at most ``points`` buckets over [start, end)."""
        with self._conn() as db:
            return downsample(db, device, start_ms, end_ms, points)

    def iter_levels(self, device: str | None, start_ms: int, end_ms: int) -> Iterator[LevelRow]:
        """Levels with start <= t < end (one device or all), oldest first, paged from the file."""
        for row in iter_level_rows(self._conn, LEVEL_COLUMNS, device, start_ms, end_ms):
            yield LevelRow(**dict(row))

    def alerts_between(self, device: str | None, start_ms: int, end_ms: int) -> list[Alert]:
        """Alerts overlapping [start, end), oldest first."""
        with self._conn() as db:
            return [self._alert(r) for r in alerts_between(db, device, start_ms, end_ms)]

    # ---- statistics ---------------------------------------------------------------------
    def stats(self, device: str, start_ms: int, end_ms: int, timezone: str = "UTC") -> dict[str, Any]:
        """LAeq, LAmax, LAmin, L10/L50/L90, Lden and coverage over [start_ms, end_ms), in SQL.

        ``timezone`` (IANA name) places the Lden day/evening/night periods; see soundmon.stats.
        """
        with self._conn() as db:
            return level_stats(db, device, start_ms, end_ms, ZoneInfo(timezone))

    # ---- calibration --------------------------------------------------------------------
    def calibrations(self, devices: Iterable[str]) -> dict[str, DeviceCalibration]:
        ids = sorted(set(devices))
        out: dict[str, DeviceCalibration] = {}
        with self._conn() as db:
            rows = {
                r["id"]: r
                for r in db.execute(
                    f"SELECT id, sensor, calibration_db FROM devices WHERE id IN "
                    f"({','.join('?' * len(ids))})",
                    ids,
                )
            }
        for dev in ids:
            row = rows.get(dev)
            profile = profile_for(row["sensor"] if row else None)
            if row is not None and row["calibration_db"] is not None:
                out[dev] = DeviceCalibration(row["calibration_db"], True, profile.noise_floor_dbfs)
            else:
                out[dev] = DeviceCalibration(profile.default_k_db, False, profile.noise_floor_dbfs)
        return out

    def set_calibration(self, device: str, offset_db: float, source: str = "api",
                        reference_db: float | None = None,
                        detail: dict[str, Any] | None = None) -> None:
        """Set K and append it to the device's history (with the calibrator level, if any)."""
        with self._conn() as db, _transaction(db):
            self._ensure_device(db, device)
            db.execute("UPDATE devices SET calibration_db=? WHERE id=?", (offset_db, device))
            db.execute(
                "INSERT INTO calibrations (device, t_ms, offset_db, source, reference_db, detail) "
                "VALUES (?,?,?,?,?,?)",
                (device, now_ms(), offset_db, source, reference_db,
                 None if detail is None else json.dumps(detail)),
            )

    def calibration_history(self, device: str) -> list[dict[str, Any]]:
        """Every K set for the device, oldest first: t_ms, offset_db, source, reference_db, detail."""
        with self._conn() as db:
            rows = db.execute(
                "SELECT t_ms, offset_db, source, reference_db, detail FROM calibrations "
                "WHERE device=? ORDER BY id", (device,)).fetchall()
        return [{**dict(r), "detail": json.loads(r["detail"]) if r["detail"] else None}
                for r in rows]

    # ---- alerts -------------------------------------------------------------------------
    def alerts(
        self, device: str | None = None, state: str | None = None, limit: int = 1000,
        since_ms: int | None = None,
    ) -> list[Alert]:
        """Alerts, newest first; ``since_ms``: only those still open or ended at/after it."""
        sql, args = "SELECT * FROM alerts WHERE 1=1", []
        if device:
            sql += " AND device=?"
            args.append(device)
        if state:
            sql += " AND state=?"
            args.append(state)
        if since_ms is not None:
            sql += " AND (ended_ms IS NULL OR ended_ms >= ?)"
            args.append(since_ms)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._conn() as db:
            return [self._alert(r) for r in db.execute(sql, args)]

    @staticmethod
    def _alert(r: sqlite3.Row) -> Alert:
        d = dict(r)
        d["extra"] = json.loads(d["extra"])
        return Alert(**d)

    def run_analysis(
        self, device: str, analyse: Callable[[int, dict[str, Any], dict[str, Alert]], Any]
    ) -> Any:
        """Analyse one device under the database write lock (see ``run_analyses``)."""
        return self.run_analyses({device: analyse})[device]

    def run_analyses(
        self, analyses: Mapping[str, Callable[[int, dict[str, Any], dict[str, Alert]], Any]]
    ) -> dict[str, Any]:
        """Analyse devices under the database write lock and commit the outcomes atomically.

        ``analyses`` maps each device to ``analyse(hwm_t_ms, state, open_alerts)``, which
        returns an object with ``hwm_t_ms``, ``state``, ``opened`` (alerts), ``resolved``
        ((id, ended_ms) pairs), ``worst`` ((id, value) pairs) and ``extended`` ((id,
        last_out_ms, last_seq)). Holding the lock from read to write means two analyze
        processes never interleave on one device; one transaction for all the devices of a
        batch (with real-time devices, one frame each) costs one commit, not one per device.
        Alerts in ``opened`` get their ids set; an alert the unique index refuses (already
        open) is dropped from ``opened``. The same transaction writes an ``opened`` /
        ``resolved`` alert event for the notify queue (ids in ``outcome.events``), so a
        notification is never lost to a crash after the commit.
        """
        t_now = now_ms()
        devices = list(analyses)
        outcomes: dict[str, Any] = {}
        marks = ",".join("?" * len(devices))
        with self._conn() as db, _transaction(db):
            states = {r[0]: (r[1], r[2]) for r in db.execute(
                f"SELECT device, hwm_t_ms, state_json FROM alert_state WHERE device IN ({marks})",
                devices)}
            open_by_device: dict[str, dict[str, Alert]] = defaultdict(dict)
            for r in db.execute(
                    f"SELECT * FROM alerts WHERE device IN ({marks}) AND ended_ms IS NULL", devices):
                open_by_device[r["device"]][r["kind"]] = self._alert(r)
            for device, analyse in analyses.items():
                hwm, state_json = states.get(device, (-1, None))
                state = jsonfast.loads(state_json) if state_json else {}
                outcome = analyse(hwm, state, open_by_device.get(device, {}))
                outcome.events = self._apply_outcome(db, device, outcome, t_now)
                outcomes[device] = outcome
        return outcomes

    def _apply_outcome(self, db: sqlite3.Connection, device: str, outcome: Any,
                       t_now: int) -> list[int]:
        """Write one device's analysis outcome (inside ``run_analyses``' transaction)."""
        events: list[int] = []
        for alert_id, value in outcome.worst:
            db.execute("UPDATE alerts SET worst=? WHERE id=?", (value, alert_id))
        for alert_id, last_out, last_seq in getattr(outcome, "extended", ()):
            db.execute("UPDATE alerts SET last_out_ms=?, last_seq=? WHERE id=?",
                       (last_out, last_seq, alert_id))
        for alert_id, ended in outcome.resolved:
            cur = db.execute(
                "UPDATE alerts SET state='resolved', ended_ms=? WHERE id=? AND ended_ms IS NULL",
                (ended, alert_id),
            )
            if cur.rowcount:
                events.append(self._add_event(db, alert_id, "resolved", 0, t_now))
        made = []
        for a in outcome.opened:
            cur = db.execute(
                f"INSERT OR IGNORE INTO alerts ({','.join(ALERT_COLUMNS)}) "
                f"VALUES ({','.join('?' * len(ALERT_COLUMNS))})",
                tuple(json.dumps(a.extra) if c == "extra" else getattr(a, c)
                      for c in ALERT_COLUMNS),
            )
            if cur.rowcount:
                a.id = cur.lastrowid or 0
                made.append(a)
                events.append(self._add_event(db, a.id, "opened", 0, t_now))
                if a.ended_ms is not None:  # opened and resolved within this batch
                    events.append(self._add_event(db, a.id, "resolved", 0, t_now))
        outcome.opened = made
        db.execute(
            "INSERT INTO alert_state (device, hwm_t_ms, state_json) VALUES (?,?,?) "
            "ON CONFLICT(device) DO UPDATE SET hwm_t_ms=excluded.hwm_t_ms, "
            "state_json=excluded.state_json",
            (device, outcome.hwm_t_ms, jsonfast.dumps(outcome.state)),
        )
        return [e for e in events if e]

    def open_alerts(self, device: str) -> dict[str, Alert]:
        with self._conn() as db:
            rows = db.execute(
                "SELECT * FROM alerts WHERE device=? AND ended_ms IS NULL", (device,)
            ).fetchall()
        return {r["kind"]: self._alert(r) for r in rows}

    def alert(self, alert_id: int) -> Alert | None:
        with self._conn() as db:
            r = db.execute("SELECT * FROM alerts WHERE id=?", (alert_id,)).fetchone()
        return self._alert(r) if r else None

    def acknowledge(self, alert_id: int, by: str) -> tuple[Alert | None, str]:
        """Acknowledge an open alert: (alert, "ok"), or (alert or None, why not)."""
        with self._conn() as db, _transaction(db):
            r = db.execute("SELECT * FROM alerts WHERE id=?", (alert_id,)).fetchone()
            if r is None:
                return None, "unknown"
            if r["state"] != "open":
                return self._alert(r), r["state"]
            db.execute("UPDATE alerts SET state='acknowledged', acked_by=?, acked_ms=? WHERE id=?",
                       (by, now_ms(), alert_id))
            r = db.execute("SELECT * FROM alerts WHERE id=?", (alert_id,)).fetchone()
        return self._alert(r), "ok"

    def resolve(self, alert_id: int, by: str) -> tuple[Alert | None, str, int]:
        """Resolve an open or acknowledged alert by hand: (alert, "ok", event id), or
        (alert or None, why not, 0).

        Like an automatic resolve (``run_analysis``) it sets ``ended_ms`` and writes the one
        ``resolved`` event for the notify queue in the same transaction; the unique
        (alert, event, n) key and the ``ended_ms IS NULL`` guard mean the alert can never be
        announced as resolved twice, whichever comes first.
        """
        t = now_ms()
        with self._conn() as db, _transaction(db):
            r = db.execute("SELECT * FROM alerts WHERE id=?", (alert_id,)).fetchone()
            if r is None:
                return None, "unknown", 0
            if r["ended_ms"] is not None:
                return self._alert(r), "resolved", 0
            db.execute("UPDATE alerts SET state='resolved', ended_ms=?, resolved_by=? "
                       "WHERE id=? AND ended_ms IS NULL", (t, by, alert_id))
            event_id = self._add_event(db, alert_id, "resolved", 0, t)
            r = db.execute("SELECT * FROM alerts WHERE id=?", (alert_id,)).fetchone()
        return self._alert(r), "ok", event_id

    # ---- rules ------------------------------------------------------------------------------
    def rule_set(self, scope: str) -> dict[str, Any] | None:
        """The stored rule set of a scope ('' = the defaults, else a device's override)."""
        return self.rule_sets([scope])[scope]

    def rule_sets(self, scopes: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """The stored rule sets of several scopes in one query (None where there is none)."""
        wanted = list(dict.fromkeys(scopes))
        with self._conn() as db:
            found = dict(db.execute(
                f"SELECT scope, rules_json FROM rule_sets WHERE scope IN ({','.join('?' * len(wanted))})",
                wanted).fetchall()) if wanted else {}
        return {scope: json.loads(found[scope]) if scope in found else None for scope in wanted}

    def set_rule_set(self, scope: str, rules: dict[str, Any] | None) -> None:
        """Store (or with None, remove) a scope's rule set."""
        with self._conn() as db:
            if rules is None:
                db.execute("DELETE FROM rule_sets WHERE scope=?", (scope,))
                return
            db.execute(
                "INSERT INTO rule_sets (scope, rules_json, updated_ms) VALUES (?,?,?) "
                "ON CONFLICT(scope) DO UPDATE SET rules_json=excluded.rules_json, "
                "updated_ms=excluded.updated_ms", (scope, json.dumps(rules), now_ms()))

    # ---- notification channels, alert events and the delivery log --------------------------
    def channels(self) -> list[dict[str, Any]]:
        with self._conn() as db:
            rows = db.execute("SELECT * FROM channels ORDER BY id").fetchall()
        return [{"id": r["id"], "kind": r["kind"], "created_ms": r["created_ms"],
                 **json.loads(r["config_json"])} for r in rows]

    def channel(self, channel_id: int) -> dict[str, Any] | None:
        return next((c for c in self.channels() if c["id"] == channel_id), None)

    def add_channel(self, kind: str, config: dict[str, Any]) -> int:
        with self._conn() as db:
            cur = db.execute("INSERT INTO channels (kind, config_json, created_ms) VALUES (?,?,?)",
                             (kind, json.dumps(config), now_ms()))
            return cur.lastrowid or 0

    def delete_channel(self, channel_id: int) -> bool:
        with self._conn() as db:
            return db.execute("DELETE FROM channels WHERE id=?", (channel_id,)).rowcount > 0

    @staticmethod
    def _add_event(db: sqlite3.Connection, alert_id: int, event: str, n: int, t: int) -> int:
        cur = db.execute("INSERT OR IGNORE INTO alert_events (alert_id, event, n, created_ms) "
                         "VALUES (?,?,?,?)", (alert_id, event, n, t))
        return (cur.lastrowid or 0) if cur.rowcount else 0

    def add_alert_event(self, alert_id: int, event: str, n: int = 0) -> int:
        """Record an event (e.g. reminder n) once; 0 if it was recorded already."""
        with self._conn() as db, _transaction(db):
            return self._add_event(db, alert_id, event, n, now_ms())

    def alert_event(self, event_id: int) -> dict[str, Any] | None:
        with self._conn() as db:
            r = db.execute("SELECT * FROM alert_events WHERE id=?", (event_id,)).fetchone()
        return dict(r) if r else None

    def unplanned_events(self, before_ms: int, limit: int = 100) -> list[int]:
        """Events the notify queue has not taken up, written before ``before_ms``."""
        with self._conn() as db:
            rows = db.execute("SELECT id FROM alert_events WHERE planned=0 AND created_ms < ? "
                              "ORDER BY id LIMIT ?", (before_ms, limit)).fetchall()
        return [r[0] for r in rows]

    def plan_deliveries(self, event_id: int, channels: Sequence[str]) -> list[dict[str, Any]]:
        """Create the event's delivery rows (once) and return those not finished yet."""
        t = now_ms()
        with self._conn() as db, _transaction(db):
            for ch in channels:
                db.execute("INSERT OR IGNORE INTO deliveries (event_id, channel, created_ms, "
                           "updated_ms) VALUES (?,?,?,?)", (event_id, ch, t, t))
            rows = db.execute("SELECT * FROM deliveries WHERE event_id=? AND state='pending' "
                              "ORDER BY id", (event_id,)).fetchall()
        return [dict(r) for r in rows]

    def event_planned(self, alert_id: int, event: str) -> bool:
        """Whether the alert's event was routed already (True if there is no such event)."""
        with self._conn() as db:
            r = db.execute("SELECT min(planned) FROM alert_events WHERE alert_id=? AND event=?",
                           (alert_id, event)).fetchone()
        return r[0] is None or bool(r[0])

    def mark_event_planned(self, event_id: int) -> None:
        with self._conn() as db:
            db.execute("UPDATE alert_events SET planned=1 WHERE id=?", (event_id,))

    def mark_dispatched(self, delivery_id: int) -> None:
        with self._conn() as db:
            db.execute("UPDATE deliveries SET dispatched=1 WHERE id=?", (delivery_id,))

    def delivery(self, delivery_id: int) -> dict[str, Any] | None:
        with self._conn() as db:
            r = db.execute("SELECT * FROM deliveries WHERE id=?", (delivery_id,)).fetchone()
        return dict(r) if r else None

    def claim_delivery(self, delivery_id: int, lease_ms: int) -> tuple[str, int]:
        """Take a pending delivery for one attempt: ("ok", 0), ("busy", ms left) or (state, 0).

        The lease keeps two copies of one task (a redelivered message) from sending at once;
        a worker killed mid-attempt leaves a lease that simply runs out.
        """
        t = now_ms()
        with self._conn() as db, _transaction(db):
            r = db.execute("SELECT state, lease_until_ms FROM deliveries WHERE id=?",
                           (delivery_id,)).fetchone()
            if r is None:
                return "unknown", 0
            if r["state"] != "pending":
                return r["state"], 0
            if r["lease_until_ms"] is not None and r["lease_until_ms"] > t:
                return "busy", r["lease_until_ms"] - t
            db.execute("UPDATE deliveries SET lease_until_ms=?, attempts=attempts+1, updated_ms=? "
                       "WHERE id=?", (t + lease_ms, t, delivery_id))
        return "ok", 0

    def finish_delivery(self, delivery_id: int, state: str, error: str | None = None) -> None:
        """After an attempt: ``sent``, ``failed``, or ``pending`` again (to be retried)."""
        with self._conn() as db:
            db.execute("UPDATE deliveries SET state=?, error=?, lease_until_ms=NULL, updated_ms=? "
                       "WHERE id=?", (state, error, now_ms(), delivery_id))

    def deliveries(self, alert_id: int) -> list[dict[str, Any]]:
        """The delivery log of one alert, oldest first."""
        with self._conn() as db:
            rows = db.execute(
                "SELECT d.*, e.event, e.n FROM deliveries d JOIN alert_events e ON e.id=d.event_id "
                "WHERE e.alert_id=? ORDER BY d.id", (alert_id,)).fetchall()
        return [dict(r) for r in rows]

    def delete_alert(self, alert_id: int) -> tuple[Alert | None, str]:
        """Delete a resolved alert with its events and delivery log: (alert, "ok"), or
        (alert or None, why not: "unknown", or the state of an alert not resolved yet).

        An unresolved alert stays: the rules still track it (deleting it would only make
        them open a new one); resolve it first. Its audio clip is the recording's to delete.
        """
        with self._conn() as db, _transaction(db):
            r = db.execute("SELECT * FROM alerts WHERE id=?", (alert_id,)).fetchone()
            if r is None:
                return None, "unknown"
            if r["ended_ms"] is None:
                return self._alert(r), r["state"]
            db.execute("DELETE FROM deliveries WHERE event_id IN (SELECT id FROM alert_events "
                       "WHERE alert_id=?)", (alert_id,))
            db.execute("DELETE FROM alert_events WHERE alert_id=?", (alert_id,))
            db.execute("DELETE FROM alerts WHERE id=?", (alert_id,))
        return self._alert(r), "ok"


class _Tx:
    """Context manager returning the connection; autocommit mode, explicit BEGIN where needed."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (the connection is in autocommit)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)[:64]


def _int_or_none(v: Any) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def open_store(settings: Any) -> SQLiteStore:
    """The store ``settings.store`` chooses: the SQLite file, or InfluxDB for the levels with the
    same SQLite file for everything else (soundmon.influxstore, docs/influxdb.md)."""
    if getattr(settings, "store", "sqlite") == "influxdb":
        from soundmon.influxstore import InfluxStore

        return InfluxStore.from_settings(settings)
    return SQLiteStore(settings.db_path)
