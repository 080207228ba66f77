"""``GET /api/alerts/{id}/clip``: the sound around an alert, as a WAV the browser can play.

The clip (pre-roll before the alert opened to post-roll after) is cut by the workers once the
post-roll has passed (``soundmon.clip``). Before that, or if its task was lost, it is cut from
the recording on the fly.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import Response

from dashboard.deps import Authenticated, SettingsDep, StoreDep
from dashboard.routes.recordings import audio_response, recording
from soundmon.recording import RecordingError, iso, now_ms

router = APIRouter(prefix="/api/alerts", tags=["alerts"], dependencies=[Authenticated])


@router.get("/{alert_id}/clip")
def get_clip(request: Request, alert_id: Annotated[int, Path(ge=1)], store: StoreDep,
             settings: SettingsDep, download: bool = False) -> Response:
    """The alert's clip as ``audio/wav`` (Range supported); gaps in ``X-Soundmon-Gaps``."""
    import soundfile

    from soundmon.recording import encode_audio

    alert = store.alert(alert_id)
    if alert is None:
        raise HTTPException(404, f"unknown alert {alert_id}")
    rec = recording(settings)
    clip = rec.clip(alert_id)
    start = alert.started_ms - int(settings.clip_preroll_s * 1000)
    end = alert.started_ms + int(settings.clip_postroll_s * 1000)
    if clip is not None:
        samples, rate = soundfile.read(clip["path"], dtype="int16")
        data, gaps = encode_audio(samples, rate), [tuple(g) for g in clip["gaps"]]
    else:
        try:
            span = rec.read(alert.device, start, min(end, now_ms()))
        except RecordingError as exc:
            off = not rec.enabled([alert.device])[alert.device]
            raise HTTPException(404, f"no audio for alert {alert_id}: " + (
                f"recording is off for {alert.device}" if off else str(exc))) from exc
        data, gaps = span.wav_bytes(), span.gaps
    return audio_response(request, data, f"alert-{alert_id}.wav", download, {
        "X-Soundmon-Gaps": json.dumps([[iso(a), iso(b)] for a, b in gaps]),
        "X-Soundmon-Clip": json.dumps({"start": iso(start), "end": iso(end),
                                       "final": clip is not None})})
