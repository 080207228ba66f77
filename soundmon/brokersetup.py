"""``soundmon broker-setup``: everything mosquitto needs on Docker Compose, written into its volume.

Compose runs it once (the ``broker-setup`` service) before mosquitto starts. Into
``DATA/mosquitto/`` (soundmon.provision's layout) it writes:

- ``passwd``, ``acl``, ``services.json``: the accounts of soundmon.provision. The service
  passwords come from ``SOUNDMON_MQTT_GATEWAY_PASSWORD``, ``SOUNDMON_MQTT_WORKERS_PASSWORD``,
  ``SOUNDMON_MQTT_REPLAY_PASSWORD`` and ``SOUNDMON_MQTT_ADMIN_PASSWORD`` (``.env``), so the
  gateway and the workers can be given the same values; unset ones are random and stay in
  ``services.json``. The broker's files are in its own volume, which no other container
  mounts: every service account a container uses must get its password this way.
- ``tls/``: the private CA and the broker's server certificate (soundmon.certs).
- ``store/``: mosquitto's persistence directory.

``compose_mosquitto_conf`` renders ``deploy/mosquitto.conf`` from ``soundmon.services``'
config plus a TLS listener; tests/unit/test_compose.py checks the file is exactly that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from soundmon.certs import CertError, CertFiles, ensure_certs
from soundmon.provision import AuthFiles, ensure_auth, password_hash
from soundmon.services import mosquitto_conf

#: service account -> the variable its password is read from
PASSWORD_ENV = {
    "svc.gateway": "SOUNDMON_MQTT_GATEWAY_PASSWORD",
    "svc.workers": "SOUNDMON_MQTT_WORKERS_PASSWORD",
    "svc.replay": "SOUNDMON_MQTT_REPLAY_PASSWORD",
    "svc.admin": "SOUNDMON_MQTT_ADMIN_PASSWORD",
}
MQTT_PORT = 1883  # inside the compose network only
MQTTS_PORT = 8883  # published: devices connect here with TLS


def compose_mosquitto_conf(base: str = "/mosquitto/data", port: int = MQTT_PORT,
                           tls_port: int = MQTTS_PORT, bind: str = "0.0.0.0",
                           run_as: str | None = None) -> str:
    """mosquitto.conf for Compose: accounts and ACL on, persistence, plain + TLS listener.

    ``base`` is the broker's view of ``DATA/mosquitto`` (the volume broker-setup fills).
    """
    plain = mosquitto_conf(port, f"{base}/store", bind, run_as=run_as,
                           password_file=f"{base}/passwd", acl_file=f"{base}/acl")
    tls = CertFiles(Path(base) / "tls")
    return plain + f"""# TLS listener for devices on a network; certificates from `soundmon certs`
# (broker-setup writes them). The accounts and the ACL above apply here too.
listener {tls_port} {bind}
cafile {tls.ca_cert}
certfile {tls.server_cert}
keyfile {tls.server_key}
tls_version tlsv1.2
"""


def set_service_passwords(data_dir: Path, passwords: dict[str, str]) -> None:
    """Give service accounts the passwords the operator chose (written as mosquitto hashes)."""
    files = AuthFiles(data_dir)
    services = json.loads(files.services.read_text())
    lines = files.passwd.read_text().splitlines()
    users = dict(line.split(":", 1) for line in lines if ":" in line)
    for name, password in passwords.items():
        services[name] = password
        users[name] = password_hash(password)
    for path, text in ((files.services, json.dumps(services, indent=1) + "\n"),
                       (files.passwd, "".join(f"{u}:{h}\n" for u, h in users.items()))):
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)


def setup_broker(data_dir: Path, prefix: str, tls_hosts: list[str],
                 passwords: dict[str, str], owner: tuple[int, int] | None = None) -> dict:
    ensure_auth(data_dir, prefix)
    if passwords:
        set_service_passwords(data_dir, passwords)
    files = AuthFiles(data_dir)
    (files.dir / "store").mkdir(exist_ok=True)
    result = ensure_certs(files.dir / "tls", tls_hosts) if tls_hosts else {}
    if owner:
        for root, dirs, names in os.walk(files.dir):
            for name in [*dirs, *names]:
                os.chown(os.path.join(root, name), *owner)
        os.chown(files.dir, *owner)
    return result


def _owner(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    uid, _, gid = value.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError as exc:
        raise click.BadParameter("use UID:GID, e.g. 10001:10001", param_hint="--chown") from exc


@click.command("broker-setup")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Data directory; the files go to DATA/mosquitto/.")
@click.option("--tls-host", "tls_hosts", multiple=True, envvar="SOUNDMON_TLS_HOSTS",
              help="Name or address devices use for the broker (repeat; env: space-separated).")
@click.option("--chown", "owner", default=None, help="Hand the files to UID:GID (the broker's user).")
def broker_setup_command(data_dir: Path, tls_hosts: tuple[str, ...], owner: str | None) -> None:
    """Write mosquitto's accounts, ACL and TLS certificates for Docker Compose."""
    from soundmon.settings import get_settings

    passwords = {name: os.environ[var] for name, var in PASSWORD_ENV.items() if os.environ.get(var)}
    try:
        result = setup_broker(data_dir, get_settings().mqtt_prefix,
                              [h for entry in tls_hosts for h in entry.split()], passwords,
                              _owner(owner))
    except CertError as err:
        raise click.UsageError(str(err)) from err
    files = AuthFiles(data_dir)
    click.echo(f"accounts: {files.passwd} and {files.acl} "
               f"(service passwords from the environment: {', '.join(sorted(passwords)) or 'none'})")
    if result:
        click.echo(f"TLS: CA {result['ca']}, server certificate {result['server']} for "
                   f"{', '.join(result['names'])}")
