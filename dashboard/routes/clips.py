"""``GET /api/alerts/{id}/clip``: the sound around an alert, as a WAV the browser can play.

The clip runs from the pre-roll before the alert opened to the post-roll after it resolved
(``soundmon.recording.clip_window``, at most ``SOUNDMON_CLIP_MAX_S``). The workers cut it
when the alert opens (the beginning) and again, whole, when it resolves (``soundmon.clip``).
Until that final clip is there (an unresolved alert, a clip task not run yet or lost), it is
cut from the recording on the fly, up to now.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import Response

from dashboard.deps import Authenticated, SettingsDep, StoreDep
from dashboard.routes.recordings import audio_response, recording
from soundmon.recording import RecordingError, clip_window, iso, now_ms

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
    start, end = clip_window(alert.started_ms, alert.ended_ms, alert.last_out_ms,
                             int(settings.clip_preroll_s * 1000),
                             int(settings.clip_postroll_s * 1000), int(settings.clip_max_s * 1000))
    final = (clip is not None and alert.ended_ms is not None and clip["start_ms"] <= start
             and clip["end_ms"] >= end)
    data = None
    if not final:
        try:
            span = rec.read(alert.device, start, min(end, now_ms()))
            data, gaps = span.wav_bytes(), span.gaps
        except RecordingError as exc:
            if clip is None:
                off = not rec.enabled([alert.device])[alert.device]
                raise HTTPException(404, f"no audio for alert {alert_id}: " + (
                    f"recording is off for {alert.device}" if off else str(exc))) from exc
    if data is None:  # the final clip, or the recording around it is gone: the clip cut before
        assert clip is not None
        samples, rate = soundfile.read(clip["path"], dtype="int16")
        data, gaps = encode_audio(samples, rate), [tuple(g) for g in clip["gaps"]]
        start, end = clip["start_ms"], clip["end_ms"]
    return audio_response(request, data, f"alert-{alert_id}.wav", download, {
        "X-Soundmon-Gaps": json.dumps([[iso(a), iso(b)] for a, b in gaps]),
        "X-Soundmon-Clip": json.dumps({"start": iso(start), "end": iso(min(end, now_ms())),
                                       "final": final})})
