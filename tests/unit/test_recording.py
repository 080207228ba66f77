"""Recording: staging, rotation into FLAC, reading spans with gaps, retention (soundmon.recording)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile

from soundmon.protocol import KIND_PCM, decode_frame, encode_frame
from soundmon.recording import Recording, RecordingError, clip_window, parse_time, plan_retention

RATE, N = 8000, 4000  # 500 ms frames
T0 = 1_700_000_000_000


def _batch(device: str, seqs: range | list[int], boot: int = 7, seed: int = 0,
           t0: int = T0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for seq in seqs:
        samples = rng.integers(-3000, 3000, N).astype("<i2")
        frame = decode_frame(encode_frame(KIND_PCM, seq, boot, t0 + seq * 500, RATE, samples))
        out.append((device, 0, frame))
    return out


def _samples(batch: list) -> np.ndarray:
    return np.concatenate([f.samples() for _, _, f in batch])


def test_redelivered_batches_are_recorded_once(tmp_path: Path) -> None:
    """The same frames staged twice, and again after rotation into FLAC, are kept once."""
    rec = Recording(tmp_path)
    batch = _batch("kitchen", range(6))
    assert rec.record(batch) == 6
    assert rec.record(batch) == 0
    made = rec.flush(force=True)
    assert len(made) == 1 and made[0]["frames"] == 6
    assert rec.record(batch) == 0  # a redelivery after the flush is not staged again
    assert rec.flush(force=True) == []
    span = rec.read("kitchen", T0, T0 + 3000)
    np.testing.assert_array_equal(span.samples, _samples(batch))  # FLAC is lossless
    assert span.gaps == []
    (seg,) = (tmp_path / "recordings" / "kitchen").glob("*.flac")
    assert soundfile.info(str(seg)).format == "FLAC"


def test_a_span_reads_across_segments_and_staged_frames_and_shows_gaps(tmp_path: Path) -> None:
    """Frames 0-3 in a segment, 6-9 staged: one span, silence and a gap where 4-5 are missing."""
    rec = Recording(tmp_path)
    first, second = _batch("kitchen", range(4)), _batch("kitchen", range(6, 10), seed=1)
    rec.record(first)
    rec.flush(force=True)
    rec.record(second)
    span = rec.read("kitchen", T0, T0 + 5000)
    assert span.gaps == [(T0 + 2000, T0 + 3000)]
    np.testing.assert_array_equal(span.samples[:4 * N], _samples(first))
    assert (span.samples[4 * N: 6 * N] == round(np.r_[_samples(first), _samples(second)].mean())).all()
    np.testing.assert_array_equal(span.samples[6 * N:], _samples(second))
    listing = rec.spans("kitchen", T0 - 10_000, T0 + 10_000)
    assert [(s["start_ms"], s["end_ms"], s["frames"]) for s in listing["spans"]] == [
        (T0, T0 + 2000, 4), (T0 + 3000, T0 + 5000, 4)]
    assert listing["gaps"] == [{"start_ms": T0 + 2000, "end_ms": T0 + 3000}]
    with pytest.raises(RecordingError, match="nothing recorded"):
        rec.read("kitchen", T0 + 60_000, T0 + 61_000)


def test_rotation_waits_for_a_segment_of_audio(tmp_path: Path) -> None:
    """flush() rotates a device only once its oldest staged frame is segment_s old."""
    rec = Recording(tmp_path)
    rec.record(_batch("kitchen", range(4)))
    assert rec.flush(segment_s=300, now=T0 + 10_000) == []
    assert len(rec.flush(segment_s=300, now=T0 + 301_000)) == 1


def test_frames_are_staged_while_a_rotation_encodes(tmp_path: Path, monkeypatch) -> None:
    """The index's write lock is free while a rotation reads its spool and encodes FLAC, so
    the store step's appends never wait for it: a batch staged in the middle of the encoding
    lands in the new spool file, and the next rotation takes it."""
    rec, live = Recording(tmp_path), Recording(tmp_path)  # the upkeep, and a store step
    first, during = _batch("kitchen", range(4)), _batch("kitchen", range(4, 6), seed=1)
    rec.record(first)
    encode = soundfile.write
    staged = []

    def write_while_staging(*args, **kw):
        staged.append(live.record(during))  # would wait for the lock if the flush held it
        return encode(*args, **kw)

    monkeypatch.setattr(soundfile, "write", write_while_staging)
    live._db().execute("PRAGMA busy_timeout=0")  # waiting would be an error, not a delay
    made = rec.flush(force=True)
    assert staged == [2] and [m["frames"] for m in made] == [4]
    monkeypatch.setattr(soundfile, "write", encode)
    assert [m["frames"] for m in rec.flush(force=True)] == [2]
    span = rec.read("kitchen", T0, T0 + 3000)
    np.testing.assert_array_equal(span.samples, np.r_[_samples(first), _samples(during)])
    assert span.gaps == []
    assert list((tmp_path / "recordings" / "kitchen").glob("spool-*.pcm")) == []  # all in FLAC


def test_a_device_switched_off_is_not_recorded(tmp_path: Path) -> None:
    """Recording off for one device keeps nothing of it; the default covers the others."""
    rec = Recording(tmp_path, default_enabled=True)
    rec.set_enabled("private", False)
    assert rec.record(_batch("private", range(3)) + _batch("kitchen", range(3))) == 3
    assert rec.enabled(["private", "kitchen"]) == {"private": False, "kitchen": True}
    assert Recording(tmp_path / "other", default_enabled=False).record(_batch("x", range(2))) == 0


def _seg(i: int, start: int, device: str = "d", size: int = 100) -> dict:
    return {"id": i, "device": device, "start_ms": start, "end_ms": start + 60_000,
            "bytes": size, "path": f"s{i}"}


def test_retention_deletes_the_oldest_segments_first_down_to_the_budget() -> None:
    """Over budget, segments go oldest first and no more than needed."""
    segs = [_seg(3, T0 + 120_000), _seg(1, T0), _seg(2, T0 + 60_000)]
    plan = plan_retention(segs, [], T0 + 200_000, 3600, 150, [], set())
    assert [s["id"] for s in plan["segments"]] == [1, 2]
    assert plan["bytes_after"] == 100
    aged = plan_retention(segs, [], T0 + 3600_000 + 150_000, 3600, 10**9, [], set())
    assert [s["id"] for s in aged["segments"]] == [1, 2]  # ended more than an hour ago


def test_retention_never_deletes_audio_an_alert_needs_or_any_clip() -> None:
    """Far over the budget, protected segments and every clip of an existing alert stay."""
    segs = [_seg(1, T0), _seg(2, T0 + 60_000), _seg(3, T0 + 200_000)]
    clips = [{"alert_id": 5, "device": "d", "created_ms": T0, "bytes": 50, "path": "c5"},
             {"alert_id": 6, "device": "d", "created_ms": T0 + 1, "bytes": 50, "path": "c6"}]
    window = [("d", T0 + 50_000, T0 + 70_000)]  # open alert 5 straddles segments 1 and 2
    plan = plan_retention(segs, clips, T0 + 10**9, 1, 0, window, {5}, {5, 6})
    assert [s["id"] for s in plan["segments"]] == [3]
    assert plan["clips"] == []  # resolved alert 6 keeps its clip too: only deleting it deletes it
    assert (plan["clip_bytes"], plan["bytes_after"]) == (100, 300)


def test_retention_deletes_the_clip_of_a_deleted_alert_only() -> None:
    """A clip whose alert no longer exists goes at once; the clips of live alerts never."""
    clips = [{"alert_id": 5, "device": "d", "created_ms": T0, "bytes": 50, "path": "c5"},
             {"alert_id": 6, "device": "d", "created_ms": T0 + 1, "bytes": 50, "path": "c6"}]
    plan = plan_retention([], clips, T0, 3600, 10**9, [], {5}, {5})
    assert [c["alert_id"] for c in plan["clips"]] == [6] and plan["clip_bytes"] == 50
    assert plan_retention([], clips, T0, 3600, 10**9, [], set(), None)["clips"] == []


def test_clips_over_the_budget_leave_no_room_for_segments() -> None:
    """Clips count against the budget: when they alone exceed it, every free segment goes."""
    clips = [{"alert_id": 5, "device": "d", "created_ms": T0, "bytes": 500, "path": "c5"}]
    plan = plan_retention([_seg(1, T0), _seg(2, T0 + 60_000)], clips, T0 + 120_000, 3600, 400,
                          [], set(), {5})
    assert [s["id"] for s in plan["segments"]] == [1, 2] and plan["clips"] == []
    assert plan["clip_bytes"] == 500 > 400


def test_the_clip_runs_from_the_preroll_to_the_postroll_after_the_alert_ended() -> None:
    """Resolved: pre-roll before the opening to post-roll after the end; open: after the last
    level out of bounds; a window over the maximum keeps its beginning."""
    assert clip_window(T0, T0 + 20_000, T0 + 15_000, 10_000, 10_000, 600_000) == (
        T0 - 10_000, T0 + 30_000)
    assert clip_window(T0, None, T0 + 15_000, 10_000, 10_000, 600_000) == (
        T0 - 10_000, T0 + 25_000)
    assert clip_window(T0, None, None, 10_000, 10_000, 600_000) == (T0 - 10_000, T0 + 10_000)
    assert clip_window(T0, T0 + 3_600_000, None, 10_000, 10_000, 600_000) == (
        T0 - 10_000, T0 + 590_000)


def test_the_workers_cut_the_beginning_while_open_and_the_whole_clip_once_resolved() -> None:
    """The clip task's window: opening + post-roll while unresolved, then the whole alert."""
    from soundmon.settings import Settings
    from soundmon.store import Alert
    from workers.recordtasks import alert_clip_window

    s = Settings(clip_preroll_s=10, clip_postroll_s=10, clip_max_s=600)
    alert = Alert(id=1, device="d", kind="level_high", state="open", value=90, threshold=80,
                  unit="dB(A)", started_ms=T0, ended_ms=None, worst=95, last_out_ms=T0 + 40_000)
    assert alert_clip_window(alert, s) == (T0 - 10_000, T0 + 10_000)
    alert.state, alert.ended_ms = "resolved", T0 + 45_000
    assert alert_clip_window(alert, s) == (T0 - 10_000, T0 + 55_000)


def test_enforce_retention_removes_files_and_index_rows(tmp_path: Path) -> None:
    """Deleted segments leave neither a file nor frames in the index; clips of open alerts stay."""
    rec = Recording(tmp_path)
    rec.record(_batch("d", range(4)))
    rec.flush(force=True)
    rec.record(_batch("d", range(4, 8)))
    rec.flush(force=True)
    rec.cut_clip(5, "d", T0, T0 + 1000)
    files = sorted((tmp_path / "recordings" / "d").glob("*.flac"))
    assert len(files) == 2
    gone = rec.enforce_retention(3600, 1, [], {5}, {5}, now=T0 + 10_000)
    assert len(gone["segments"]) == 2 and gone["clips"] == []
    assert not any(f.exists() for f in files)
    assert rec.frame_rows("d", T0, T0 + 10_000) == []
    assert rec.clip(5) is not None and rec.clip(5)["path"].exists()
    path = rec.clip(5)["path"]
    assert rec.delete_clip(5) and not path.exists() and rec.clip(5) is None
    assert not rec.delete_clip(5)


def test_a_clip_holds_the_window_with_its_gaps(tmp_path: Path) -> None:
    """cut_clip writes the window as FLAC with silence and a gap where nothing was recorded."""
    rec = Recording(tmp_path)
    batch = _batch("d", range(4))
    rec.record(batch)
    made = rec.cut_clip(9, "d", T0 - 1000, T0 + 2000)
    assert made["gaps"] == [[T0 - 1000, T0]]
    samples, rate = soundfile.read(str(rec.clip(9)["path"]), dtype="int16")
    assert rate == RATE and samples.size == 3 * RATE
    np.testing.assert_array_equal(samples[RATE:], _samples(batch))


def test_frames_at_another_rate_are_resampled_into_the_span(tmp_path: Path) -> None:
    """A span keeps the rate of its first frame; a later 16 kHz stretch is resampled to it."""
    rec = Recording(tmp_path)
    rec.record(_batch("d", range(2)))
    tone = (3000 * np.sin(2 * np.pi * 500 * np.arange(16000) / 16000)).astype("<i2")
    rec.record([("d", 0, decode_frame(encode_frame(KIND_PCM, 0, 8, T0 + 1000, 16000, tone)))])
    span = rec.read("d", T0, T0 + 2000)
    assert span.rate == RATE and span.samples.size == 2 * RATE and span.gaps == []
    rms = np.sqrt(np.mean(span.samples[RATE + 200: 2 * RATE - 200].astype(float) ** 2))
    assert rms == pytest.approx(3000 / np.sqrt(2), rel=0.02)


def test_times_parse_as_iso_unix_ms_or_ago() -> None:
    """--start/--end take ISO 8601 (naive = UTC), Unix ms or -N[smhd]."""
    assert parse_time("2023-11-14T22:13:20Z") == T0
    assert parse_time("2023-11-14T22:13:20") == T0
    assert parse_time(str(T0)) == T0
    assert parse_time("-8h", now=T0) == T0 - 8 * 3_600_000
    with pytest.raises(RecordingError, match="ISO 8601"):
        parse_time("yesterday")


def test_uploads_are_checked_for_format_and_truncation() -> None:
    """A truncated WAV or FLAC is a 422, anything else than WAV/FLAC a 415; good files pass."""
    from fastapi import HTTPException

    from dashboard.routes.recordings import check_audio

    x = np.random.default_rng(0).integers(-3000, 3000, 8000).astype(np.int16)
    for fmt in ("WAV", "FLAC"):
        buf = io.BytesIO()
        soundfile.write(buf, x, RATE, format=fmt, subtype="PCM_16")
        data = buf.getvalue()
        assert check_audio(data) == (fmt, RATE, 8000)
        with pytest.raises(HTTPException) as err:
            check_audio(data[: len(data) // 2])
        assert err.value.status_code == 422 and "truncated" in str(err.value.detail)
    with pytest.raises(HTTPException) as err:
        check_audio(b"ID3\x03" + b"\x00" * 500)  # an MP3
    assert err.value.status_code == 415


def test_a_file_is_cut_for_replay_as_soundmon_analyze_cuts_it(tmp_path: Path) -> None:
    """Frames of --frame-ms from the first sample, the last one shorter; 96 kHz goes to 48 kHz."""
    from soundmon.replay import default_device, file_source

    x = np.random.default_rng(1).integers(-3000, 3000, 20_000).astype(np.int16)
    soundfile.write(tmp_path / "Night Shift.wav", x, RATE, subtype="PCM_16")
    src = file_source(tmp_path / "Night Shift.wav", 1000, now=T0)
    frames = list(src.frames)
    assert [f.samples.size for f in frames] == [8000, 8000, 4000] and src.total == 3
    assert [f.t0_ms for f in frames] == [T0, T0 + 1000, T0 + 2000]
    np.testing.assert_array_equal(np.concatenate([f.samples for f in frames]), x)
    assert default_device(src.name) == "replay-night-shift"
    soundfile.write(tmp_path / "hi.flac", np.zeros(96_000, np.int16), 96_000, subtype="PCM_16")
    hi = file_source(tmp_path / "hi.flac", 500)
    assert hi.rate == 48_000 and next(hi.frames).samples.size == 24_000


def test_a_replay_may_not_take_the_id_of_a_real_device() -> None:
    """Unknown ids, earlier replays and devices without firmware pass; a real device does not."""
    from soundmon.replay import REPLAY_FW, ReplayError, refuse_live_device

    for info in (None, {"fw": REPLAY_FW}, {"fw": None}):
        refuse_live_device("replay-x", info)
    with pytest.raises(ReplayError, match="kitchen is a live device .* e.g. replay-kitchen"):
        refuse_live_device("kitchen", {"fw": "1.0.0"})


def test_a_recording_replays_with_its_times_and_restarts_at_gaps(tmp_path: Path) -> None:
    """recording: frames keep their times and sizes; after a gap or a reboot seq skips one."""
    from soundmon.replay import recording_source

    rec = Recording(tmp_path)
    rec.record(_batch("d", range(3)) + _batch("d", range(5, 7)))
    rec.flush(force=True)
    rec.record(_batch("d", [0], boot=9, t0=T0 + 10_000))
    src = recording_source(tmp_path, "d", T0, T0 + 60_000)
    frames = list(src.frames)
    assert src.total == 6 and src.frame_ms == 500 and src.audio_s == 3.0
    assert [f.t0_ms for f in frames] == [T0, T0 + 500, T0 + 1000, T0 + 2500, T0 + 3000,
                                         T0 + 10_000]
    assert [f.restart for f in frames] == [False, False, False, True, False, True]


# ---- the clip and the deletion of an alert through the API -----------------------------------
def _alert_row(store_path: Path, started_ms: int, ended_ms: int | None,
               last_out_ms: int | None) -> int:
    """Write an alert row as the analyser would (plain SQL, with how far it reached)."""
    import sqlite3

    db = sqlite3.connect(store_path)
    with db:
        cur = db.execute(
            "INSERT INTO alerts (device, kind, state, value, threshold, unit, started_ms, "
            "ended_ms, worst, last_out_ms) VALUES ('d', 'level_high', ?, 84, 80, 'dB(A)', ?, ?, "
            "85, ?)", ("open" if ended_ms is None else "resolved", started_ms, ended_ms,
                       last_out_ms))
    db.close()
    return cur.lastrowid or 0


def test_the_clip_route_serves_the_window_so_far_then_the_final_clip(tmp_path: Path) -> None:
    """Open: cut on the fly to post-roll after the last loud level; resolved and cut: the clip."""
    import json

    from soundmon.store import SQLiteStore
    from tests.unit.test_api import AUTH, make_client

    store = SQLiteStore(tmp_path / "soundmon.db")
    rec = Recording(tmp_path)
    rec.record(_batch("d", range(80)))  # 40 s from T0
    alert_id = _alert_row(store.path, T0 + 12_000, None, T0 + 15_000)
    with make_client(tmp_path, store) as client:
        r = client.get(f"/api/alerts/{alert_id}/clip", headers=AUTH)
        assert r.status_code == 200 and json.loads(r.headers["x-soundmon-clip"])["final"] is False
        assert soundfile.info(io.BytesIO(r.content)).frames == 23 * RATE  # T0+2 s .. T0+25 s
        _resolve(store.path, alert_id, T0 + 20_000)
        rec.cut_clip(alert_id, "d", T0 + 2_000, T0 + 30_000)
        r = client.get(f"/api/alerts/{alert_id}/clip", headers=AUTH)
        window = json.loads(r.headers["x-soundmon-clip"])
        assert window["final"] is True and soundfile.info(io.BytesIO(r.content)).frames == 28 * RATE


def test_deleting_an_alert_deletes_its_events_deliveries_and_clip(tmp_path: Path) -> None:
    """DELETE /api/alerts/{id}: 204 and all of it gone; 409 while unresolved; 404 unknown."""
    from soundmon.store import SQLiteStore
    from tests.unit.test_api import AUTH, make_client

    store = SQLiteStore(tmp_path / "soundmon.db")
    rec = Recording(tmp_path)
    rec.record(_batch("d", range(10)))
    done = _alert_row(store.path, T0 + 1_000, T0 + 3_000, T0 + 2_000)
    still_open = _alert_row(store.path, T0 + 4_000, None, T0 + 5_000)
    for alert_id in (done, still_open):
        event = store.add_alert_event(alert_id, "opened")
        store.plan_deliveries(event, ["live", "channel:1"])
        rec.cut_clip(alert_id, "d", T0, T0 + 5_000)
    clip_path = rec.clip(done)["path"]
    with make_client(tmp_path, store) as client:
        r = client.delete(f"/api/alerts/{still_open}", headers=AUTH)
        assert r.status_code == 409 and "resolve it first" in r.json()["detail"]
        assert client.delete(f"/api/alerts/{done}", headers=AUTH).status_code == 204
        assert client.get(f"/api/alerts/{done}", headers=AUTH).status_code == 404
        assert client.delete(f"/api/alerts/{done}", headers=AUTH).status_code == 404
    assert store.alert(done) is None and store.deliveries(done) == []
    assert rec.clip(done) is None and not clip_path.exists()
    assert len(store.deliveries(still_open)) == 2 and rec.clip(still_open) is not None


def _resolve(store_path: Path, alert_id: int, ended_ms: int) -> None:
    import sqlite3

    db = sqlite3.connect(store_path)
    with db:
        db.execute("UPDATE alerts SET state='resolved', ended_ms=? WHERE id=?", (ended_ms, alert_id))
    db.close()
