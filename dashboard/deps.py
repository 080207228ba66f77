"""FastAPI dependencies, published as ``Annotated`` aliases for the routes.

The app keeps its settings, store, Redis client, event hub and health checks on
``app.state`` (see ``dashboard.app.create_app``); these functions hand them to the routes.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, status

from dashboard.auth import COOKIE_NAME, CSRF_HEADER, CSRF_VALUE, AuthResult, check_request
from dashboard.health import Health
from dashboard.hub import EventHub
from soundmon.protocol import DEVICE_ID
from soundmon.settings import Settings
from soundmon.store import SQLiteStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> SQLiteStore:
    return request.app.state.store


def get_redis(request: Request) -> Any:
    return request.app.state.redis


def get_hub(request: Request) -> EventHub:
    return request.app.state.hub


def get_health(request: Request) -> Health:
    return request.app.state.health


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[SQLiteStore, Depends(get_store)]
RedisDep = Annotated[Any, Depends(get_redis)]
HubDep = Annotated[EventHub, Depends(get_hub)]
HealthDep = Annotated[Health, Depends(get_health)]

#: a device id in a path (protocol.md section 1); anything else is a 422
DeviceId = Annotated[
    str,
    Path(pattern=DEVICE_ID.pattern, description="device id, " + DEVICE_ID.pattern),
]

_BEARER = {"WWW-Authenticate": "Bearer"}
_REFUSALS = {
    AuthResult.MISSING: (
        status.HTTP_401_UNAUTHORIZED,
        "not signed in: send 'Authorization: Bearer <SOUNDMON_API_TOKEN>'",
    ),
    AuthResult.INVALID: (status.HTTP_401_UNAUTHORIZED, "invalid API token"),
    AuthResult.UNCONFIGURED: (
        status.HTTP_401_UNAUTHORIZED,
        "the server has no API token configured (set SOUNDMON_API_TOKEN); nobody can sign in",
    ),
    AuthResult.CSRF: (
        status.HTTP_403_FORBIDDEN,
        f"a cookie-authenticated {{method}} needs the header '{CSRF_HEADER}: {CSRF_VALUE}' "
        "(CSRF guard), or use 'Authorization: Bearer <token>'",
    ),
}


def require_token(request: Request, settings: SettingsDep) -> None:
    """Bearer header on any request, or the sign-in cookie (plus the CSRF header off GET)."""
    result = check_request(
        settings.api_token,
        request.method,
        request.headers.get("authorization"),
        request.cookies.get(COOKIE_NAME),
        request.headers.get(CSRF_HEADER),
    )
    if result is AuthResult.OK:
        return
    code, detail = _REFUSALS[result]
    headers = _BEARER if code == status.HTTP_401_UNAUTHORIZED else None
    raise HTTPException(code, detail.format(method=request.method), headers=headers)


Authenticated = Depends(require_token)
