"""Recordings (list, spans, audio, on/off), replays, and analyses of uploads or recorded spans.

Long work goes to the workers as Celery tasks; these routes answer at once with a task id
(``GET /api/tasks/{id}``). See docs/recording.md.
"""

from __future__ import annotations

import io
import json
import re
import struct
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from dashboard.deps import Authenticated, DeviceId, RedisDep, SettingsDep, StoreDep
from dashboard.routes.tasks import start_task
from soundmon import tasknames
from soundmon.recording import Recording, RecordingError, iso, now_ms, parse_time
from soundmon.settings import Settings

router = APIRouter(prefix="/api", tags=["recordings"], dependencies=[Authenticated])

MAX_AUDIO_S = 3600  # longest span served as one WAV
_recordings: dict[str, Recording] = {}


def recording(settings: Settings) -> Recording:
    """The recording of the settings' data directory (one per directory and process)."""
    key = str(settings.data_dir)
    if key not in _recordings:
        _recordings[key] = Recording(settings.data_dir, settings.recording_default)
    return _recordings[key]


def audio_response(request: Request, data: bytes, filename: str, download: bool,
                   headers: dict[str, str] | None = None) -> Response:
    """``audio/wav`` with single-range support (``Range: bytes=a-b``) for the browser's player."""
    base = {"Accept-Ranges": "bytes", **(headers or {}),
            "Content-Disposition": f'{"attachment" if download else "inline"}; filename="{filename}"'}
    wanted = request.headers.get("range")
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip()) if wanted else None
    if wanted and (m is None or m.group(1) == m.group(2) == ""):
        raise HTTPException(416, "only one range of the form bytes=START-END is supported",
                            headers={"Content-Range": f"bytes */{len(data)}"})
    if m is None:
        return Response(data, media_type="audio/wav", headers=base)
    if m.group(1) == "":  # the last N bytes
        start, end = max(0, len(data) - int(m.group(2))), len(data) - 1
    else:
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
    if start >= len(data) or start > end:
        raise HTTPException(416, f"range outside the {len(data)} bytes",
                            headers={"Content-Range": f"bytes */{len(data)}"})
    return Response(data[start: end + 1], status_code=206, media_type="audio/wav",
                    headers={**base, "Content-Range": f"bytes {start}-{end}/{len(data)}"})


def _window(start: str | None, end: str | None, span_ms: int) -> tuple[int, int]:
    """ISO 8601, Unix ms or ``-8h`` (ago); end defaults to now, start to end - ``span_ms``."""
    now = now_ms()
    try:
        b = now if end is None else parse_time(end, "end", now)
        a = b - span_ms if start is None else parse_time(start, "start", now)
    except RecordingError as exc:
        raise HTTPException(422, str(exc)) from exc
    if a >= b:
        raise HTTPException(422, f"start ({iso(a)}) must be before end ({iso(b)})")
    return a, b


class SwitchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool


class SpanIn(BaseModel):
    """A recorded span (ISO 8601 or Unix ms) and what to do with it."""

    model_config = ConfigDict(extra="forbid")
    start: str
    end: str


class ReplayIn(SpanIn):
    speed: float = Field(1.0, gt=0, le=1000)
    device: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
                               description="replay device id (default replay-<device>)")


class AnalyzeIn(SpanIn):
    calibration_db: float | None = Field(None, ge=-50, le=250)
    rules: dict[str, Any] | None = Field(None, description="partial rule set merged over the "
                                                           "device's, e.g. {\"level\": {\"max_db\": 70}}")


def check_rules(override: Any, settings: Settings) -> dict[str, Any]:
    """A partial rule set (``workers.rules``, e.g. ``{"level": {"max_db": 70}}``) that
    validates over the defaults; HTTPException 422 naming the field otherwise."""
    from workers import rules

    if override is None:
        return {}
    try:
        if not isinstance(override, dict):
            raise rules.RuleError("a rule set is a JSON object")
        rules.effective(rules.default_rules(settings), override)
    except rules.RuleError as exc:
        raise HTTPException(422, f"rules: {exc}") from exc
    return override


# ---- recordings -------------------------------------------------------------------------
@router.get("/recordings")
def list_recordings(settings: SettingsDep) -> dict[str, Any]:
    """Per device: recording on/off, first and last recorded time, files and bytes."""
    return {"default_enabled": settings.recording_default,
            "devices": recording(settings).summary()}


@router.get("/recordings/{device_id}")
def get_spans(device_id: DeviceId, settings: SettingsDep,
              start: Annotated[str | None, Query(description="default end-24h")] = None,
              end: Annotated[str | None, Query(description="default now")] = None,
              ) -> dict[str, Any]:
    """Contiguous recorded spans in the window, and the gaps between them."""
    a, b = _window(start, end, 86_400_000)
    rec = recording(settings)
    return {**rec.spans(device_id, a, b), "enabled": rec.enabled([device_id])[device_id],
            "start": iso(a), "end": iso(b)}


@router.put("/recordings/{device_id}")
def put_switch(device_id: DeviceId, body: SwitchIn, settings: SettingsDep) -> dict[str, Any]:
    """Turn recording on or off for one device (off: levels only, no audio kept)."""
    rec = recording(settings)
    rec.set_enabled(device_id, body.enabled)
    return {"device": device_id, "enabled": rec.enabled([device_id])[device_id]}


@router.get("/recordings/{device_id}/audio")
def get_audio(request: Request, device_id: DeviceId, settings: SettingsDep,
              start: Annotated[str | None, Query(description="default end-1min")] = None,
              end: Annotated[str | None, Query(description="default now")] = None,
              download: bool = False) -> Response:
    """A span as a 16-bit WAV (silence in gaps, listed in ``X-Soundmon-Gaps``)."""
    a, b = _window(start, end, 60_000)
    try:
        span = recording(settings).read(device_id, a, b, max_s=MAX_AUDIO_S)
    except RecordingError as exc:
        code = 404 if str(exc).startswith("nothing recorded") else 422
        raise HTTPException(code, str(exc)) from exc
    name = f"{device_id}-{iso(a).replace(':', '')}.wav"
    return audio_response(request, span.wav_bytes(), name, download,
                          {"X-Soundmon-Gaps": json.dumps([[iso(s), iso(e)] for s, e in span.gaps])})


@router.post("/recordings/{device_id}/replay", status_code=202)
async def start_replay(device_id: DeviceId, body: ReplayIn, settings: SettingsDep,
                       store: StoreDep, redis: RedisDep) -> dict[str, Any]:
    """Replay a recorded span through MQTT as ``replay-<device>``; returns a task id.

    409 for the id of a real device: the worker's MQTT account may publish as any device.
    """
    from soundmon.replay import ReplayError, default_device, refuse_live_device

    a, b = _window(body.start, body.end, 0)
    as_device = body.device or default_device(device_id)
    try:
        refuse_live_device(as_device, store.device(as_device))
    except ReplayError as exc:
        raise HTTPException(409, str(exc)) from exc
    if not recording(settings).frame_rows(device_id, a, b):
        raise HTTPException(404, f"nothing recorded for {device_id} between {iso(a)} and {iso(b)}")
    options = {"device": device_id, "start_ms": a, "end_ms": b, "speed": body.speed,
               "as_device": body.device}
    return await start_task(settings, redis, tasknames.REPLAY, [options], "replay")


@router.post("/recordings/{device_id}/analyze", status_code=202)
async def analyze_span(device_id: DeviceId, body: AnalyzeIn, settings: SettingsDep,
                       redis: RedisDep) -> dict[str, Any]:
    """Levels, statistics and the alerts ``rules`` would have raised over a recorded span."""
    a, b = _window(body.start, body.end, 0)
    rules = check_rules(body.rules, settings)
    if not recording(settings).frame_rows(device_id, a, b):
        raise HTTPException(404, f"nothing recorded for {device_id} between {iso(a)} and {iso(b)}")
    return await start_task(settings, redis, tasknames.ANALYZE_FILE,
                            [{"recording": device_id, "start_ms": a, "end_ms": b},
                             {"calibration_db": body.calibration_db, "rules": rules}],
                            "analysis")


# ---- uploads ----------------------------------------------------------------------------
def check_audio(data: bytes) -> tuple[str, int, int]:
    """(format, rate, frames) of a complete WAV or FLAC file; HTTPException 415/422 otherwise."""
    import soundfile

    if len(data) < 12:
        raise HTTPException(422, f"the body holds {len(data)} bytes: not an audio file")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        _check_riff(data)
    elif data[:4] != b"fLaC":
        raise HTTPException(415, "not a WAV or FLAC file (send the file itself as the body)")
    try:
        info = soundfile.info(io.BytesIO(data))
        decoded = soundfile.read(io.BytesIO(data), dtype="int16", always_2d=True)[0]
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise HTTPException(422, f"unreadable audio (truncated or damaged?): {exc}") from exc
    if info.format not in ("WAV", "WAVEX", "FLAC"):
        raise HTTPException(415, f"{info.format} is not WAV or FLAC")
    if decoded.shape[0] == 0:
        raise HTTPException(422, "the file holds no samples")
    if decoded.shape[0] < info.frames:
        raise HTTPException(422, f"truncated: {decoded.shape[0]} of {info.frames} samples")
    return info.format, int(info.samplerate), int(info.frames)


def _check_riff(data: bytes) -> None:
    """A WAV's RIFF and data chunk sizes must fit in the bytes received (else: truncated)."""
    riff_size = struct.unpack_from("<I", data, 4)[0]
    if riff_size + 8 > len(data):
        raise HTTPException(422, f"truncated WAV: the header announces {riff_size + 8} bytes, "
                                 f"{len(data)} arrived")
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = struct.unpack_from("<4sI", data, pos)
        if chunk == b"data":
            if pos + 8 + size > len(data):
                raise HTTPException(422, f"truncated WAV: the data chunk announces {size} bytes, "
                                         f"{len(data) - pos - 8} arrived")
            return
        pos += 8 + size + (size & 1)
    raise HTTPException(422, "WAV without a data chunk")


@router.post("/uploads", status_code=202)
async def upload(request: Request, settings: SettingsDep, redis: RedisDep,
                 name: Annotated[str | None, Query(max_length=100)] = None,
                 frame_ms: Annotated[float, Query(gt=0, le=60_000)] = 1000,
                 calibration_db: Annotated[float | None, Query(ge=-50, le=250)] = None,
                 rules: Annotated[str | None, Query(description="JSON partial rule set, e.g. "
                                                    "{\"level\":{\"max_db\":70}}")] = None,
                 ) -> dict[str, Any]:
    """Analyse a WAV or FLAC file (the request body) in the workers; returns a task id.

    The result (``GET /api/tasks/{id}``) has the per-frame levels of ``soundmon analyze``,
    the statistics, and the alerts the rules (the live ones, or ``rules``) would have raised.
    """
    limit = int(settings.upload_max_mb * 2**20)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the file is {int(declared)} bytes; the limit is {limit} "
                                 "(SOUNDMON_UPLOAD_MAX_MB)")
    try:
        overrides = check_rules(json.loads(rules) if rules else None, settings)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"rules: not JSON ({exc})") from exc
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"the file is over the limit of {limit} bytes "
                                     "(SOUNDMON_UPLOAD_MAX_MB)")
    fmt, rate, frames = check_audio(bytes(body))
    folder = settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.{'flac' if fmt == 'FLAC' else 'wav'}"
    tmp = path.with_suffix(".part")
    tmp.write_bytes(body)
    tmp.replace(path)
    try:
        started = await start_task(
            settings, redis, tasknames.ANALYZE_FILE,
            [{"upload": str(path), "name": name or "upload"},
             {"frame_ms": frame_ms, "calibration_db": calibration_db, "rules": overrides,
              "t0_ms": now_ms()}], "analysis")
    except BaseException:
        path.unlink(missing_ok=True)  # nothing stays behind a failed upload
        raise
    return {**started, "format": fmt, "rate_hz": rate, "duration_s": round(frames / rate, 3)}
