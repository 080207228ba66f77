"""The live page and the browser sign-in: ``GET /``, ``GET /?token=``, ``POST /login``.

A valid token, from the query or the sign-in form, becomes the HttpOnly ``soundmon_token``
cookie and a redirect to ``/``, so the token leaves the address bar and the history.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dashboard.auth import COOKIE_MAX_AGE_S, COOKIE_NAME, AuthResult, check_request, token_matches
from dashboard.deps import SettingsDep

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_NO_STORE = {"Cache-Control": "no-store"}
#: the page loads only its own files: no CDN, no inline script, never framed
_PAGE_HEADERS = {
    **_NO_STORE,
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
}
MAX_FORM_BYTES = 4096


def _signin(message: str = "", status_code: int = 200) -> HTMLResponse:
    page = (STATIC_DIR / "signin.html").read_text(encoding="utf-8")
    note = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return HTMLResponse(page.replace("{{MESSAGE}}", note), status_code, headers=_PAGE_HEADERS)


def _signed_in(request: Request, token: str) -> RedirectResponse:
    response = RedirectResponse("/", status_code=303, headers=_NO_STORE)
    response.set_cookie(
        COOKIE_NAME, token, max_age=COOKIE_MAX_AGE_S, path="/", httponly=True,
        samesite="strict", secure=request.url.scheme == "https",
    )
    return response


@router.get("/", response_model=None)
def index(request: Request, settings: SettingsDep, token: str | None = None) -> Response:
    """The live page when signed in, else the sign-in page; ``?token=`` signs in."""
    if token is not None:
        if token_matches(settings.api_token, token):
            return _signed_in(request, token)
        return _signin("That token is not valid.", 401)
    result = check_request(
        settings.api_token, "GET", request.headers.get("authorization"),
        request.cookies.get(COOKIE_NAME), None,
    )
    if result is AuthResult.OK:
        page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        page = page.replace("{{LEVEL_MIN_DB}}", f"{settings.level_min_db:g}")
        page = page.replace("{{LEVEL_MAX_DB}}", f"{settings.level_max_db:g}")
        return HTMLResponse(page, headers=_PAGE_HEADERS)
    if result is AuthResult.INVALID:
        return _signin("Your sign-in is no longer valid (the token changed). Sign in again.")
    if result is AuthResult.UNCONFIGURED:
        return _signin("This server has no API token configured, so nobody can sign in.", 503)
    return _signin()


@router.post("/login", response_model=None)
async def login(request: Request, settings: SettingsDep) -> Response:
    """The sign-in form: a right token sets the cookie and goes to ``/``; a wrong one is a 401."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return _signin("The form is too large.", 413)
    token = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0].strip()
    if token_matches(settings.api_token, token):
        return _signed_in(request, token)
    return _signin("Wrong token. Paste the value of SOUNDMON_API_TOKEN.", 401)
