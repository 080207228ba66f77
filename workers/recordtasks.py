"""Celery tasks of the recording queue: upkeep, alert clips, file analyses and replays.

``record`` is the hook the preprocess task calls with every decoded batch: it stages the
audio of recorded devices (idempotent, in the same task, so an accepted frame is recorded
before the batch is acknowledged) and, at most every ``recording_upkeep_s``, sends the upkeep
task (rotation into FLAC, retention) to the ``recording`` queue.

``analyze_file`` and ``replay`` keep their results (``GET /api/tasks/{id}``) and report
progress as the ``PROGRESS`` state with ``{"progress": 0..1, "stage": ...}``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from soundmon import tasknames
from soundmon.metrics import FLAG_BIT
from soundmon.protocol import Frame
from soundmon.recording import CONTIGUOUS_MS, Recording, RecordingError, clip_window, iso, now_ms
from soundmon.settings import Settings, get_settings
from soundmon.store import Alert
from workers import outputs, rules
from workers.analysis import analyse
from workers.app import app
from workers.rules import RuleSet

log = logging.getLogger("soundmon.workers")

UPKEEP_LOCK = "soundmon:recording:upkeep"
#: a clip whose audio is not all in yet is cut again this often, for this long
CLIP_RETRY_S, CLIP_GIVE_UP_S = 15, 600
CHUNK_FRAMES = 256  # frames analysed at once when analysing a recorded span


def recorder() -> Recording:
    s = get_settings()
    return outputs._per_process("recording", lambda: Recording(s.data_dir, s.recording_default))


def record(decoded: Sequence[tuple[str, int, Frame]]) -> int:
    """Stage the batch's audio (devices with recording on); now and then, schedule upkeep."""
    new = recorder().record(decoded)
    every = max(1, int(get_settings().recording_upkeep_s))
    # the lock in Redis makes it one upkeep per period across processes; asking it only once a
    # period per process saves a Redis round trip (and its fsync) on every batch
    if new and time.monotonic() >= _upkeep_asked["at"] + every:
        _upkeep_asked["at"] = time.monotonic()
        try:
            if outputs.redis_client().set(UPKEEP_LOCK, os.getpid(), nx=True, ex=every):
                app.send_task(tasknames.RECORDING_UPKEEP)
        except redis.RedisError as exc:  # upkeep waits for the next period; the audio is safe
            log.warning("recording upkeep not scheduled: %s", exc)
    return new


_upkeep_asked = {"at": float("-inf")}  # when this process last asked for the upkeep lock


def rules_for(device: str | None, override: dict[str, Any] | None) -> RuleSet:
    """The rules in force (the device's, or the defaults for a file), with ``override`` (a
    partial rule set, e.g. ``{"level": {"max_db": 70}}``) deep-merged over them."""
    return rules.effective(rules.load(outputs.store(), device, get_settings()), override)


def alert_clip_window(alert: Alert, s: Settings) -> tuple[int, int]:
    """The window of the clip the workers cut of an alert (``recording.clip_window``).

    Resolved: pre-roll before it opened to post-roll after it resolved (at most
    ``clip_max_s``). Unresolved: the first cut, made when it opens so that something is there
    early, ends a post-roll after the opening; the clip is cut again, whole, once it resolves.
    """
    start, end = clip_window(alert.started_ms, alert.ended_ms, alert.last_out_ms,
                             int(s.clip_preroll_s * 1000), int(s.clip_postroll_s * 1000),
                             int(s.clip_max_s * 1000))
    if alert.ended_ms is None:
        end = min(end, alert.started_ms + int(s.clip_postroll_s * 1000))
    return start, end


def _alerts_needing_audio(s: Settings) -> tuple[list[Alert], list[Alert]]:
    """Unresolved alerts, and alerts resolved so recently that their final clip may be due."""
    recent = now_ms() - (CLIP_GIVE_UP_S + s.clip_postroll_s) * 1000
    alerts = outputs.store().alerts(None, None, 100_000, since_ms=int(recent))
    return ([a for a in alerts if a.ended_ms is None],
            [a for a in alerts if a.ended_ms is not None])


@app.task(name=tasknames.RECORDING_UPKEEP, acks_late=True)
def recording_upkeep() -> dict[str, Any]:
    """Rotate staged audio into FLAC segments, cut clips whose task was lost, then enforce
    retention (which keeps the audio of clips still to be cut, and every clip)."""
    s = get_settings()
    rec = recorder()
    made = rec.flush(s.recording_segment_s)
    unresolved, resolved = _alerts_needing_audio(s)
    post, max_ms = int(s.clip_postroll_s * 1000), int(s.clip_max_s * 1000)
    pre = int(s.clip_preroll_s * 1000)
    # an unresolved alert's clip may reach up to the maximum length: keep all of that audio
    windows = [(a.device, a.started_ms - pre, a.started_ms - pre + max_ms) for a in unresolved]
    cut = {r[0]: r[1] for r in rec._db().execute("SELECT alert_id, end_ms FROM clips")}
    for a in [*unresolved, *resolved]:  # a clip whose task was lost (or never sent): cut it now
        start, end = alert_clip_window(a, s)
        final = a.ended_ms is not None
        if final and cut.get(a.id, 0) < end:
            windows.append((a.device, start, end))  # its final clip is not cut yet
        due = (a.ended_ms if a.ended_ms is not None else a.started_ms) + post < now_ms()
        missing = cut.get(a.id, 0) < end if final else a.id not in cut
        if not (due and missing and rec.enabled([a.device])[a.device]):
            continue
        try:
            rec.cut_clip(a.id, a.device, start, end)
            cut[a.id] = end
        except RecordingError:
            pass  # nothing recorded around it
    store = outputs.store()
    alive = {i for i in cut if store.alert(i) is not None}
    budget = int(s.recording_budget_mb * 2**20)
    gone = rec.enforce_retention(s.recording_max_age_h * 3600, budget, windows,
                                 {a.id for a in unresolved}, alive)
    if gone["segments"] or gone["clips"]:
        log.info("recording retention deleted %d segments, %d clips of deleted alerts",
                 len(gone["segments"]), len(gone["clips"]))
    if gone["clip_bytes"] > budget:
        log.warning("alert clips alone take %.0f MB, over the recording budget of %.0f MB "
                    "(SOUNDMON_RECORDING_BUDGET_MB): no segment can be kept; delete old alerts "
                    "(DELETE /api/alerts/{id}) or raise the budget", gone["clip_bytes"] / 2**20,
                    s.recording_budget_mb)
    return {"segments_made": len(made), **gone}


@app.task(name=tasknames.CLIP, bind=True, acks_late=True, max_retries=CLIP_GIVE_UP_S // CLIP_RETRY_S)
def clip(self: Any, alert_id: int) -> dict[str, Any] | None:
    """Cut the clip of an alert (``alert_clip_window``): the first cut while it is open, the
    whole clip once it resolved.

    The analyze task sends it when an alert opens and again when it resolves, each time with
    ``countdown`` = the post-roll. Audio still on its way (a batch in flight, a device
    backfilling after an outage) makes the task cut again later, for up to 10 min.
    """
    s = get_settings()
    alert = outputs.store().alert(int(alert_id))
    if alert is None:
        return None  # deleted
    start, end = alert_clip_window(alert, s)
    rec = recorder()
    if not rec.enabled([alert.device])[alert.device]:
        return None
    try:
        made = rec.cut_clip(alert.id, alert.device, start, end)
    except RecordingError:
        made = None
    if made is None or (made["gaps"] and made["gaps"][-1][1] >= end):  # the tail is missing
        try:
            raise self.retry(countdown=CLIP_RETRY_S)
        except self.MaxRetriesExceededError:
            log.warning("alert %s: clip has gaps %s", alert_id, made and made["gaps"])
    return made


def _progress(task: Any, progress: float, stage: str) -> None:
    if task.request.id:
        task.update_state(state="PROGRESS", meta={"progress": round(progress, 3), "stage": stage})


def _flag_mask(names: Sequence[str]) -> int:
    return sum(FLAG_BIT[n] for n in set(names) if n in FLAG_BIT)


def would_raise(name: str, frames: Sequence[dict[str, Any]], rate: int,
                ruleset: RuleSet) -> list[dict[str, Any]]:
    """The alerts the rules would have raised over per-frame levels (``t_ms``, ``n``, ...)."""
    levels = [{"device": name, "boot": 0, "seq": i, "idx": 0, "t_ms": f["t_ms"], "kind": 1,
               "rate": f.get("rate", rate), "n": f["n"], "laeq": f["laeq"], "lafmax": f["lafmax"],
               "dominant_hz": f["dominant_hz"], "flags": _flag_mask(f["flags"]), "duty": None}
              for i, f in enumerate(frames)]
    outcome = analyse(name, levels, -1, {}, {}, ruleset, 0)
    return [{"kind": a.kind, "rule": a.rule, "severity": a.severity,
             "state": "open" if a.ended_ms is None else "resolved",
             "value": a.value, "worst": a.worst, "threshold": a.threshold, "unit": a.unit,
             "started": iso(a.started_ms), "started_ms": a.started_ms,
             "ended": iso(a.ended_ms) if a.ended_ms else None, "ended_ms": a.ended_ms}
            for a in outcome.opened]


def _file_frames(path: Path, options: dict[str, Any]) -> tuple[list[dict[str, Any]], dict, int]:
    """``soundmon analyze``'s per-frame records and summary, with ``t_ms`` and ``n``."""
    from workers.fileanalysis import analyse_samples, read_audio

    audio = read_audio(path)
    frame_ms = float(options.get("frame_ms") or 1000)
    frames, summary = analyse_samples(audio.samples, audio.rate_hz, options.get("calibration_db"),
                                      frame_ms)
    t0 = int(options.get("t0_ms") or 0)
    n_frame = max(1, int(round(audio.rate_hz * frame_ms / 1000)))
    for i, f in enumerate(frames):
        f["t_ms"] = t0 + int(round(f["t"] * 1000))
        f["n"] = min(n_frame, audio.samples.size - i * n_frame)
    return frames, summary, audio.rate_hz


def _recording_frames(task: Any, device: str, start_ms: int, end_ms: int,
                      options: dict[str, Any]) -> tuple[list[dict[str, Any]], dict, int]:
    """Levels of the recorded frames as recorded (sizes, times), with the device's K.

    Streams through the span in chunks of ``CHUNK_FRAMES`` equal frames, the filter state
    carried from chunk to chunk and restarted at gaps (as the pipeline restarts it).
    """
    from workers import dsp
    from workers.fileanalysis import percentiles_db

    k = options.get("calibration_db")
    if k is None:
        k = outputs.store().calibrations([device])[device].k_db or 0.0
    rec = recorder()
    total = len(rec.frame_rows(device, start_ms, end_ms))
    if not total:
        raise RecordingError(f"nothing recorded for {device} in that span")
    out: list[dict[str, Any]] = []
    chunk: list[Any] = []
    state = None

    def analyse_chunk() -> None:
        nonlocal state
        feats, state = dsp.analyse_stream(np.stack([f.samples for f in chunk]), chunk[0].rate,
                                          state)
        for m, f in enumerate(chunk):
            out.append({"t": round((f.t_ms - start_ms) / 1000, 3), "t_ms": f.t_ms,
                        "n": f.samples.size, "rate": f.rate,
                        "dbfs": round(float(feats["dbfs"][m]), 2),
                        "laeq": round(float(feats["laeq"][m]) + k, 2),
                        "lceq": round(float(feats["lceq"][m]) + k, 2),
                        "lafmax": round(float(feats["lafmax"][m]) + k, 2),
                        "dominant_hz": _finite(feats["dominant_hz"][m]),
                        "flags": ["clipped"] if feats["clip_frac"][m] > 0 else []})
        chunk.clear()
        _progress(task, 0.05 + 0.75 * len(out) / total, "levels")

    prev = None
    for f in rec.frames(device, start_ms, end_ms):
        broken = prev is not None and (f.rate != prev.rate or f.boot != prev.boot
                                       or abs(f.t_ms - prev.end_ms) > CONTIGUOUS_MS)
        if chunk and (broken or f.samples.size != chunk[0].samples.size
                      or len(chunk) >= CHUNK_FRAMES):
            analyse_chunk()
        if broken:
            state = None  # a gap: the pipeline starts the filters afresh too
        chunk.append(f)
        prev = f
    if chunk:
        analyse_chunk()
    laeq = np.array([f["laeq"] for f in out])
    dur = np.array([f["n"] / f["rate"] for f in out])
    summary = {"duration_s": round(float(dur.sum()), 3),
               "laeq": round(dsp.energetic_mean_db(laeq, dur), 2),
               "lafmax": max(f["lafmax"] for f in out),
               **{k2: round(v, 2) if v is not None else None
                  for k2, v in percentiles_db(laeq).items()},
               "gaps": rec.spans(device, start_ms, end_ms)["gaps"]}
    return out, summary, out[0]["rate"]


def _finite(v: float) -> float | None:
    return round(float(v), 2) if np.isfinite(v) else None


@app.task(name=tasknames.ANALYZE_FILE, bind=True, acks_late=True, ignore_result=False)
def analyze_file(self: Any, source: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Levels, statistics and would-be alerts of an uploaded file or a recorded span.

    ``source``: ``{"upload": path, "name": ...}`` (the file is deleted afterwards) or
    ``{"recording": device, "start_ms": ..., "end_ms": ...}``. ``options``: ``frame_ms``,
    ``calibration_db``, ``t0_ms`` (file: time of its first sample), ``rules`` (a partial rule set
    merged over the rules in force: the device's for a recording, the defaults for a file).
    """
    ruleset = rules_for(source.get("recording"), options.get("rules"))
    _progress(self, 0.05, "reading")
    try:
        if "upload" in source:
            name = source.get("name") or "upload"
            frames, summary, rate = _file_frames(Path(source["upload"]), options)
        else:
            name = source["recording"]
            frames, summary, rate = _recording_frames(self, name, int(source["start_ms"]),
                                                      int(source["end_ms"]), options)
        _progress(self, 0.8, "rules")
        alerts = would_raise("analysis", frames, rate, ruleset)
    finally:
        if "upload" in source:
            Path(source["upload"]).unlink(missing_ok=True)
    return {"source": {k: v for k, v in source.items() if k != "upload"}, "name": name,
            "rate_hz": rate, "frames": len(frames), "summary": summary,
            "rules": ruleset.model_dump(), "alerts": alerts, "levels": frames}


@app.task(name=tasknames.REPLAY, bind=True, acks_late=False, ignore_result=False)
def replay_task(self: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Replay a recorded span through MQTT (``soundmon replay recording:DEVICE``).

    ``options``: ``device`` (the recorded one), ``start_ms``, ``end_ms``, ``speed``,
    ``as_device`` (default ``replay-<device>``). Acknowledged early: a replay is not redone
    after a crash (it would publish twice).

    It publishes with this worker's own MQTT account (``SOUNDMON_MQTT_USERNAME``:
    ``svc.replay`` under ``soundmon up`` and Docker Compose), never with an account made for
    the replay: under Compose the broker's account files are out of this worker's reach.
    """
    from soundmon import replay

    s = get_settings()
    src = replay.recording_source(s.data_dir, options["device"], int(options["start_ms"]),
                                  int(options["end_ms"]), s.recording_default)
    device = options.get("as_device") or replay.default_device(src.name)
    replay.refuse_live_device(device, outputs.store().device(device))
    if src.k_db is not None:
        outputs.store().set_calibration(device, src.k_db, "replay")
    every = max(1, src.total // 100)

    def progress(n: int) -> None:
        if n % every == 0:
            _progress(self, n / src.total, "publishing")

    try:
        return replay.replay(src, device, s.mqtt_host, s.mqtt_port,
                             float(options.get("speed") or 1.0), s.mqtt_username,
                             s.mqtt_password, s.mqtt_prefix, on_progress=progress)
    except replay.ReplayError as exc:
        if "did not accept" not in str(exc):
            raise
        raise replay.ReplayError(
            f"the MQTT broker at {s.mqtt_host}:{s.mqtt_port} refused the recording worker's "
            f"account ({s.mqtt_username or 'none'}): give worker-recording "
            "SOUNDMON_MQTT_USERNAME=svc.replay and its password (docs/deploy.md)") from exc
