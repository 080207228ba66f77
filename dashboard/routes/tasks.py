"""``GET /api/tasks/{id}``: state, progress and result of long work the workers do.

Any route that starts a Celery task with a result (``ignore_result=False``) hands its id to
``start_task``, which sends it and remembers the id in Redis (so an unknown id is a 404, not
Celery's eternal ``PENDING``). The task reports progress with
``update_state(state="PROGRESS", meta={"progress": 0..1, "stage": "..."})``.
"""

from __future__ import annotations

import asyncio
import json
from functools import lru_cache
from typing import Annotated, Any

from celery import Celery
from celery.result import AsyncResult
from fastapi import APIRouter, HTTPException, Path

from dashboard.deps import Authenticated, RedisDep, SettingsDep
from soundmon.celeryconf import make_celery
from soundmon.settings import Settings

router = APIRouter(prefix="/api/tasks", tags=["tasks"], dependencies=[Authenticated])

KEY = "soundmon:task:"
#: how long an id is known: as long as Celery keeps the result (celeryconf result_expires)
REMEMBER_S = 3600

STATES = {"PENDING": "queued", "RECEIVED": "queued", "STARTED": "running",
          "PROGRESS": "running", "RETRY": "running", "SUCCESS": "done", "FAILURE": "failed",
          "REVOKED": "failed"}


@lru_cache(maxsize=4)
def _celery(broker_url: str, redis_url: str) -> Celery:
    return make_celery(Settings(broker_url=broker_url, redis_url=redis_url), "dashboard")


def celery_app(settings: Settings) -> Celery:
    """A producer-side Celery app on the settings' broker and result backend."""
    return _celery(settings.broker_url, settings.redis_url)


async def start_task(settings: Settings, redis: Any, name: str, args: list[Any],
                     kind: str) -> dict[str, Any]:
    """Send task ``name`` and remember its id; returns ``{"task_id", "kind", "status_url"}``.

    Raises HTTPException 503 when the Celery broker does not take it.
    """
    app = celery_app(settings)
    try:
        result = await asyncio.to_thread(app.send_task, name, args=args,
                                         ignore_result=False)
    except Exception as exc:  # kombu raises its own OperationalError family
        raise HTTPException(503, f"the task queue is not reachable: {exc}") from exc
    await redis.set(KEY + result.id, json.dumps({"kind": kind}), ex=REMEMBER_S)
    return {"task_id": result.id, "kind": kind, "status_url": f"/api/tasks/{result.id}"}


def _describe(app: Celery, task_id: str) -> dict[str, Any]:
    res = AsyncResult(task_id, app=app)
    raw = res.state
    out: dict[str, Any] = {"state": STATES.get(raw, raw.lower()), "celery_state": raw,
                           "progress": None, "stage": None, "result": None, "error": None}
    if raw == "PROGRESS" and isinstance(res.info, dict):
        out["progress"], out["stage"] = res.info.get("progress"), res.info.get("stage")
    elif raw == "SUCCESS":
        out["progress"], out["result"] = 1.0, res.result
    elif raw in ("FAILURE", "REVOKED"):
        out["error"] = f"{type(res.result).__name__}: {res.result}"
    elif raw in ("PENDING", "RECEIVED"):
        out["progress"] = 0.0
    return out


@router.get("/{task_id}")
async def get_task(task_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9-]{1,64}$")],
                   settings: SettingsDep, redis: RedisDep) -> dict[str, Any]:
    """``state``: queued, running, done or failed; ``progress`` 0..1; ``result`` when done."""
    known = await redis.get(KEY + task_id)
    if known is None:
        raise HTTPException(404, f"unknown task {task_id!r} (ids are kept for "
                                 f"{REMEMBER_S // 60} min)")
    info = await asyncio.to_thread(_describe, celery_app(settings), task_id)
    return {"id": task_id, "kind": json.loads(known).get("kind"), **info}
