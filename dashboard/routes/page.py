"""The page and the browser sign-in: ``GET /``, ``POST /login``, ``POST /logout``.

``/`` serves the dashboard to a signed-in browser and the sign-in form to everyone else. A
right user name and password start a session (``soundmon.users``): an HttpOnly, SameSite=Strict
``soundmon_session`` cookie, and a CSRF token written into the page for its API calls.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dashboard.auth import SESSION_COOKIE, token_matches
from dashboard.deps import SettingsDep, UsersDep, current_session
from soundmon.settings import Settings
from soundmon.users import SESSION_MAX_AGE_S, Session

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_NO_STORE = {"Cache-Control": "no-store"}
#: the page loads only its own files: no CDN, no inline script, never framed
_PAGE_HEADERS = {
    **_NO_STORE,
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
MAX_FORM_BYTES = 4096


def _signin(message: str = "", status_code: int = 200, user: str = "") -> HTMLResponse:
    page = (STATIC_DIR / "signin.html").read_text(encoding="utf-8")
    note = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    page = page.replace("{{MESSAGE}}", note).replace("{{USER}}", html.escape(user, quote=True))
    return HTMLResponse(page, status_code, headers=_PAGE_HEADERS)


def _dashboard(settings: Settings, session: Session) -> HTMLResponse:
    values = {
        "CSRF": session.csrf,
        "USER": session.user,
        "LEVEL_MIN_DB": f"{settings.level_min_db:g}",
        "LEVEL_MAX_DB": f"{settings.level_max_db:g}",
        "FREQ_MIN_HZ": f"{settings.freq_min_hz:g}",
        "FREQ_MAX_HZ": f"{settings.freq_max_hz:g}",
        "FLOWER_URL": settings.flower_url or "",
    }
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    for key, value in values.items():
        page = page.replace("{{" + key + "}}", html.escape(value, quote=True))
    return HTMLResponse(page, headers=_PAGE_HEADERS)


async def _form(request: Request) -> dict[str, str] | None:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return None
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def _same_origin(request: Request) -> bool:
    """A form post from another site names it in Origin; browsers always send it on POST."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host")


@router.get("/", response_model=None)
def index(request: Request, settings: SettingsDep, users: UsersDep) -> Response:
    """The dashboard when signed in, else the sign-in page."""
    session = current_session(request, users)
    if session is not None:
        return _dashboard(settings, session)
    if SESSION_COOKIE in request.cookies:
        return _signin("Your session has ended. Sign in again.")
    return _signin()


@router.post("/login", response_model=None)
async def login(request: Request, users: UsersDep) -> Response:
    """The sign-in form: the right password sets the session cookie and goes to ``/``."""
    if not _same_origin(request):
        return _signin("Sign in from this server's own page.", 403)
    form = await _form(request)
    if form is None:
        return _signin("The form is too large.", 413)
    name, password = form.get("user", "").strip(), form.get("password", "")
    if not name or not users.verify(name, password):
        return _signin("Wrong user name or password.", 401, user=name)
    token, _ = users.start_session(name)
    response = RedirectResponse("/", status_code=303, headers=_NO_STORE)
    response.set_cookie(
        SESSION_COOKIE, token, max_age=SESSION_MAX_AGE_S, path="/", httponly=True,
        samesite="strict", secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout", response_model=None)
async def logout(request: Request, users: UsersDep) -> Response:
    """Sign out: needs the session's CSRF token in the form, ends the session, back to ``/``."""
    session = current_session(request, users)
    form = await _form(request) or {}
    if session is not None and not token_matches(session.csrf, form.get("csrf")):
        return _signin("Sign out from the page's own button.", 403)
    users.end_session(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/", status_code=303, headers=_NO_STORE)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response
