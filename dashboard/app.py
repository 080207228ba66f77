"""The soundmon API and live page: ``create_app`` wires settings, store and Redis together.

Routes live in ``dashboard.routes``; dependencies in ``dashboard.deps``. Every route needs the
API token except ``GET /api/health``, the sign-in flow (``/``, ``/login``) and ``/static``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
from dashboard.routes import alerts, devices, gateway, health, page, stream
from dashboard.routes.page import STATIC_DIR
from soundmon import __version__
from soundmon.settings import Settings, get_settings
from soundmon.store import SQLiteStore


def create_app(
    settings: Settings | None = None,
    store: SQLiteStore | None = None,
    redis_client: Any = None,
) -> FastAPI:
    """Build the app. ``store`` defaults to the SQLite file under the data directory and
    ``redis_client`` (a ``redis.asyncio.Redis``) to one on ``settings.redis_url``."""
    settings = settings or get_settings()
    store = store or SQLiteStore(settings.db_path)
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
    app.state.redis = redis_client
    app.state.hub = EventHub(redis_client)
    app.state.health = Health(settings, store, redis_client)

    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    for module in (health, devices, alerts, gateway, stream, page):
        app.include_router(module.router)
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
