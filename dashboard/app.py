"""The soundmon API and live page: ``create_app`` wires settings, store and Redis together.

Routes live in ``dashboard.routes``; dependencies in ``dashboard.deps``. Every route needs a
signed-in session or the API token (``dashboard.auth``) except ``GET /api/health``, the
sign-in flow (``/``, ``/login``, ``/logout``) and the page's static files.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from dashboard.deps import Authenticated
from dashboard.health import Health
from dashboard.hub import EventHub
from dashboard.routes import (
    alerts,
    clips,
    device_settings,
    devices,
    export,
    gateway,
    health,
    history,
    page,
    recordings,
    stream,
    tasks,
)
from dashboard.routes import channels as channel_routes
from dashboard.routes import rules as rule_routes
from dashboard.routes.page import STATIC_DIR
from soundmon import __version__
from soundmon.settings import Settings, get_settings
from soundmon.store import SQLiteStore, open_store
from soundmon.users import UserStore

#: uPlot, installed from npm by `make install` (package-lock.json pins it); served, never a CDN
UPLOT_DIR = Path(__file__).resolve().parent.parent / "node_modules" / "uplot" / "dist"


def create_app(
    settings: Settings | None = None,
    store: SQLiteStore | None = None,
    redis_client: Any = None,
) -> FastAPI:
    """Build the app. ``store`` defaults to the SQLite file under the data directory and
    ``redis_client`` (a ``redis.asyncio.Redis``) to one on ``settings.redis_url``."""
    settings = settings or get_settings()
    store = store or open_store(settings)  # SOUNDMON_STORE: sqlite or influxdb
    owns_redis = redis_client is None
    if redis_client is None:
        redis_client = redis.asyncio.Redis.from_url(
            settings.redis_url, decode_responses=True,
            socket_connect_timeout=1.0, socket_timeout=5.0,  # pub/sub reads block regardless
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await app.state.hub.stop()
            if owns_redis:
                await redis_client.aclose()

    app = FastAPI(
        title="soundmon", version=__version__, lifespan=lifespan,
        docs_url=None, redoc_url=None, openapi_url=None,  # served below, behind the token
    )
    app.state.settings = settings
    app.state.store = store
    app.state.users = UserStore(settings.db_path)
    app.state.redis = redis_client
    app.state.hub = EventHub(redis_client)
    app.state.health = Health(settings, store, redis_client)

    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    for module in (health, devices, alerts, gateway, stream, page):
        app.include_router(module.router)
    for module in (history, device_settings, export):
        app.include_router(module.router)
    for module in (recordings, clips, tasks):  # docs/recording.md
        app.include_router(module.router)
    for module in (rule_routes, channel_routes):  # docs/alerts.md, docs/notifications.md
        app.include_router(module.router)
    if UPLOT_DIR.is_dir():  # else the page shows numbers without charts, and says why
        app.mount("/vendor/uplot", StaticFiles(directory=UPLOT_DIR), name="uplot")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/openapi.json", include_in_schema=False, dependencies=[Authenticated])
    def openapi() -> dict[str, Any]:
        return app.openapi()

    return app


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with ``detail`` as one readable sentence (and FastAPI's usual list as ``errors``)."""
    errors = exc.errors()
    parts = []
    for err in errors:
        where, *path = [str(p) for p in err.get("loc", ())] or ["request"]
        name = ".".join(path) or where
        parts.append(f"{name} ({where}): {err.get('msg', 'invalid')}")
    return JSONResponse(
        status_code=422,
        content={"detail": "; ".join(parts), "errors": _json_safe(jsonable_encoder(errors))},
    )


def _json_safe(value: Any) -> Any:
    """NaN and infinities (a body may carry them: Python's json accepts them) as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value
