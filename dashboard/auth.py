"""Token checks shared by the API dependencies and the sign-in pages (pure, no FastAPI).

One shared secret, ``settings.api_token``. Programs send ``Authorization: Bearer <token>``;
browsers sign in once and then carry it in the ``soundmon_token`` cookie (HttpOnly,
SameSite=Strict). A cookie is sent by the browser on its own, so a state-changing request
authenticated only by the cookie must also carry ``X-Requested-With: soundmon``: a cross-site
form cannot set that header, which is the CSRF guard.
"""

from __future__ import annotations

import secrets
from enum import Enum

COOKIE_NAME = "soundmon_token"
CSRF_HEADER = "X-Requested-With"
CSRF_VALUE = "soundmon"
#: methods that change nothing, for which the cookie alone is enough
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: a browser sign-in lasts 30 days, or until `soundmon up` issues a new token
COOKIE_MAX_AGE_S = 30 * 24 * 3600


class AuthResult(Enum):
    OK = "ok"
    MISSING = "missing"  # no credentials at all
    INVALID = "invalid"  # a bearer token or cookie that does not match
    CSRF = "csrf"  # a valid cookie on a non-GET request without the CSRF header
    UNCONFIGURED = "unconfigured"  # the server has no token: nobody gets in


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
    expected: str | None,
    method: str,
    authorization: str | None,
    cookie: str | None,
    csrf_header: str | None,
) -> AuthResult:
    """Decide whether one request is authenticated (see the module docstring for the rules)."""
    if not expected:
        return AuthResult.UNCONFIGURED
    if authorization is not None:
        return AuthResult.OK if token_matches(expected, bearer_token(authorization)) \
            else AuthResult.INVALID
    if cookie is None:
        return AuthResult.MISSING
    if not token_matches(expected, cookie):
        return AuthResult.INVALID
    if method.upper() not in SAFE_METHODS and csrf_header != CSRF_VALUE:
        return AuthResult.CSRF
    return AuthResult.OK
