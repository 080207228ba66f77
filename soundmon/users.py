"""Dashboard accounts and browser sessions, kept in the same SQLite file as the levels.

* Passwords are stored as argon2id hashes (``argon2-cffi``'s ``PasswordHasher`` defaults);
  a hash made with older parameters is upgraded at the next successful sign-in.
* A browser session is a random token in an HttpOnly cookie. The database keeps only the
  token's SHA-256, the user, a CSRF token (which the page sends back in ``X-CSRF-Token`` on
  every change) and the expiry. Signing out, removing the user or changing the password ends
  the sessions.
* ``soundmon up`` calls :func:`ensure_admin` so a fresh install has one account: ``admin`` with a
  random password saved in ``<data>/admin-password`` (mode 600), printed with the URL.

``soundmon user add NAME --password P`` / ``user list`` / ``user remove NAME`` manage accounts.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import click
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

#: user names: letters, digits and ._- (they appear in logs and URLs), 1-64 characters
USER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MIN_PASSWORD_LEN = 8
#: a browser session lasts 30 days from sign-in
SESSION_MAX_AGE_S = 30 * 24 * 3600
ADMIN_NAME = "admin"
ADMIN_PASSWORD_FILE = "admin-password"

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, hash TEXT NOT NULL, created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY, user TEXT NOT NULL, csrf TEXT NOT NULL,
    created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user);
"""

_hasher = PasswordHasher()
#: verified against when the user does not exist, so both cases take the same time
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class UserError(ValueError):
    """A bad user name or password, or a user that exists already / does not exist."""


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    csrf: str
    expires_ms: int


def _now_ms() -> int:
    return int(time.time() * 1000)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    if not USER_NAME.match(name or ""):
        raise UserError(f"user name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def check_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD_LEN:
        raise UserError(f"the password needs at least {MIN_PASSWORD_LEN} characters")
    return password


class UserStore:
    """Users and sessions in ``path`` (the soundmon SQLite file); one connection per call."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0)
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def _run(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        db = self._db()
        try:
            with db:  # commits, or rolls back on error
                return db.execute(sql, args)
        finally:
            db.close()

    def _one(self, sql: str, args: tuple = ()) -> tuple | None:
        db = self._db()
        try:
            return db.execute(sql, args).fetchone()
        finally:
            db.close()

    # ---- users ------------------------------------------------------------------------------
    def add(self, name: str, password: str, replace: bool = False) -> bool:
        """Create the user (or, with ``replace``, set a new password); True if it was new."""
        check_name(name)
        hashed = _hasher.hash(check_password(password))
        exists = self._one("SELECT 1 FROM users WHERE name=?", (name,)) is not None
        if exists and not replace:
            raise UserError(f"user {name!r} exists already (use --replace to set a new password)")
        self._run("INSERT INTO users (name, hash, created_ms) VALUES (?,?,?) "
                  "ON CONFLICT(name) DO UPDATE SET hash=excluded.hash", (name, hashed, _now_ms()))
        if exists:
            self._run("DELETE FROM sessions WHERE user=?", (name,))  # new password: sign out
        return not exists

    def remove(self, name: str) -> bool:
        removed = self._run("DELETE FROM users WHERE name=?", (name,)).rowcount > 0
        self._run("DELETE FROM sessions WHERE user=?", (name,))
        return removed

    def names(self) -> list[str]:
        db = self._db()
        try:
            return [r[0] for r in db.execute("SELECT name FROM users ORDER BY name")]
        finally:
            db.close()

    def verify(self, name: str, password: str) -> bool:
        """True if the password is the user's; unknown users cost the same time."""
        row = self._one("SELECT hash FROM users WHERE name=?", (name,))
        hashed = row[0] if row else _DUMMY_HASH
        try:
            _hasher.verify(hashed, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        if row is None:
            return False
        if _hasher.check_needs_rehash(hashed):
            self._run("UPDATE users SET hash=? WHERE name=?", (_hasher.hash(password), name))
        return True

    # ---- sessions ---------------------------------------------------------------------------
    def start_session(self, name: str) -> tuple[str, Session]:
        """A new session for a verified user: (cookie token, session)."""
        token = secrets.token_urlsafe(32)
        now = _now_ms()
        session = Session(name, secrets.token_urlsafe(24), now + SESSION_MAX_AGE_S * 1000)
        self._run("DELETE FROM sessions WHERE expires_ms < ?", (now,))
        self._run("INSERT INTO sessions (token_sha256, user, csrf, created_ms, expires_ms) "
                  "VALUES (?,?,?,?,?)", (_digest(token), name, session.csrf, now, session.expires_ms))
        return token, session

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie token, else None (expired, signed out, user removed)."""
        if not token or len(token) > 256:
            return None
        row = self._one(
            "SELECT s.user, s.csrf, s.expires_ms FROM sessions s JOIN users u ON u.name = s.user "
            "WHERE s.token_sha256=?", (_digest(token),))
        if row is None or row[2] < _now_ms():
            return None
        return Session(*row)

    def end_session(self, token: str | None) -> None:
        if token:
            self._run("DELETE FROM sessions WHERE token_sha256=?", (_digest(token),))


def ensure_admin(data_dir: Path, db_path: Path) -> tuple[str, str | None]:
    """Make sure someone can sign in: with no users at all, create ``admin`` with a random
    password saved in ``<data>/admin-password``. Returns (admin name, password or None),
    the password while that file exists (delete it once you have noted or changed it)."""
    users = UserStore(db_path)
    path = data_dir / ADMIN_PASSWORD_FILE
    if not users.names():
        password = secrets.token_urlsafe(12)
        users.add(ADMIN_NAME, password)
        path.write_text(password + "\n")
        path.chmod(0o600)
    password_now = path.read_text().strip() if path.exists() else None
    if password_now is not None and not users.verify(ADMIN_NAME, password_now):
        password_now = None  # changed since: the file is stale
    return ADMIN_NAME, password_now


# ---- the `soundmon user` command -------------------------------------------------------------
def _users(data_dir: Path | None) -> tuple[UserStore, Path]:
    from soundmon.settings import get_settings

    settings = get_settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return UserStore(settings.db_path), settings.data_dir


_DATA = click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
                     default=None, help="Data directory holding soundmon.db [default: SOUNDMON_DATA].")


@click.group("user")
def user_command() -> None:
    """Dashboard accounts: add, list, remove."""


@user_command.command("add")
@click.argument("name")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
              help=f"At least {MIN_PASSWORD_LEN} characters (asked for when left out).")
@click.option("--replace", is_flag=True, help="Set a new password for an existing user.")
@_DATA
def user_add(name: str, password: str, replace: bool, data_dir: Path | None) -> None:
    """Create a user who can sign in to the dashboard (or change a password with --replace)."""
    users, data = _users(data_dir)
    try:
        new = users.add(name, password, replace=replace)
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc
    if name == ADMIN_NAME and not new:
        (data / ADMIN_PASSWORD_FILE).unlink(missing_ok=True)  # no longer the printed one
    click.echo(f"user {name!r} {'created' if new else 'has a new password (signed out everywhere)'}")


@user_command.command("list")
@_DATA
def user_list(data_dir: Path | None) -> None:
    """Print every user name."""
    for name in _users(data_dir)[0].names():
        click.echo(name)


@user_command.command("remove")
@click.argument("name")
@_DATA
def user_remove(name: str, data_dir: Path | None) -> None:
    """Delete a user and end their sessions."""
    if not _users(data_dir)[0].remove(name):
        raise click.ClickException(f"no user {name!r}")
    click.echo(f"user {name!r} removed")
