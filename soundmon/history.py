"""Level history at screen resolution, and level/alert rows for export, straight from SQLite.

``downsample`` splits [start, end) into equal buckets and aggregates each one in SQL:

* ``laeq``: energetic mean, 10 log10(sum(dur 10^(LAeq/10)) / sum(dur)), weighted by each row's
  duration (as ``soundmon.stats``); never an arithmetic mean of dB.
* ``lafmax`` / ``lafmin``: the extremes of the Fast detector in the bucket (LAeq for rows that
  have none), so a short loud event stays visible however far the chart is zoomed out.
* ``n``: rows in the bucket; an empty bucket is left out (a gap, not a zero).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

HISTORY_SQL = """
SELECT (t_ms - :start) / :bucket AS b,
       10 * log10(sum(dur * pow(10, laeq / 10)) / sum(dur)) AS laeq,
       max(coalesce(lafmax, laeq)) AS lafmax,
       min(coalesce(lafmin, laeq)) AS lafmin,
       count(*) AS n
FROM (
    SELECT t_ms, laeq, lafmax, lafmin,
           CASE WHEN kind = 1 THEN CAST(n AS REAL) / rate ELSE rate / 1000.0 END AS dur
    FROM levels
    WHERE device = :device AND t_ms >= :start AND t_ms < :end AND laeq IS NOT NULL
)
GROUP BY b ORDER BY b
"""


def bucket_ms(start_ms: int, end_ms: int, points: int) -> int:
    """Bucket width so that [start, end) gives at most ``points`` buckets (at least 1 ms)."""
    return max(1, -(-(end_ms - start_ms) // max(1, points)))


def downsample(db: sqlite3.Connection, device: str, start_ms: int, end_ms: int,
               points: int) -> dict[str, Any]:
    """``{"bucket_ms", "points": [{"t_ms", "laeq", "lafmax", "lafmin", "n"}]}``, oldest first;
    ``t_ms`` is the start of each bucket."""
    width = bucket_ms(start_ms, end_ms, points)
    rows = db.execute(HISTORY_SQL, {"device": device, "start": start_ms, "end": end_ms,
                                    "bucket": width}).fetchall()
    return {
        "bucket_ms": width,
        "points": [
            {"t_ms": start_ms + b * width, "laeq": _r(laeq), "lafmax": _r(hi), "lafmin": _r(lo),
             "n": n}
            for b, laeq, hi, lo, n in rows
        ],
    }


def iter_level_rows(connect: Callable[[], sqlite3.Connection], columns: tuple[str, ...], device: str | None,
                    start_ms: int, end_ms: int, page: int = 5000) -> Iterator[sqlite3.Row]:
    """Rows with start <= t_ms < end, oldest first, read ``page`` at a time (keyset paging,
    so a large export never holds the whole range in memory). ``connect()`` is called for
    each page: a streamed response may resume the generator on another thread."""
    where = "t_ms >= ? AND t_ms < ?" + (" AND device = ?" if device else "")
    base = [start_ms, end_ms, *([device] if device else [])]
    key: tuple[Any, ...] | None = None
    while True:
        extra, args = "", list(base)
        if key is not None:
            extra = " AND (t_ms, device, boot, seq, idx) > (?, ?, ?, ?, ?)"
            args += list(key)
        rows = connect().execute(
            f"SELECT {','.join(columns)} FROM levels WHERE {where}{extra} "
            "ORDER BY t_ms, device, boot, seq, idx LIMIT ?", [*args, page]).fetchall()
        yield from rows
        if len(rows) < page:
            return
        last = rows[-1]
        key = (last["t_ms"], last["device"], last["boot"], last["seq"], last["idx"])


def alerts_between(db: sqlite3.Connection, device: str | None, start_ms: int,
                   end_ms: int) -> list[sqlite3.Row]:
    """Alerts that overlap [start, end): started before the end, not ended before the start."""
    sql = ("SELECT * FROM alerts WHERE started_ms < ? AND (ended_ms IS NULL OR ended_ms >= ?)"
           + (" AND device = ?" if device else "") + " ORDER BY started_ms, id")
    return db.execute(sql, [end_ms, start_ms, *([device] if device else [])]).fetchall()


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 2)
