"""Recording: the raw audio the pipeline accepted, per device, in rotating FLAC files.

Layout under ``<data>/recordings/``:

* ``index.db`` (SQLite, WAL): one row per recorded frame ``(device, boot, seq)`` with its time
  ``t_ms``, rate and sample count, and where its samples are: *staged* at a byte ``offset`` in
  the device's spool file (raw int16, appended as frames arrive), or at a sample ``offset`` in
  a FLAC *segment*. Segments, alert clips and the per-device on/off switch have own tables.
* ``<device>/<start>-<boot>-<seq>.flac``: segments, 16-bit FLAC (lossless: the samples read
  back exactly), one per device and stretch of ``segment_s`` seconds (rotation).
* ``clips/alert-<id>.flac``: the audio around an alert (``clip_window``), kept until the
  alert is deleted (``DELETE /api/alerts/{id}``): retention never deletes a clip.

Writes are idempotent: a frame is inserted with ``INSERT OR IGNORE`` on ``(device, boot, seq)``
and the row stays after its samples moved into a segment, so a batch Celery redelivers is
recorded once. ``flush`` moves a device's staged frames into a new segment in one
transaction and starts a new spool file;
``enforce_retention`` deletes segments by age and disk budget, oldest first, never one that
holds audio an alert's clip may still need. Clips count against the budget but are never
deleted by it; only the clip of an alert that no longer exists goes.

Errors: ``RecordingError`` (a bad span or time; also a ValueError).
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from soundmon.protocol import KIND_PCM, Frame

#: frames closer than this to contiguous count as contiguous: device clocks stamp whole ms
#: (t0 = start + first * 1000 // rate), so consecutive frames can be 1 ms apart either way
CONTIGUOUS_MS = 20
SUBTYPE = "PCM_16"  # the protocol's samples are int16: FLAC 16-bit is lossless for them
#: libsndfile's fastest FLAC setting: on noisy sensor audio the files are <1 % larger than at
#: the default, and rotation takes about a third less CPU
FLAC_LEVEL = 0.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    device TEXT NOT NULL, boot INTEGER NOT NULL, seq INTEGER NOT NULL,
    t_ms INTEGER NOT NULL, rate INTEGER NOT NULL, n INTEGER NOT NULL,
    segment INTEGER, spool TEXT, "offset" INTEGER,
    PRIMARY KEY (device, boot, seq)
);
CREATE INDEX IF NOT EXISTS frames_by_time ON frames (device, t_ms);
CREATE INDEX IF NOT EXISTS frames_by_segment ON frames (segment);
-- the staged frames only: rotation finds them without scanning a device's whole history
-- (two rows a second per device, kept as long as their segments)
CREATE INDEX IF NOT EXISTS frames_staged ON frames (device, t_ms) WHERE spool IS NOT NULL;
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY, device TEXT NOT NULL, path TEXT NOT NULL,
    start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, rate INTEGER NOT NULL,
    frames INTEGER NOT NULL, bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_by_time ON segments (device, start_ms);
CREATE TABLE IF NOT EXISTS clips (
    alert_id INTEGER PRIMARY KEY, device TEXT NOT NULL, path TEXT NOT NULL,
    start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, rate INTEGER NOT NULL,
    bytes INTEGER NOT NULL, gaps TEXT NOT NULL, created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS switches (device TEXT PRIMARY KEY, enabled INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS spools (device TEXT PRIMARY KEY, gen INTEGER NOT NULL);
"""


class RecordingError(ValueError):
    """A span or a time the recording cannot serve (the message says why)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def duration_ms(rate: int, n: int) -> float:
    return 1000.0 * n / rate


def clip_window(started_ms: int, ended_ms: int | None, last_out_ms: int | None,
                preroll_ms: int, postroll_ms: int, max_ms: int) -> tuple[int, int]:
    """The clip of an alert: ``preroll_ms`` before it opened to ``postroll_ms`` after its end.

    Its end is when it resolved (``ended_ms``) or, while it is still unresolved, the end of
    its last level out of bounds (``last_out_ms``; the opening time if unknown). A window
    longer than ``max_ms`` keeps its beginning: the pre-roll and how the event started.
    Returns ``(start_ms, end_ms)``.
    """
    until = ended_ms if ended_ms is not None else max(last_out_ms or started_ms, started_ms)
    start = started_ms - preroll_ms
    return start, min(until + postroll_ms, start + max_ms)


def parse_time(value: str | int, name: str = "time", now: int | None = None) -> int:
    """Unix ms from an int, digits (Unix ms), ISO 8601 (naive = UTC) or ``-N{s,m,h,d}`` (ago)."""
    if isinstance(value, int):
        return value
    text = value.strip()
    rel = re.fullmatch(r"-(\d+(?:\.\d+)?)([smhd])", text)
    if rel:
        unit = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[rel.group(2)]
        return (now or now_ms()) - int(float(rel.group(1)) * unit)
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise RecordingError(f"{name}: {value!r} is neither ISO 8601 (2026-11-23T22:00:00Z), "
                             "Unix ms, nor -N[s|m|h|d] (that long ago)") from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    """One recorded frame: its identity, time and int16 samples."""

    device: str
    boot: int
    seq: int
    t_ms: int
    rate: int
    samples: np.ndarray  # (n,), int16

    @property
    def end_ms(self) -> float:
        return self.t_ms + duration_ms(self.rate, self.samples.size)


@dataclass
class Span:
    """Audio of one device over ``[start_ms, end_ms)``; silence where ``gaps`` are."""

    device: str
    rate: int
    start_ms: int
    end_ms: int
    samples: np.ndarray  # int16
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (start_ms, end_ms) unrecorded

    @property
    def recorded_s(self) -> float:
        return (self.end_ms - self.start_ms - sum(e - s for s, e in self.gaps)) / 1000

    def wav_bytes(self) -> bytes:
        return encode_audio(self.samples, self.rate, "WAV")


def encode_audio(samples: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    """int16 samples as a 16-bit WAV or FLAC file in memory."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.asarray(samples, dtype=np.int16), rate, format=fmt, subtype=SUBTYPE)
    return buf.getvalue()


def runs(frames: Sequence[Any]) -> list[list[Any]]:
    """Split time-ordered frames (``t_ms``, ``rate``, ``n`` or ``samples``) into contiguous runs.

    A new run starts where the rate changes or the next frame does not start within
    ``CONTIGUOUS_MS`` of where the previous one ended.
    """
    out: list[list[Any]] = []
    prev_end = 0.0
    for f in frames:
        n = f.samples.size if hasattr(f, "samples") else f["n"]
        rate, t = (f.rate, f.t_ms) if hasattr(f, "rate") else (f["rate"], f["t_ms"])
        if not out or rate != _rate(out[-1][-1]) or abs(t - prev_end) > CONTIGUOUS_MS:
            out.append([])
        out[-1].append(f)
        prev_end = t + duration_ms(rate, n)
    return out


def _rate(f: Any) -> int:
    return f.rate if hasattr(f, "rate") else f["rate"]


def resample(x: np.ndarray, rate_from: int, rate_to: int) -> np.ndarray:
    """Polyphase resampling with scipy (anti-aliased), keeping the int16 scale."""
    if rate_from == rate_to:
        return np.asarray(x)
    from scipy.signal import resample_poly

    g = gcd(rate_from, rate_to)
    y = resample_poly(np.asarray(x, dtype=np.float64), rate_to // g, rate_from // g)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


class Recording:
    """The recording index and files of one data directory; safe across processes."""

    def __init__(self, data_dir: Path | str, default_enabled: bool = True) -> None:
        self.dir = Path(data_dir) / "recordings"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.default_enabled = default_enabled
        self._local = threading.local()
        self._device_dirs: set[str] = set()  # made already (a mkdir per batch was 20 % of record)
        self._dir_s = str(self.dir)  # record() joins strings: pathlib cost more than the append
        db = self._db()
        db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.dir / "index.db", timeout=30.0, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # ---- the per-device switch ----------------------------------------------------------
    def set_enabled(self, device: str, enabled: bool) -> None:
        self._db().execute("INSERT INTO switches VALUES (?, ?) ON CONFLICT(device) DO UPDATE "
                           "SET enabled=excluded.enabled", (device, int(enabled)))

    def enabled(self, devices: Iterable[str]) -> dict[str, bool]:
        """Whether each device is recorded: its switch, else the default."""
        ids = sorted(set(devices))
        rows = dict(self._db().execute(
            f"SELECT device, enabled FROM switches WHERE device IN ({','.join('?' * len(ids))})",
            ids).fetchall()) if ids else {}
        return {d: bool(rows.get(d, self.default_enabled)) for d in ids}

    # ---- writing ------------------------------------------------------------------------
    def record(self, decoded: Sequence[tuple[str, int, Frame]]) -> int:
        """Stage the kind-1 frames of recorded devices (idempotent); return how many were new.

        Under the index's write lock, a frame's row is inserted (or ignored: seen before) and
        only a new frame's samples are appended to its device's spool file, at the offset the
        row records. A crash before the commit leaves unreferenced bytes, never a bad row.
        """
        pcm = [d for d in decoded if d[2].kind == KIND_PCM]
        if not pcm:
            return 0
        on = self.enabled(d for d, _, _ in pcm)
        by_device: dict[str, list[tuple[int, str, Frame]]] = {}
        for device, recv_ms, f in pcm:
            if on[device]:
                by_device.setdefault(device, []).append((f.t0_ms if f.t0_ms > 0 else recv_ms,
                                                         device, f))
        if not by_device:
            return 0
        new = 0
        with self._tx() as db:
            marks = ",".join("?" * len(by_device))
            gens = dict(db.execute(f"SELECT device, gen FROM spools WHERE device IN ({marks})",
                                   list(by_device)).fetchall())
            for device, items in by_device.items():
                rel = _spool_name(device, gens.get(device, 0))
                if device not in self._device_dirs:
                    (self.dir / device).mkdir(exist_ok=True)
                    self._device_dirs.add(device)
                # a bare descriptor: with real-time devices each batch appends one frame per
                # device, and Python's buffered file object cost more than the write itself
                fd = os.open(f"{self._dir_s}/{rel}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    offset = os.fstat(fd).st_size  # the write lock above: the only appender
                    for t_ms, _, f in items:
                        cur = db.execute(
                            'INSERT OR IGNORE INTO frames (device, boot, seq, t_ms, rate, n, spool, '
                            '"offset") VALUES (?,?,?,?,?,?,?,?)',
                            (device, f.boot, f.seq, t_ms, f.rate, f.count, rel, offset))
                        if cur.rowcount:
                            _write_all(fd, f.body)
                            offset += len(f.body)
                            new += 1
                finally:
                    os.close(fd)
        return new

    def flush(self, segment_s: float = 300.0, now: int | None = None,
              force: bool = False) -> list[dict[str, Any]]:
        """Move staged frames into FLAC segments: a device's oldest staged frame older than
        ``segment_s`` (or any, with ``force``) starts a rotation. Returns the new segments."""
        import soundfile

        now = now_ms() if now is None else now
        cutoff = now - int(segment_s * 1000)
        made = []
        devices = [r[0] for r in self._db().execute(
            "SELECT device FROM frames WHERE spool IS NOT NULL GROUP BY device "
            "HAVING min(t_ms) <= ?", (now if force else cutoff,))]
        for device in devices:
            with self._flush_lock():  # one flush at a time (upkeep runs could overlap)
                made += self._flush_device(device, soundfile)
        return made

    def _flush_device(self, device: str, soundfile: Any) -> list[dict[str, Any]]:
        """Rotate one device's staged frames. The index's write lock, which every batch's
        ``record`` needs too, is held only to pick the frames (and send later appends to a
        new spool file) and to point them at their segments: not while the spool is read and
        the FLAC encoded. Held throughout, a rotation of ~1,000 devices every 5 minutes
        stalled the store step for seconds (p99 publish -> stored 6 s at 1,000 real-time
        devices)."""
        with self._tx() as db:
            rows = db.execute(
                'SELECT boot, seq, t_ms, rate, n, spool, "offset" FROM frames WHERE device=? '
                "AND spool IS NOT NULL ORDER BY t_ms, boot, seq", (device,)).fetchall()
            gen = _spool_gen(db, device) + 1  # appends from now on go to a new spool file
            db.execute("INSERT INTO spools VALUES (?, ?) ON CONFLICT(device) DO UPDATE SET "
                       "gen=excluded.gen", (device, gen))
        spools: dict[str, bytes] = {}
        encoded = []
        for run in _rate_runs(rows):
            first = run[0]
            name = (f"{iso(first['t_ms']).replace(':', '').replace('-', '')}-"
                    f"{first['boot']}-{first['seq']}.flac")
            path = self.dir / device / name
            for r in run:  # each spool file read once, then sliced
                if r["spool"] not in spools:
                    spools[r["spool"]] = (self.dir / r["spool"]).read_bytes()
            samples = np.concatenate([np.frombuffer(spools[r["spool"]], dtype="<i2",
                                                    count=r["n"], offset=r["offset"])
                                      for r in run])
            soundfile.write(path, samples, first["rate"], format="FLAC", subtype=SUBTYPE,
                            compression_level=FLAC_LEVEL)
            encoded.append((run, path))
        made = []
        with self._tx() as db:
            for run, path in encoded:
                first, last = run[0], run[-1]
                end = int(last["t_ms"] + duration_ms(last["rate"], last["n"]))
                cur = db.execute(
                    "INSERT INTO segments (device, path, start_ms, end_ms, rate, frames, "
                    "bytes) VALUES (?,?,?,?,?,?,?)",
                    (device, str(path.relative_to(self.dir)), first["t_ms"], end,
                     first["rate"], len(run), path.stat().st_size))
                offset = 0
                updates = []
                for r in run:
                    updates.append((cur.lastrowid, offset, device, r["boot"], r["seq"]))
                    offset += r["n"]
                db.executemany('UPDATE frames SET segment=?, "offset"=?, spool=NULL '
                               "WHERE device=? AND boot=? AND seq=?", updates)
                made.append({"device": device, "path": str(path), "start_ms": first["t_ms"],
                             "end_ms": end, "frames": len(run)})
        keep = _spool_name(device, gen).split("/")[1]
        for old in (self.dir / device).glob("spool-*.pcm"):
            if old.name != keep:
                old.unlink(missing_ok=True)  # every frame in it is in a segment now
        return made

    @contextmanager
    def _flush_lock(self) -> Iterator[None]:
        """An exclusive lock on ``recordings/.flush.lock`` (released if the process dies)."""
        with open(self.dir / ".flush.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _spooled(self, rel: str, offset: int, n: int) -> np.ndarray:
        with open(self.dir / rel, "rb") as fh:
            fh.seek(offset)
            data = fh.read(2 * n)
        if len(data) != 2 * n:
            raise OSError(f"{rel}: short read at {offset}")
        return np.frombuffer(data, dtype="<i2")

    # ---- reading ------------------------------------------------------------------------
    def frame_rows(self, device: str, start_ms: int, end_ms: int) -> list[sqlite3.Row]:
        """Index rows of the frames overlapping ``[start_ms, end_ms)``, in time order."""
        return self._db().execute(
            'SELECT f.boot, f.seq, f.t_ms, f.rate, f.n, f.segment, f."offset", f.spool, s.path '
            "FROM frames f LEFT JOIN segments s ON s.id = f.segment WHERE f.device=? AND "
            "f.t_ms < ? AND f.t_ms + f.n * 1000.0 / f.rate > ? AND (f.spool IS NOT NULL OR "
            "s.id IS NOT NULL) ORDER BY f.t_ms, f.boot, f.seq", (device, end_ms, start_ms)
        ).fetchall()

    def frames(self, device: str, start_ms: int, end_ms: int) -> Iterator[RecordedFrame]:
        """The recorded frames overlapping the window, whole, oldest first."""
        import soundfile

        rows = self.frame_rows(device, start_ms, end_ms)
        open_files: dict[str, Any] = {}
        try:
            for r in rows:
                path, offset = r["path"], r["offset"]
                if r["spool"] is not None:
                    try:
                        yield RecordedFrame(device, r["boot"], r["seq"], r["t_ms"], r["rate"],
                                            self._spooled(r["spool"], offset, r["n"]))
                        continue
                    except OSError:  # flushed meanwhile: it is in a segment now
                        got = self._db().execute(
                            'SELECT f."offset", s.path FROM frames f JOIN segments s ON '
                            "s.id=f.segment WHERE f.device=? AND f.boot=? AND f.seq=?",
                            (device, r["boot"], r["seq"])).fetchone()
                        if got is None:
                            continue  # deleted by retention meanwhile
                        offset, path = got
                sf = open_files.get(path)
                if sf is None:
                    sf = open_files[path] = soundfile.SoundFile(self.dir / path)
                sf.seek(offset)
                yield RecordedFrame(device, r["boot"], r["seq"], r["t_ms"], sf.samplerate,
                                    sf.read(r["n"], dtype="int16"))
        finally:
            for sf in open_files.values():
                sf.close()

    def spans(self, device: str, start_ms: int, end_ms: int) -> dict[str, Any]:
        """Contiguous recorded stretches in the window, and the gaps between them."""
        rows = [dict(r) for r in self.frame_rows(device, start_ms, end_ms)]
        stretches = []
        for run in runs(rows):
            last = run[-1]
            stretches.append({"start_ms": run[0]["t_ms"], "start": iso(run[0]["t_ms"]),
                              "end_ms": int(last["t_ms"] + duration_ms(last["rate"], last["n"])),
                              "rate": run[0]["rate"], "frames": len(run)})
        for s in stretches:
            s["end"] = iso(s["end_ms"])
        gaps = [{"start_ms": a["end_ms"], "end_ms": b["start_ms"]}
                for a, b in zip(stretches, stretches[1:], strict=False)
                if b["start_ms"] > a["end_ms"]]
        return {"device": device, "spans": stretches, "gaps": gaps}

    def read(self, device: str, start_ms: int, end_ms: int,
             max_s: float | None = None) -> Span:
        """The audio of ``[start_ms, end_ms)`` at the rate of its first frame (others are
        resampled with scipy), silence (the mean) in the gaps; RecordingError if nothing is."""
        if end_ms <= start_ms:
            raise RecordingError("end must be after start")
        if max_s is not None and end_ms - start_ms > max_s * 1000:
            raise RecordingError(f"a span can be at most {max_s:g} s long")
        frames = list(self.frames(device, start_ms, end_ms))
        if not frames:
            raise RecordingError(f"nothing recorded for {device} between {iso(start_ms)} and "
                                 f"{iso(end_ms)}")
        rate = frames[0].rate
        out = np.zeros(int(round((end_ms - start_ms) * rate / 1000)), dtype=np.int16)
        covered = np.zeros(out.size, dtype=bool)
        for run in runs(frames):
            t0 = run[0].t_ms
            x = resample(np.concatenate([f.samples for f in run]), run[0].rate, rate)
            # a contiguous run is placed sample-exact from its first frame's time
            at = int(round((t0 - start_ms) * rate / 1000))
            lo, hi = max(at, 0), min(at + x.size, out.size)
            if hi > lo:
                out[lo:hi] = x[lo - at: hi - at]
                covered[lo:hi] = True
        if covered.any() and not covered.all():
            # gaps hold the recorded audio's mean: silence without a step (a click) from the
            # DC bias an analog front end leaves in its samples
            out[~covered] = int(round(float(out[covered].mean())))
        return Span(device, rate, start_ms, end_ms, out, _gaps(covered, start_ms, rate))

    # ---- clips --------------------------------------------------------------------------
    def cut_clip(self, alert_id: int, device: str, start_ms: int, end_ms: int) -> dict[str, Any]:
        """Write (or rewrite) the clip of an alert; RecordingError if no audio is recorded."""
        import soundfile

        span = self.read(device, start_ms, end_ms)
        path = self.dir / "clips" / f"alert-{alert_id}.flac"
        path.parent.mkdir(exist_ok=True)
        # unique per writer: a redelivered clip task may cut the same clip at the same moment
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
        soundfile.write(tmp, span.samples, span.rate, format="FLAC", subtype=SUBTYPE)
        tmp.replace(path)
        gaps = [list(g) for g in span.gaps]
        self._db().execute(
            "INSERT OR REPLACE INTO clips VALUES (?,?,?,?,?,?,?,?,?)",
            (alert_id, device, str(path.relative_to(self.dir)), start_ms, end_ms, span.rate,
             path.stat().st_size, json.dumps(gaps), now_ms()))
        return {"alert_id": alert_id, "device": device, "path": str(path), "gaps": gaps,
                "recorded_s": span.recorded_s}

    def clip(self, alert_id: int) -> dict[str, Any] | None:
        row = self._db().execute("SELECT * FROM clips WHERE alert_id=?", (alert_id,)).fetchone()
        if row is None or not (self.dir / row["path"]).exists():
            return None
        return {**dict(row), "path": self.dir / row["path"], "gaps": json.loads(row["gaps"])}

    def delete_clip(self, alert_id: int) -> bool:
        """Delete an alert's clip (its file and index row); whether there was one."""
        row = self._db().execute("SELECT path FROM clips WHERE alert_id=?", (alert_id,)).fetchone()
        if row is None:
            return False
        self._db().execute("DELETE FROM clips WHERE alert_id=?", (alert_id,))
        (self.dir / row["path"]).unlink(missing_ok=True)
        return True

    # ---- listing ------------------------------------------------------------------------
    def summary(self) -> list[dict[str, Any]]:
        """Per device: switch, first and last recorded time, segments, bytes, staged frames."""
        db = self._db()
        out: dict[str, dict[str, Any]] = {}
        for r in db.execute("SELECT device, min(t_ms) AS first, max(t_ms + n * 1000 / rate) AS "
                            "last, count(*) AS frames, sum(spool IS NOT NULL) AS staged "
                            "FROM frames GROUP BY device"):
            out[r["device"]] = {"device": r["device"], "first": iso(r["first"]),
                                "last": iso(int(r["last"])), "frames": r["frames"],
                                "staged_frames": r["staged"], "segments": 0, "bytes": 0}
        for r in db.execute("SELECT device, count(*), sum(bytes) FROM segments GROUP BY device"):
            if r[0] in out:
                out[r[0]].update(segments=r[1], bytes=r[2])
        for d, on in self.enabled(set(out) | {r[0] for r in db.execute(
                "SELECT device FROM switches")}).items():
            out.setdefault(d, {"device": d, "first": None, "last": None, "frames": 0,
                               "staged_frames": 0, "segments": 0, "bytes": 0})["enabled"] = on
        return [out[d] for d in sorted(out)]

    # ---- retention ----------------------------------------------------------------------
    def enforce_retention(self, max_age_s: float, budget_bytes: int,
                          open_windows: Sequence[tuple[str, int, int]],
                          open_alert_ids: set[int], alive_alert_ids: set[int] | None = None,
                          now: int | None = None) -> dict[str, Any]:
        """Delete by age and disk budget (see ``plan_retention``); return what went, the
        bytes left (``bytes``) and what the clips alone take (``clip_bytes``)."""
        db = self._db()
        segments = [dict(r) for r in db.execute("SELECT id, device, start_ms, end_ms, bytes, "
                                                "path FROM segments")]
        clips = [dict(r) for r in db.execute("SELECT alert_id, device, created_ms, bytes, path "
                                             "FROM clips")]
        staged = db.execute("SELECT coalesce(sum(2 * n), 0) FROM frames WHERE spool IS NOT NULL"
                            ).fetchone()[0]
        plan = plan_retention(segments, clips, now_ms() if now is None else now, max_age_s,
                              budget_bytes - staged, open_windows, open_alert_ids,
                              alive_alert_ids)
        for seg in plan["segments"]:
            with self._tx() as tx:
                tx.execute("DELETE FROM frames WHERE segment=?", (seg["id"],))
                tx.execute("DELETE FROM segments WHERE id=?", (seg["id"],))
            (self.dir / seg["path"]).unlink(missing_ok=True)
        for clip in plan["clips"]:
            db.execute("DELETE FROM clips WHERE alert_id=?", (clip["alert_id"],))
            (self.dir / clip["path"]).unlink(missing_ok=True)
        return {"segments": [s["id"] for s in plan["segments"]],
                "clips": [c["alert_id"] for c in plan["clips"]],
                "bytes": plan["bytes_after"], "clip_bytes": plan["clip_bytes"]}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _spool_gen(db: sqlite3.Connection, device: str) -> int:
    row = db.execute("SELECT gen FROM spools WHERE device=?", (device,)).fetchone()
    return row[0] if row else 0


def _spool_name(device: str, gen: int) -> str:
    return f"{device}/spool-{gen}.pcm"


def _rate_runs(rows: Sequence[sqlite3.Row]) -> list[list[sqlite3.Row]]:
    """Staged rows split where the rate changes (a FLAC file has one rate)."""
    out: list[list[sqlite3.Row]] = []
    for r in rows:
        if not out or out[-1][-1]["rate"] != r["rate"]:
            out.append([])
        out[-1].append(r)
    return out


def _gaps(covered: np.ndarray, start_ms: int, rate: int) -> list[tuple[int, int]]:
    """Unrecorded stretches of a span (from its coverage mask) as (start_ms, end_ms)."""
    if covered.all():
        return []
    edges = np.flatnonzero(np.diff(np.concatenate([[1], covered.astype(np.int8), [1]])))
    return [(start_ms + int(a * 1000 // rate), start_ms + int(b * 1000 // rate))
            for a, b in zip(edges[::2], edges[1::2], strict=True)]


def plan_retention(segments: Sequence[dict[str, Any]], clips: Sequence[dict[str, Any]], now: int,
                   max_age_s: float, budget_bytes: int,
                   open_windows: Sequence[tuple[str, int, int]], open_alert_ids: set[int],
                   alive_alert_ids: set[int] | None = None) -> dict[str, Any]:
    """What retention deletes (pure).

    1. Segments that ended more than ``max_age_s`` ago, and the clips of alerts that no longer
       exist (``alive_alert_ids``; None: unknown, keep all; ``open_alert_ids`` always exist).
    2. While segments and clips together exceed ``budget_bytes``: the oldest remaining
       segment.

    Never deleted: a segment overlapping an ``open_windows`` entry ``(device, start_ms,
    end_ms)`` (audio an alert's clip may still be cut from) and the clip of an alert that
    exists: clips count against the budget, but only deleting the alert deletes its clip.
    ``clip_bytes`` in the answer is what the kept clips take; above ``budget_bytes`` the
    budget leaves no room for any segment.
    """
    def protected(seg: dict[str, Any]) -> bool:
        return any(seg["device"] == d and seg["start_ms"] < e and seg["end_ms"] > s
                   for d, s, e in open_windows)

    total = sum(s["bytes"] for s in segments) + sum(c["bytes"] for c in clips)
    drop_segs: list[dict[str, Any]] = []
    drop_clips: list[dict[str, Any]] = []
    keep_segs = []
    for seg in sorted(segments, key=lambda s: (s["start_ms"], s["id"])):
        if not protected(seg) and seg["end_ms"] < now - max_age_s * 1000:
            drop_segs.append(seg)
            total -= seg["bytes"]
        else:
            keep_segs.append(seg)
    keep_clips = []
    for clip in sorted(clips, key=lambda c: (c["created_ms"], c["alert_id"])):
        if (alive_alert_ids is not None and clip["alert_id"] not in alive_alert_ids
                and clip["alert_id"] not in open_alert_ids):
            drop_clips.append(clip)
            total -= clip["bytes"]
        else:
            keep_clips.append(clip)
    for seg in keep_segs:
        if total <= budget_bytes:
            break
        if not protected(seg):
            drop_segs.append(seg)
            total -= seg["bytes"]
    return {"segments": drop_segs, "clips": drop_clips, "bytes_after": total,
            "clip_bytes": sum(c["bytes"] for c in keep_clips)}
