"""Broker accounts: one per device, a few for soundmon's own services, and the ACL that binds them.

Mosquitto reads two files that ``soundmon up`` points it at (``DATA/mosquitto/passwd`` and
``DATA/mosquitto/acl``). A device's username is its device id, and the ACL lets a user
write only ``{prefix}/v1/{its username}/frame|status`` and read only its own ``config``
(mosquitto substitutes ``%u``, the authenticated username, never the self-chosen client
id). Service accounts have names no device id can take (they contain a dot):

- ``svc.gateway`` reads every frame and status;
- ``svc.workers`` publishes alerts;
- ``svc.replay`` publishes frames and status as any device, never reads: the recording
  worker's account for replays started from the dashboard or the API (docs/recording.md).
  It is as powerful as a forged device and lives only in the backend, like ``svc.admin``;
  the replay task refuses the id of a device that announced real firmware;
- ``svc.admin`` reads and writes everything under the prefix (operators, tests).

Passwords are random, stored only as mosquitto's PBKDF2-SHA512 hashes (the ``$7$`` format
of ``mosquitto_passwd``); a device's password is printed once by ``soundmon provision``.
The service passwords live in ``DATA/mosquitto/services.json`` (mode 0600) so that
``soundmon up`` can hand them to its processes. After a change, a running broker started
by ``soundmon up`` is sent SIGHUP, which makes it reload both files without a restart.

Errors: ``ProvisionError`` (a bad device id).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

import click

from soundmon.protocol import DEFAULT_PREFIX, DEVICE_ID

SERVICES = ("svc.gateway", "svc.workers", "svc.replay", "svc.admin")
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes ($7$101$...); its default
SALT_BYTES = 12


class ProvisionError(ValueError):
    """A device id that protocol.md does not allow."""


@dataclass(frozen=True)
class AuthFiles:
    """Where the broker's accounts live inside a soundmon data directory."""

    data_dir: Path

    @property
    def dir(self) -> Path:
        return self.data_dir / "mosquitto"

    @property
    def passwd(self) -> Path:
        return self.dir / "passwd"

    @property
    def acl(self) -> Path:
        return self.dir / "acl"

    @property
    def services(self) -> Path:
        return self.dir / "services.json"


def password_hash(password: str, salt: bytes | None = None) -> str:
    """A mosquitto 2.0 password-file hash: ``$7$101$<salt b64>$<PBKDF2-SHA512 b64>``."""
    salt = salt or secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return (f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def acl_text(prefix: str = DEFAULT_PREFIX) -> str:
    return f"""# mosquitto ACL written by soundmon (soundmon provision); do not edit by hand
# services: names with a dot, which no device id can have
user svc.gateway
topic read {prefix}/v1/+/frame
topic read {prefix}/v1/+/status

user svc.workers
topic write {prefix}/v1/+/alert

# replays run by the recording worker: frames and status of any device id, nothing to read
user svc.replay
topic write {prefix}/v1/+/frame
topic write {prefix}/v1/+/status

user svc.admin
topic readwrite {prefix}/#

# devices: the username is the device id; each reaches only its own topics
pattern write {prefix}/v1/%u/frame
pattern write {prefix}/v1/%u/status
pattern read {prefix}/v1/%u/config
"""


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # a reload never sees half a file


def _read_passwd(files: AuthFiles) -> dict[str, str]:
    if not files.passwd.exists():
        return {}
    users = {}
    for line in files.passwd.read_text().splitlines():
        if ":" in line:
            user, hashed = line.split(":", 1)
            users[user] = hashed
    return users


def _write_passwd(files: AuthFiles, users: dict[str, str]) -> None:
    _write_private(files.passwd, "".join(f"{u}:{h}\n" for u, h in users.items()))


def ensure_auth(data_dir: Path, prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """Create the password file, ACL and service accounts if missing; return service passwords."""
    files = AuthFiles(data_dir)
    files.dir.mkdir(parents=True, exist_ok=True)
    services: dict[str, str] = {}
    if files.services.exists():
        services = json.loads(files.services.read_text())
    users = _read_passwd(files)
    changed = False
    for name in SERVICES:
        if name not in services or name not in users:
            services[name] = secrets.token_urlsafe(24)
            users[name] = password_hash(services[name])
            changed = True
    if changed or not files.passwd.exists():
        _write_private(files.services, json.dumps(services, indent=1) + "\n")
        _write_passwd(files, users)
    acl = acl_text(prefix)
    if not files.acl.exists() or files.acl.read_text() != acl:
        _write_private(files.acl, acl)
    return services


def reload_broker(data_dir: Path) -> bool:
    """SIGHUP the mosquitto that ``soundmon up`` started on this data directory, if running."""
    pid_file = data_dir / "run" / "mosquitto.pid"
    try:
        pid = int(pid_file.read_text())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return False
    if comm != "mosquitto":
        return False  # a stale pid file: the number belongs to someone else now
    os.kill(pid, signal.SIGHUP)
    return True


def provision(device: str, data_dir: Path, prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """Create (or replace) the broker account of ``device``; return its credentials."""
    if not DEVICE_ID.match(device):
        raise ProvisionError(f"{device!r} is not a device id ({DEVICE_ID.pattern})")
    ensure_auth(data_dir, prefix)
    files = AuthFiles(data_dir)
    password = secrets.token_urlsafe(18)
    users = _read_passwd(files)
    users[device] = password_hash(password)
    _write_passwd(files, users)
    reload_broker(data_dir)
    return {"device": device, "username": device, "password": password}


def provision_many(devices: list[str], data_dir: Path,
                   prefix: str = DEFAULT_PREFIX) -> dict[str, tuple[str, str]]:
    """Accounts for many (virtual) devices with one write and one reload."""
    for device in devices:
        if not DEVICE_ID.match(device):
            raise ProvisionError(f"{device!r} is not a device id ({DEVICE_ID.pattern})")
    ensure_auth(data_dir, prefix)
    files = AuthFiles(data_dir)
    users = _read_passwd(files)
    creds = {}
    for device in devices:
        password = secrets.token_urlsafe(18)
        users[device] = password_hash(password)
        creds[device] = (device, password)
    _write_passwd(files, users)
    reload_broker(data_dir)
    return creds


@click.command("provision")
@click.argument("device")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Data directory of `soundmon up` (default: $SOUNDMON_DATA or "
                                 "~/.local/share/soundmon).")
@click.option("--json", "as_json", is_flag=True, help='Print {"device", "username", "password"}.')
def provision_command(device: str, data_dir: Path | None, as_json: bool) -> None:
    """Create the MQTT account of DEVICE: it may publish only as itself.

    A running `soundmon up` on the same data directory picks the account up at once.
    The password is shown only now: pass it to `soundmon deploy --password`.
    """
    from soundmon.settings import get_settings

    settings = get_settings()
    data = (data_dir or settings.data_dir).resolve()
    try:
        creds = provision(device, data, settings.mqtt_prefix)
    except ProvisionError as err:
        raise click.BadParameter(str(err), param_hint="DEVICE") from err
    if as_json:
        click.echo(json.dumps(creds))
        return
    click.echo(f"device:   {creds['device']}\nusername: {creds['username']}\n"
               f"password: {creds['password']}\n"
               f"(shown once; deploy with --username {creds['username']} --password ...)")
