"""FastAPI dependencies, published as ``Annotated`` aliases for the routes.

The app keeps its settings, store, Redis client, event hub and health checks on
``app.state`` (see ``dashboard.app.create_app``); these functions hand them to the routes.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, status

from dashboard.auth import CSRF_HEADER, SESSION_COOKIE, AuthResult, check_request
from dashboard.health import Health
from dashboard.hub import EventHub
from soundmon.protocol import DEVICE_ID
from soundmon.settings import Settings
from soundmon.store import SQLiteStore
from soundmon.users import Session, UserStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> SQLiteStore:
    return request.app.state.store


def get_redis(request: Request) -> Any:
    return request.app.state.redis


def get_users(request: Request) -> UserStore:
    return request.app.state.users


def get_hub(request: Request) -> EventHub:
    return request.app.state.hub


def get_health(request: Request) -> Health:
    return request.app.state.health


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[SQLiteStore, Depends(get_store)]
RedisDep = Annotated[Any, Depends(get_redis)]
HubDep = Annotated[EventHub, Depends(get_hub)]
UsersDep = Annotated[UserStore, Depends(get_users)]
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
        "not signed in: sign in on the page, or send 'Authorization: Bearer <SOUNDMON_API_TOKEN>'",
    ),
    AuthResult.INVALID: (status.HTTP_401_UNAUTHORIZED, "invalid API token"),
    AuthResult.EXPIRED: (
        status.HTTP_401_UNAUTHORIZED, "your session has ended (expired or signed out): sign in again",
    ),
    AuthResult.UNCONFIGURED: (
        status.HTTP_401_UNAUTHORIZED,
        "the server has no API token configured (set SOUNDMON_API_TOKEN); bearer tokens are refused",
    ),
    AuthResult.CSRF: (
        status.HTTP_403_FORBIDDEN,
        f"a cookie-authenticated {{method}} needs the session's CSRF token in the header "
        f"'{CSRF_HEADER}' (CSRF guard), or use 'Authorization: Bearer <token>'",
    ),
}


def current_session(request: Request, users: UserStore) -> Session | None:
    """The live session named by the request's cookie, if any (looked up once per request)."""
    if not hasattr(request.state, "session"):
        request.state.session = users.session(request.cookies.get(SESSION_COOKIE))
    return request.state.session


def require_auth(request: Request, settings: SettingsDep, users: UsersDep) -> None:
    """Bearer token on any request, or a session cookie (plus its CSRF token off GET).

    Sets ``request.state.user``: the signed-in user, or ``None`` for the API token.
    """
    authorization = request.headers.get("authorization")
    session = None if authorization is not None else current_session(request, users)
    result = check_request(
        settings.api_token,
        request.method,
        authorization,
        SESSION_COOKIE in request.cookies,
        session.csrf if session else None,
        request.headers.get(CSRF_HEADER),
    )
    if result is AuthResult.OK:
        request.state.user = session.user if session else None
        return
    code, detail = _REFUSALS[result]
    headers = _BEARER if code == status.HTTP_401_UNAUTHORIZED else None
    raise HTTPException(code, detail.format(method=request.method), headers=headers)


#: the dependency every route except health and the sign-in flow uses
Authenticated = Depends(require_auth)
