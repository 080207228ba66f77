"""Who may call the API: the rules, as pure functions (no FastAPI, no database).

Two kinds of credentials:

* **Bearer token** for programs: ``Authorization: Bearer <SOUNDMON_API_TOKEN>``. A request
  that carries an ``Authorization`` header is judged by it alone.
* **Session cookie** for browsers: signing in with a user and password (``soundmon.users``)
  sets ``soundmon_session`` (HttpOnly, SameSite=Strict). A cookie is sent by the browser on its
  own, so a state-changing request authenticated only by the cookie must also carry the
  session's CSRF token in ``X-CSRF-Token`` (the page reads it from a ``<meta>`` tag); a
  cross-site page can neither read that token nor set the header.
"""

from __future__ import annotations

import secrets
from enum import Enum

SESSION_COOKIE = "soundmon_session"
CSRF_HEADER = "X-CSRF-Token"
#: methods that change nothing, for which the cookie alone is enough
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class AuthResult(Enum):
    OK = "ok"
    MISSING = "missing"  # no credentials at all
    INVALID = "invalid"  # a bearer token that does not match
    EXPIRED = "expired"  # a session cookie that is unknown, expired or signed out
    CSRF = "csrf"  # a valid session on a non-GET request without its CSRF token
    UNCONFIGURED = "unconfigured"  # a bearer token, but the server has none configured


def token_matches(expected: str | None, presented: str | None) -> bool:
    """Constant-time comparison; an unset expected token matches nothing."""
    if not expected or not presented:
        return False
    return secrets.compare_digest(expected.encode(), presented.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def check_request(
    expected_token: str | None,
    method: str,
    authorization: str | None,
    has_cookie: bool,
    session_csrf: str | None,
    csrf_header: str | None,
) -> AuthResult:
    """Decide whether one request is authenticated (see the module docstring for the rules).

    ``session_csrf`` is the CSRF token of the live session the cookie names, or None when
    there is no cookie or it names no live session.
    """
    if authorization is not None:
        if not expected_token:
            return AuthResult.UNCONFIGURED
        return AuthResult.OK if token_matches(expected_token, bearer_token(authorization)) \
            else AuthResult.INVALID
    if not has_cookie:
        return AuthResult.MISSING
    if session_csrf is None:
        return AuthResult.EXPIRED
    if method.upper() not in SAFE_METHODS and not token_matches(session_csrf, csrf_header):
        return AuthResult.CSRF
    return AuthResult.OK
