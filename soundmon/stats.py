"""Energetic statistics of stored levels, computed by SQLite: Leq, LAmax/min, L10/50/90, Lden.

Everything is aggregated in SQL over the ``levels`` table; Python only builds the list of
day/evening/night periods of the window (a handful of rows per day) in the local time zone.

* Each row covers ``dur`` seconds: n / rate for a kind-1 frame, ``rate`` ms for a kind-2 record.
* LAeq over the window = 10 log10(sum(dur 10^(LAeq/10)) / sum(dur)): energetic, never an
  arithmetic mean of dB (shared/protocol.md section 3).
* 1 s LAeq: rows are grouped by the second their first sample falls in (t_ms / 1000); two
  0.5 s frames make one second. L10, L50 and L90 are the levels exceeded 10, 50 and 90 % of
  those seconds: nearest-rank percentiles 90, 50 and 10 of the 1 s values.
* LAmax / LAmin: extremes of the Fast detector (LAFmax / LAFmin), or of LAeq for rows that
  have no detector (kind-2 records).
* Lden (EN/ISO 1996-1, Directive 2002/49/EC): day 07-19, evening 19-23 (+5 dB), night 23-07
  (+10 dB) local time; null when the window is under 24 h or a period has no data.
* coverage: the measured share of the window, 0..1.
"""

from __future__ import annotations

import math
import sqlite3
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

DAY_MS = 86_400_000
#: (code, first local hour, last local hour exclusive, penalty dB, hours), EN/ISO 1996-1
LDEN_PERIODS = (("d", 7, 19, 0.0, 12), ("e", 19, 23, 5.0, 4), ("n", 23, 31, 10.0, 8))

_ROWS = """
rows AS (
    SELECT t_ms, laeq, lafmax, lafmin,
           CASE WHEN kind = 1 THEN CAST(n AS REAL) / rate ELSE rate / 1000.0 END AS dur
    FROM levels
    WHERE device = :device AND t_ms >= :start AND t_ms < :end AND laeq IS NOT NULL
)"""

SUMMARY_SQL = f"""
WITH {_ROWS},
seconds AS (
    SELECT 10 * log10(sum(dur * pow(10, laeq / 10)) / sum(dur)) AS l
    FROM rows GROUP BY t_ms / 1000
),
ranked AS (
    SELECT l, row_number() OVER (ORDER BY l) AS r, count(*) OVER () AS k FROM seconds
)
SELECT
    (SELECT 10 * log10(sum(dur * pow(10, laeq / 10)) / sum(dur)) FROM rows) AS laeq,
    (SELECT max(coalesce(lafmax, laeq)) FROM rows) AS lamax,
    (SELECT min(coalesce(lafmin, laeq)) FROM rows) AS lamin,
    (SELECT sum(dur) FROM rows) AS measured_s,
    -- nearest rank: the ceil(p k)-th smallest, ceil done in integers as (p k + 99) / 100
    (SELECT l FROM ranked WHERE r = max(1, (90 * k + 99) / 100)) AS l10,
    (SELECT l FROM ranked WHERE r = max(1, (50 * k + 99) / 100)) AS l50,
    (SELECT l FROM ranked WHERE r = max(1, (10 * k + 99) / 100)) AS l90
"""


def lden_periods(start_ms: int, end_ms: int, tz: ZoneInfo) -> list[tuple[int, int, str]]:
    """Day/evening/night intervals [p0, p1) in Unix ms covering [start_ms, end_ms), local time."""
    first = datetime.fromtimestamp(start_ms / 1000, tz).date() - timedelta(days=1)
    last = datetime.fromtimestamp(end_ms / 1000, tz).date()
    out = []
    day: date = first
    while day <= last:
        for code, h0, h1, _, _ in LDEN_PERIODS:
            p0 = _local_ms(day, h0, tz)
            p1 = _local_ms(day, h1, tz)
            if p1 > start_ms and p0 < end_ms:
                out.append((max(p0, start_ms), min(p1, end_ms), code))
        day += timedelta(days=1)
    return out


def _local_ms(day: date, hour: int, tz: ZoneInfo) -> int:
    d = day + timedelta(days=hour // 24)
    return int(datetime(d.year, d.month, d.day, hour % 24, tzinfo=tz).timestamp() * 1000)


def ensure_math(db: sqlite3.Connection) -> None:
    """Register pow() and log10() when this SQLite build lacks its math functions."""
    try:
        db.execute("SELECT pow(10, 1), log10(10)").fetchone()
    except sqlite3.OperationalError:
        db.create_function("pow", 2, lambda a, b: None if a is None or b is None else a**b,
                           deterministic=True)
        db.create_function("log10", 1,
                           lambda a: None if a is None or a <= 0 else math.log10(a),
                           deterministic=True)


def level_stats(db: sqlite3.Connection, device: str, start_ms: int, end_ms: int,
                tz: ZoneInfo) -> dict[str, Any]:
    """The statistics of one device's LAeq over [start_ms, end_ms) (see the module docstring)."""
    ensure_math(db)
    args = {"device": device, "start": start_ms, "end": end_ms}
    row = db.execute(SUMMARY_SQL, args).fetchone()
    window_s = max(end_ms - start_ms, 1) / 1000
    out: dict[str, Any] = {k: _r(row[k]) for k in ("laeq", "lamax", "lamin", "l10", "l50", "l90")}
    out["coverage"] = round(min(1.0, (row["measured_s"] or 0.0) / window_s), 4)
    out["lden"] = None
    if end_ms - start_ms >= DAY_MS:
        out["lden"] = _lden(db, args, lden_periods(start_ms, end_ms, tz))
    return out


def _lden(db: sqlite3.Connection, args: dict[str, Any],
          periods: list[tuple[int, int, str]]) -> float | None:
    values = ",".join("(?,?,?)" for _ in periods)
    params = [v for p in periods for v in p]
    sql = (f"WITH {_ROWS.replace(':device', '?').replace(':start', '?').replace(':end', '?')}, "
           f"periods(p0, p1, code) AS (VALUES {values}) "
           "SELECT code, 10 * log10(sum(dur * pow(10, laeq / 10)) / sum(dur)) AS l "
           "FROM rows JOIN periods ON t_ms >= p0 AND t_ms < p1 GROUP BY code")
    got = {r[0]: r[1] for r in db.execute(sql, [args["device"], args["start"], args["end"],
                                                 *params])}
    if any(got.get(code) is None for code, *_ in LDEN_PERIODS):
        return None
    energy = sum(hours * 10 ** ((got[code] + penalty) / 10)
                 for code, _, _, penalty, hours in LDEN_PERIODS) / 24
    return round(10 * math.log10(energy), 2)


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 2)
