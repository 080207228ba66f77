"""The InfluxDB level store: levels in InfluxDB, everything else in SQLite.

``InfluxStore`` is a ``SQLiteStore`` whose *levels* live in InfluxDB. The composition is:

* InfluxDB (``SOUNDMON_INFLUX_*``): ``insert_levels``, ``levels``, ``count_levels``, ``stats``
  and the per-minute downsampled copy (``downsample``);
* SQLite (the file under the data directory, inherited unchanged): the device registry,
  calibration, alerts and the analysis state. They are small, relational, and need
  transactions (one open alert per device and kind), which a time-series database lacks.

Writes go through ``influxdb-client`` (the InfluxDB v2 write API, line protocol, one request
per batch). Reads use InfluxQL on ``/query``, which InfluxDB 1.x, 2.x (v1 compatibility API,
bucket name = database) and 3.x serve; the v2 client's Flux queries would tie reads to 2.x.

Schema (see docs/influxdb.md):

* measurement ``level`` in ``SOUNDMON_INFLUX_BUCKET``; tags ``device``, ``boot``; fields
  ``seq``, ``idx``, ``kind``, ``rate``, ``n``, ``flags``, ``edges`` (integers), ``dur_s``
  (seconds the row covers), the levels in dB (``laeq``, ``lzeq``, ``lceq``, ``lafmax``, ...)
  and ``bands`` (base64 of the int16 centi-dB band levels).
* The timestamp is ``t_ms`` in ns plus ``(seq mod 1000) * 1000 + (idx mod 1000)`` ns: a level
  is named by (device, boot, seq, idx), so a redelivered batch lands on the same series key and
  timestamp and overwrites itself (idempotent), and two frames that carry the same ms (a device
  without a synced clock) stay two points.
* measurement ``level_1m`` in ``SOUNDMON_INFLUX_BUCKET_1M``; tag ``device``; fields ``energy``
  (sum of dur_s 10^(LAeq/10)), ``dur_s``, ``laeq`` (the minute's energetic LAeq), ``lamax``,
  ``lamin``. Energy and duration add up, so any longer window's LAeq and Lden are exact.

Statistics stay energetic: InfluxQL's ``MEAN()`` of dB is never used.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import urllib3
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from soundmon.history import bucket_ms
from soundmon.stats import DAY_MS, LDEN_PERIODS, lden_periods
from soundmon.store import LEVEL_COLUMNS, LevelRow, SQLiteStore

if TYPE_CHECKING:
    from soundmon.settings import Settings

log = logging.getLogger("soundmon.influxstore")

MEASUREMENT = "level"
MEASUREMENT_1M = "level_1m"
NS_PER_MS = 1_000_000
#: InfluxDB stores int64 ns: times past 2262 do not exist; clamp query bounds to this.
MAX_MS = 9_000_000_000_000_000_000 // NS_PER_MS
MINUTE_MS = 60_000
INT_FIELDS = ("seq", "idx", "kind", "rate", "n", "flags", "edges")
FLOAT_FIELDS = ("dbfs", "lzeq", "laeq", "dominant_hz", "clip_frac", "duty", "k_db", "lceq",
                "lafmax", "lafmin", "lcpeak", "centroid_hz")


class InfluxError(RuntimeError):
    """InfluxDB refused a query or a write, or could not be reached."""


@dataclass(frozen=True, slots=True)
class InfluxConfig:
    url: str
    token: str | None
    org: str
    bucket: str
    bucket_1m: str
    raw_retention_days: float = 30.0
    downsample_every_s: float = 10.0
    timeout_s: float = 60.0  # a day's statistics take seconds on a busy InfluxDB


def point_ns(row: LevelRow) -> int:
    """The timestamp of a level: its ms, plus a sub-ms part from (seq, idx) so keys never merge."""
    return row.t_ms * NS_PER_MS + (row.seq % 1000) * 1000 + row.idx % 1000


def duration_s(kind: int, rate: int, n: int) -> float:
    """Seconds a row covers: n / rate for PCM frames, the record interval (ms) otherwise."""
    return n / rate if kind == 1 else rate / 1000.0


def level_point(row: LevelRow) -> Point:
    """One level as a line-protocol point (absent values are left out, as InfluxDB wants)."""
    p = Point(MEASUREMENT).tag("device", row.device).tag("boot", str(row.boot))
    for name in INT_FIELDS:
        v = getattr(row, name)
        if v is not None:
            p = p.field(name, int(v))
    p = p.field("dur_s", float(duration_s(row.kind, row.rate, row.n)))
    for name in FLOAT_FIELDS:
        v = getattr(row, name)
        if v is not None and math.isfinite(v):
            p = p.field(name, float(v))
    if row.bands is not None:
        p = p.field("bands", base64.b64encode(row.bands).decode("ascii"))
    return p.time(point_ns(row), WritePrecision.NS)


def _quote(s: str) -> str:
    """An InfluxQL string literal."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ms_range(start_ms: int, end_ms: int, closed: bool) -> str:
    """``time`` bounds in ns for [start_ms, end_ms) or, closed, [start_ms, end_ms] whole ms."""
    start_ms = max(0, min(start_ms, MAX_MS))
    end_ms = max(0, min(end_ms, MAX_MS))
    if closed:
        return f"time >= {start_ms * NS_PER_MS} AND time <= {end_ms * NS_PER_MS + NS_PER_MS - 1}"
    return f"time >= {start_ms * NS_PER_MS} AND time < {end_ms * NS_PER_MS}"


def _db_rp(bucket: str) -> tuple[str, str | None]:
    """InfluxDB 2.x's virtual DBRP mapping: ``db/rp`` -> (db, rp); a plain name -> (name, None)."""
    db, _, rp = bucket.partition("/")
    return db, rp or None


def _energy(e: float | None, dur: float | None) -> float | None:
    if not e or not dur:
        return None
    return 10 * math.log10(e / dur)


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 2)


def _export_order(r: LevelRow) -> tuple[int, str, int, int, int]:
    """SQLite's ORDER BY of the export (soundmon.history.iter_level_rows)."""
    return (r.t_ms, r.device, r.boot, r.seq, r.idx)


class InfluxStore(SQLiteStore):
    """Levels in InfluxDB (see the module docstring); devices, calibration, alerts in SQLite."""

    #: up to this many 1 s values, L10/L50/L90 are ranked here (see ``_percentiles``)
    PERCENTILE_FETCH_MAX = 100_000

    def __init__(self, sqlite_path: Path | str, config: InfluxConfig) -> None:
        super().__init__(sqlite_path)
        self.config = config
        self._client = InfluxDBClient(url=config.url, token=config.token or None, org=config.org,
                                      timeout=int(config.timeout_s * 1000))
        self._write = self._client.write_api(write_options=SYNCHRONOUS)
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(total=config.timeout_s),
            retries=urllib3.Retry(total=2, connect=2, read=0, backoff_factor=0.2),
        )
        self._dirty: dict[str, set[int]] = defaultdict(set)  # device -> minute starts (ms)
        self._dirty_lock = threading.Lock()
        self._last_downsample = time.monotonic()

    @classmethod
    def from_settings(cls, settings: Settings) -> InfluxStore:
        return cls(settings.db_path, InfluxConfig(
            url=settings.influx_url, token=settings.influx_token, org=settings.influx_org,
            bucket=settings.influx_bucket, bucket_1m=settings.influx_bucket_1m,
            raw_retention_days=settings.influx_raw_retention_days,
        ))

    def close(self) -> None:
        self._write.close()
        self._client.close()
        self._http.clear()

    # ---- InfluxQL over HTTP ---------------------------------------------------------------
    def query(self, statements: Sequence[str], bucket: str | None = None) -> list[list[dict[str, Any]]]:
        """Run InfluxQL statements in one request; per statement, its rows as dicts.

        Rows of every series are merged; tags appear as columns. Times are Unix ns (``time``).
        """
        db, rp = _db_rp(bucket or self.config.bucket)
        fields = {"q": ";".join(statements), "db": db, "epoch": "ns"}
        if rp:
            fields["rp"] = rp
        headers = {"Accept": "application/json"}
        if self.config.token:
            headers["Authorization"] = f"Token {self.config.token}"
        url = self.config.url.rstrip("/") + "/query"
        try:
            resp = self._http.request_encode_body("POST", url, fields=fields, headers=headers,
                                                  encode_multipart=False)
        except urllib3.exceptions.HTTPError as exc:
            raise InfluxError(f"InfluxDB query at {url} failed: {exc}") from exc
        try:
            body = resp.json()
        except ValueError as exc:
            raise InfluxError(f"InfluxDB query at {url}: HTTP {resp.status}, "
                              f"{resp.data[:200]!r}") from exc
        if resp.status != 200 or "error" in body:
            raise InfluxError(f"InfluxDB query at {url}: HTTP {resp.status}: "
                              f"{body.get('error', body)}")
        out: list[list[dict[str, Any]]] = []
        for result in body.get("results", []):
            if "error" in result:
                raise InfluxError(f"InfluxQL error: {result['error']}")
            rows: list[dict[str, Any]] = []
            for series in result.get("series", []):
                tags = series.get("tags", {})
                for values in series["values"]:
                    rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
            out.append(rows)
        if len(out) != len(statements):
            raise InfluxError(f"InfluxDB answered {len(out)} results to {len(statements)} statements")
        return out

    def ping(self) -> None:
        """SQLite answers, and InfluxDB answers an InfluxQL query on the bucket."""
        super().ping()
        self.query([f"SELECT COUNT(seq) FROM {MEASUREMENT} WHERE time >= now() - 1s"])

    # ---- levels ---------------------------------------------------------------------------
    def insert_levels(self, rows: Sequence[LevelRow]) -> int:
        """Write the batch in one request; return how many of its levels were not stored yet.

        Writing is idempotent by design (same series key and timestamp overwrite). The count
        comes from a read of the batch's keys just before the write, so two processes writing
        the same redelivered batch at the same instant may both count it.
        """
        if not rows:
            return 0
        unique = {(r.device, r.boot, r.seq, r.idx): r for r in rows}
        existing = self._existing_keys(list(unique.values()))
        dropped = 0
        try:
            self._write.write(bucket=self.config.bucket, org=self.config.org,
                              record=[level_point(r) for r in unique.values()],
                              write_precision=WritePrecision.NS)
        except Exception as exc:  # the client raises ApiException, urllib3 errors, ...
            if "beyond retention policy" not in str(exc):
                raise InfluxError(f"InfluxDB write to {self.config.url} failed: {exc}") from exc
            # InfluxDB kept the rest of the batch; the old points can never be written
            found = re.search(r"dropped=(\d+)", str(exc))
            dropped = int(found.group(1)) if found else 0
            log.warning("InfluxDB dropped %d levels older than the retention of bucket %s",
                        dropped, self.config.bucket)
        with self._dirty_lock:
            for r in unique.values():
                self._dirty[r.device].add(r.t_ms - r.t_ms % MINUTE_MS)
        self._maybe_downsample()
        return max(0, sum(1 for key in unique if key not in existing) - dropped)

    def _existing_keys(self, rows: list[LevelRow]) -> set[tuple[str, int, int, int]]:
        by_device: dict[str, list[LevelRow]] = defaultdict(list)
        for r in rows:
            by_device[r.device].append(r)
        devices = sorted(by_device)
        statements = []
        for dev in devices:
            lo = min(point_ns(r) for r in by_device[dev])
            hi = max(point_ns(r) for r in by_device[dev])
            statements.append(f"SELECT seq, idx, boot FROM {MEASUREMENT} WHERE device = {_quote(dev)} "
                              f"AND time >= {lo} AND time <= {hi}")
        found = self.query(statements)
        return {(dev, int(p["boot"]), int(p["seq"]), int(p["idx"]))
                for dev, points in zip(devices, found, strict=True) for p in points}

    def levels(self, device: str, start_ms: int, end_ms: int, limit: int = 10_000) -> list[LevelRow]:
        """Levels of one device with start_ms <= t_ms <= end_ms, oldest first, in SQLite's order
        (t_ms, boot, seq, idx) also where ``limit`` cuts a millisecond (see ``iter_levels``)."""
        dev = f"device = {_quote(device)}"
        (points,) = self.query([
            f"SELECT * FROM {MEASUREMENT} WHERE {dev} AND "
            f"{_ms_range(start_ms, end_ms, closed=True)} ORDER BY time ASC LIMIT {int(limit)}"
        ])
        if points and len(points) == limit:  # the rest of the last millisecond may sort earlier
            last_ns = int(points[-1]["time"])
            ms_end_ns = last_ns - last_ns % NS_PER_MS + NS_PER_MS - 1
            (more,) = self.query([f"SELECT * FROM {MEASUREMENT} WHERE {dev} AND time > {last_ns} "
                                  f"AND time <= {ms_end_ns}"])
            points += more
        rows = [self._row(device, p) for p in points]
        rows.sort(key=lambda r: (r.t_ms, r.boot, r.seq, r.idx))
        return rows[:limit]

    @staticmethod
    def _row(device: str, p: dict[str, Any]) -> LevelRow:
        values: dict[str, Any] = {c: None for c in LEVEL_COLUMNS}
        values.update(device=device, boot=int(p["boot"]), t_ms=int(p["time"]) // NS_PER_MS)
        for name in INT_FIELDS:
            if p.get(name) is not None:
                values[name] = int(p[name])
        for name in FLOAT_FIELDS:
            if p.get(name) is not None:
                values[name] = float(p[name])
        if p.get("bands") is not None:
            values["bands"] = base64.b64decode(p["bands"])
        return LevelRow(**values)

    def iter_levels(self, device: str | None, start_ms: int, end_ms: int,
                    page: int = 5000) -> Iterator[LevelRow]:
        """Levels with start <= t < end (one device or all), oldest first in SQLite's order
        (t_ms, device, boot, seq, idx), read about ``page`` points at a time.

        InfluxDB orders the points of one millisecond by their sub-ms part (seq, idx), so a page
        ends on a whole millisecond: the last one of a full page is read again with the next
        page (all at once, if one millisecond holds a page or more)."""
        dev = f"device = {_quote(device)} AND " if device else ""
        lo_ms = max(0, min(start_ms, MAX_MS))
        end_ns = max(0, min(end_ms, MAX_MS)) * NS_PER_MS
        while lo_ms * NS_PER_MS < end_ns:
            (points,) = self.query([
                f"SELECT * FROM {MEASUREMENT} WHERE {dev}time >= {lo_ms * NS_PER_MS} "
                f"AND time < {end_ns} ORDER BY time ASC LIMIT {int(page)}"
            ])
            rows = [self._row(p["device"], p) for p in points]
            if len(points) < page:
                yield from sorted(rows, key=_export_order)
                return
            next_ms = rows[-1].t_ms  # the newest millisecond of the page: maybe not complete
            if next_ms == lo_ms:
                next_ms = lo_ms + 1
                (points,) = self.query([
                    f"SELECT * FROM {MEASUREMENT} WHERE {dev}time >= {lo_ms * NS_PER_MS} "
                    f"AND time < {min(end_ns, next_ms * NS_PER_MS)}"
                ])
                rows = [self._row(p["device"], p) for p in points]
            yield from sorted((r for r in rows if r.t_ms < next_ms), key=_export_order)
            lo_ms = next_ms

    def history(self, device: str, start_ms: int, end_ms: int, points: int) -> dict[str, Any]:
        """As ``SQLiteStore.history`` (soundmon.history): energetic LAeq, LAFmax and LAFmin per
        bucket of [start, end), by InfluxQL ``GROUP BY time(width, offset)``."""
        width = bucket_ms(start_ms, end_ms, points)
        dev = f"device = {_quote(device)}"
        window = _ms_range(start_ms, end_ms, closed=False)
        group = f"GROUP BY time({width}ms, {start_ms % width}ms) fill(none)"
        base = f"FROM {MEASUREMENT} WHERE {dev} AND {window} AND laeq > -1000000"
        energy, fast, other = self.query([
            f"SELECT SUM(e) AS e, SUM(dur_s) AS dur, COUNT(dur_s) AS n "
            f"FROM ({self._energy_rows(dev, window)}) WHERE {window} {group}",
            f"SELECT MAX(lafmax) AS hi, MIN(lafmin) AS lo {base} AND kind = 1 {group}",
            f"SELECT MAX(laeq) AS hi, MIN(laeq) AS lo {base} AND kind <> 1 {group}",
        ])
        his: dict[int, list[float]] = defaultdict(list)
        los: dict[int, list[float]] = defaultdict(list)
        for p in fast + other:
            if p.get("hi") is not None:
                his[p["time"]].append(p["hi"])
            if p.get("lo") is not None:
                los[p["time"]].append(p["lo"])
        out = []
        for p in sorted(energy, key=lambda p: p["time"]):
            if not p["n"]:
                continue
            t = p["time"]
            out.append({"t_ms": t // NS_PER_MS, "laeq": _r(_energy(p["e"], p["dur"])),
                        "lafmax": _r(max(his[t])) if his[t] else None,
                        "lafmin": _r(min(los[t])) if los[t] else None, "n": int(p["n"])})
        return {"bucket_ms": width, "points": out}

    def count_levels(self, device: str | None = None) -> int:
        where = f" WHERE device = {_quote(device)}" if device is not None else ""
        (points,) = self.query([f"SELECT COUNT(seq) FROM {MEASUREMENT}{where}"])
        return int(points[0]["count"]) if points else 0

    # ---- statistics -----------------------------------------------------------------------
    def stats(self, device: str, start_ms: int, end_ms: int, timezone: str = "UTC",
              resolution: str = "auto") -> dict[str, Any]:
        """The same statistics as ``SQLiteStore.stats`` (soundmon.stats), computed by InfluxQL.

        ``resolution``: ``raw`` (the level measurement), ``1m`` (the downsampled bucket:
        LAeq, LAmax/min, coverage and Lden are exact there; L10/L50/L90 need 1 s values and
        are null) or ``auto``: raw unless the window starts before the raw retention.
        """
        if resolution == "auto":
            oldest_raw = int(time.time() * 1000) - int(self.config.raw_retention_days * DAY_MS)
            resolution = "1m" if start_ms < oldest_raw else "raw"
        if resolution not in ("raw", "1m"):
            raise ValueError(f"resolution must be raw, 1m or auto, not {resolution!r}")
        raw = resolution == "raw"
        tz = ZoneInfo(timezone)
        window = _ms_range(start_ms, end_ms, closed=False)
        dev = f"device = {_quote(device)}"
        if raw:
            energy = self._energy_rows(dev, window)
            seconds = (f"SELECT 10 * LOG10(SUM(e) / SUM(dur_s)) AS l FROM ({energy}) "
                       f"WHERE {window} GROUP BY time(1s) fill(none)")
            statements = [
                f"SELECT SUM(e) AS e, SUM(dur_s) AS dur FROM ({energy})",
                f"SELECT MAX(lafmax) AS hi, MIN(lafmin) AS lo FROM {MEASUREMENT} "
                f"WHERE {dev} AND {window} AND kind = 1 AND laeq > -1000000",
                f"SELECT MAX(laeq) AS hi, MIN(laeq) AS lo FROM {MEASUREMENT} "
                f"WHERE {dev} AND {window} AND kind <> 1 AND laeq > -1000000",
                f"{seconds} LIMIT {self.PERCENTILE_FETCH_MAX + 1}",
            ]
            summary, fast, other, secs = self.query(statements)
        else:
            statements = [
                f"SELECT SUM(energy) AS e, SUM(dur_s) AS dur FROM {MEASUREMENT_1M} WHERE {dev} AND {window}",
                f"SELECT MAX(lamax) AS hi, MIN(lamin) AS lo FROM {MEASUREMENT_1M} WHERE {dev} AND {window}",
            ]
            summary, fast = self.query(statements, self.config.bucket_1m)
            other, secs = [], []
        e = summary[0]["e"] if summary else None
        dur = summary[0]["dur"] if summary else None
        his = [p["hi"] for p in fast + other if p.get("hi") is not None]
        los = [p["lo"] for p in fast + other if p.get("lo") is not None]
        out: dict[str, Any] = {
            "laeq": _r(_energy(e, dur)),
            "lamax": _r(max(his)) if his else None,
            "lamin": _r(min(los)) if los else None,
            "l10": None, "l50": None, "l90": None,
        }
        if secs:
            out.update(self._percentiles(seconds, secs))
        window_s = max(end_ms - start_ms, 1) / 1000
        out["coverage"] = round(min(1.0, (dur or 0.0) / window_s), 4)
        out["lden"] = None
        if end_ms - start_ms >= DAY_MS:
            out["lden"] = self._lden(dev, lden_periods(start_ms, end_ms, tz), raw)
        return out

    def _percentiles(self, seconds: str, secs: list[dict[str, Any]]) -> dict[str, float | None]:
        """L10, L50, L90: nearest rank, as soundmon.stats: the r-th smallest of the k 1 s values,
        r = ceil(p k / 100).

        ``secs`` are the first ``PERCENTILE_FETCH_MAX + 1`` 1 s values (fetched with the summary).
        Up to that many (a day of 1 s values) they are ranked here. Beyond, InfluxDB counts
        and ranks them: its PERCENTILE(x, P) takes the floor(k P / 100 + 0.5)-th smallest, so
        P = 100 (r - 0.25) / k is rank r (the rule of the InfluxQL engine of InfluxDB 1.x and
        2.x; each PERCENTILE re-runs the subquery, hence the fetch for the common case).
        """
        names = ("l10", "l50", "l90")
        if len(secs) <= self.PERCENTILE_FETCH_MAX:
            values = sorted(p["l"] for p in secs if p.get("l") is not None)
            if not values:
                return {}
            ranks = [max(1, (p * len(values) + 99) // 100) for p in (90, 50, 10)]
            return {name: _r(values[r - 1]) for name, r in zip(names, ranks, strict=True)}
        (count,) = self.query([f"SELECT COUNT(l) AS k FROM ({seconds})"])
        k = int(count[0]["k"])
        ranks = [max(1, (p * k + 99) // 100) for p in (90, 50, 10)]
        calls = ", ".join(f"PERCENTILE(l, {100 * (r - 0.25) / k!r}) AS {name}"
                          for name, r in zip(names, ranks, strict=True))
        (got,) = self.query([f"SELECT {calls} FROM ({seconds})"])
        return {name: _r(got[0][name]) if got else None for name in names}

    @staticmethod
    def _energy_rows(dev: str, window: str) -> str:
        """Raw rows with a level as (e = dur_s 10^(LAeq/10), dur_s): the energetic building block."""
        return (f"SELECT dur_s * POW(10, laeq / 10) AS e, dur_s FROM {MEASUREMENT} "
                f"WHERE {dev} AND {window} AND laeq > -1000000")

    def _lden(self, dev: str, periods: list[tuple[int, int, str]], raw: bool) -> float | None:
        statements = []
        for p0, p1, _ in periods:
            window = _ms_range(p0, p1, closed=False)
            if raw:
                statements.append(f"SELECT SUM(e) AS e, SUM(dur_s) AS dur FROM "
                                  f"({self._energy_rows(dev, window)})")
            else:
                statements.append(f"SELECT SUM(energy) AS e, SUM(dur_s) AS dur FROM {MEASUREMENT_1M} "
                                  f"WHERE {dev} AND {window}")
        results = self.query(statements, None if raw else self.config.bucket_1m)
        sums: dict[str, list[float]] = {code: [0.0, 0.0] for code, *_ in LDEN_PERIODS}
        for (_, _, code), points in zip(periods, results, strict=True):
            if points and points[0]["dur"]:
                sums[code][0] += points[0]["e"]
                sums[code][1] += points[0]["dur"]
        levels = {code: _energy(e, d) for code, (e, d) in sums.items()}
        if any(levels[code] is None for code, *_ in LDEN_PERIODS):
            return None
        energy = sum(hours * 10 ** ((levels[code] + penalty) / 10)  # type: ignore[operator]
                     for code, _, _, penalty, hours in LDEN_PERIODS) / 24
        return round(10 * math.log10(energy), 2)

    # ---- downsampling ---------------------------------------------------------------------
    def _maybe_downsample(self) -> None:
        """Refresh the 1-minute aggregates of the minutes written to, at most every few seconds."""
        if time.monotonic() - self._last_downsample < self.config.downsample_every_s:
            return
        self.flush_downsample()

    def flush_downsample(self) -> int:
        """Recompute the 1-minute aggregates of every minute this process wrote to since last time."""
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, defaultdict(set)
            self._last_downsample = time.monotonic()
        written = 0
        try:
            for device, minutes in dirty.items():
                written += self.downsample(min(minutes), max(minutes) + MINUTE_MS, [device])
        except InfluxError:
            with self._dirty_lock:  # try again with the next batch
                for device, minutes in dirty.items():
                    self._dirty[device] |= minutes
            log.warning("downsampling to %s failed; will retry", self.config.bucket_1m,
                        exc_info=True)
        return written

    def downsample(self, start_ms: int, end_ms: int, devices: Iterable[str] | None = None) -> int:
        """Write ``level_1m`` for the whole minutes in [start_ms, end_ms) from the raw levels.

        Each minute is recomputed from all its raw levels, so running this again (or from
        several processes) gives the same points. Returns the number of points written.
        """
        start_ms -= start_ms % MINUTE_MS
        if end_ms % MINUTE_MS:
            end_ms += MINUTE_MS - end_ms % MINUTE_MS
        if devices is None:
            (tags,) = self.query([f"SHOW TAG VALUES FROM {MEASUREMENT} WITH KEY = device"])
            devices = [t["value"] for t in tags]
        window = _ms_range(start_ms, end_ms, closed=False)
        points = []
        for device in devices:
            dev = f"device = {_quote(device)}"
            base = f"WHERE {dev} AND {window} AND laeq > -1000000"
            group = "GROUP BY time(1m) fill(none)"
            energy, fast, other = self.query([
                f"SELECT SUM(e) AS e, SUM(dur_s) AS dur FROM ({self._energy_rows(dev, window)}) "
                f"WHERE {window} {group}",
                f"SELECT MAX(lafmax) AS hi, MIN(lafmin) AS lo FROM {MEASUREMENT} {base} AND kind = 1 {group}",
                f"SELECT MAX(laeq) AS hi, MIN(laeq) AS lo FROM {MEASUREMENT} {base} AND kind <> 1 {group}",
            ])
            extremes: dict[int, list[float]] = defaultdict(list)
            lows: dict[int, list[float]] = defaultdict(list)
            for p in fast + other:
                if p.get("hi") is not None:
                    extremes[p["time"]].append(p["hi"])
                if p.get("lo") is not None:
                    lows[p["time"]].append(p["lo"])
            for p in energy:
                if not p["dur"]:
                    continue
                pt = (Point(MEASUREMENT_1M).tag("device", device)
                      .field("energy", float(p["e"])).field("dur_s", float(p["dur"]))
                      .field("laeq", float(_energy(p["e"], p["dur"]) or 0.0)))
                if extremes[p["time"]]:
                    pt = pt.field("lamax", float(max(extremes[p["time"]])))
                if lows[p["time"]]:
                    pt = pt.field("lamin", float(min(lows[p["time"]])))
                points.append(pt.time(int(p["time"]), WritePrecision.NS))
        if points:
            try:
                self._write.write(bucket=self.config.bucket_1m, org=self.config.org, record=points,
                                  write_precision=WritePrecision.NS)
            except Exception as exc:
                raise InfluxError(f"InfluxDB write to {self.config.bucket_1m} failed: {exc}") from exc
        return len(points)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m soundmon.influxstore downsample --hours H``: recompute the 1-minute aggregates
    of the last H hours from the raw levels (e.g. from cron, or after restoring a backup)."""
    import argparse

    from soundmon.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m soundmon.influxstore")
    sub = parser.add_subparsers(dest="command", required=True)
    down = sub.add_parser("downsample", help="recompute the 1-minute bucket from the raw levels")
    down.add_argument("--hours", type=float, default=2.0, help="how far back (default 2)")
    down.add_argument("--end-ms", type=int, default=None, help="end of the range (default now)")
    args = parser.parse_args(argv)
    settings = get_settings()
    if settings.store != "influxdb":
        parser.error("SOUNDMON_STORE is not influxdb")
    store = InfluxStore.from_settings(settings)
    try:
        end = args.end_ms if args.end_ms is not None else int(time.time() * 1000)
        n = store.downsample(end - int(args.hours * 3_600_000), end)
    finally:
        store.close()
    print(f"wrote {n} one-minute points to {settings.influx_bucket_1m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
