"""``soundmon up``: the whole system on this machine, no Docker.

Starts mosquitto and redis-server with soundmon's configs, both Celery workers, the gateway,
the API with its live page, Flower and, on request, simulated devices; prints the URLs and
the API token; restarts a part that crashes; stops everything in order on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
import urllib.request
from pathlib import Path

import click

from soundmon.provision import ensure_auth
from soundmon.services import (
    INSTALL_HINT,
    MOSQUITTO_CANDIDATES,
    REDIS_CANDIDATES,
    Process,
    find_binary,
    free_port,
    port_open,
    prepare_mosquitto,
    prepare_redis,
    soundmon_argv,
    wait_port,
)
from soundmon.settings import default_data_dir
from soundmon.users import ensure_admin

#: the broker account (soundmon.provision) of each process that uses MQTT; docker-compose.yml
#: gives its services the same ones (tests/unit/test_compose.py checks it)
MQTT_ACCOUNTS = {
    "gateway": "svc.gateway",
    "worker-analyze": "svc.workers",
    # alert notifications: publishes on soundmon/v1/+/alert
    "worker-notify": "svc.workers",
    # replays started from the dashboard publish as their replay device (docs/recording.md)
    "worker-recording": "svc.replay",
    # POST /api/notifications/test to the built-in mqtt channel
    "dashboard": "svc.workers",
}


def _pick_port(name: str, requested: int | None, default: int) -> int:
    if requested is not None:
        if port_open(requested):
            raise click.ClickException(f"port {requested} for {name} is already in use")
        return requested
    if not port_open(default):
        return default
    port = free_port()
    click.echo(f"  port {default} for {name} is busy; using {port} instead")
    return port


def api_token(data_dir: Path) -> str:
    """$SOUNDMON_API_TOKEN, else the token saved in the data directory, else a new one."""
    token = os.environ.get("SOUNDMON_API_TOKEN")
    if token:
        return token
    path = data_dir / "api-token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def _wait_healthy(url: str, procs: list[Process], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        for p in procs:
            if not p.alive():
                raise click.ClickException(f"{p.name} exited during start-up; see {p.log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        except OSError:
            pass
        time.sleep(0.3)
    return body


@click.command("up")
@click.option("--simulate", "n_devices", type=click.IntRange(0, 10_000), default=0,
              show_default=True, help="Also run N simulated devices.")
@click.option("--scene", default=None, help="Scene for every simulated device (default: mixed).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Data directory (default: $SOUNDMON_DATA or ~/.local/share/soundmon).")
@click.option("--http-port", type=int, default=None, help="API and page port (default 8000).")
@click.option("--mqtt-port", type=int, default=None, help="MQTT port (default 1883).")
@click.option("--redis-port", type=int, default=None, help="Redis port (default 6379).")
@click.option("--flower-port", type=int, default=None, help="Flower port (default 5555).")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address the broker and the API listen on (0.0.0.0 for real devices).")
@click.option("--no-flower", is_flag=True, help="Do not start Flower.")
@click.option("--open-broker", is_flag=True,
              help="An open demo broker: anonymous MQTT, no accounts or ACL. By default each "
                   "device needs its own account (soundmon provision) and may publish only "
                   "as itself.")
def up_command(n_devices: int, scene: str | None, data_dir: Path | None, http_port: int | None,
               mqtt_port: int | None, redis_port: int | None, flower_port: int | None,
               bind: str, no_flower: bool, open_broker: bool = False) -> None:
    """Start every soundmon part on this machine; Ctrl-C stops them all."""
    mosquitto = find_binary(MOSQUITTO_CANDIDATES)
    redis_server = find_binary(REDIS_CANDIDATES)
    missing = [n for n, b in (("mosquitto", mosquitto), ("redis-server", redis_server)) if not b]
    if missing:
        raise click.ClickException(f"{' and '.join(missing)} not found: {INSTALL_HINT}")
    assert mosquitto and redis_server

    data = Path(data_dir or os.environ.get("SOUNDMON_DATA") or default_data_dir()).resolve()
    data.mkdir(parents=True, exist_ok=True)
    logs = data / "logs"
    click.echo(f"soundmon: data in {data}")
    mqtt = _pick_port("MQTT", mqtt_port, 1883)
    rport = _pick_port("Redis", redis_port, 6379)
    http = _pick_port("the API", http_port, 8000)
    fport = None if no_flower else _pick_port("Flower", flower_port, 5555)
    token = api_token(data)
    # a fresh data directory gets an "admin" account, so the page can be signed in to at once
    admin, admin_password = ensure_admin(data, data / "soundmon.db")
    host = "127.0.0.1"
    env = dict(os.environ)
    env.update({
        "SOUNDMON_DATA": str(data),
        "SOUNDMON_MQTT_HOST": host, "SOUNDMON_MQTT_PORT": str(mqtt),
        "SOUNDMON_BROKER_URL": f"redis://{host}:{rport}/0",
        "SOUNDMON_REDIS_URL": f"redis://{host}:{rport}/0",
        "SOUNDMON_API_TOKEN": token,
        "SOUNDMON_HTTP_HOST": bind, "SOUNDMON_HTTP_PORT": str(http),
        "PYTHONUNBUFFERED": "1",
    })
    if fport:
        env["SOUNDMON_FLOWER_URL"] = f"http://{host}:{fport}"
    prefix = os.environ.get("SOUNDMON_MQTT_PREFIX", "soundmon")
    mqtt_conf = prepare_mosquitto(data, mqtt, bind, auth=not open_broker, prefix=prefix)
    # each process gets the broker account of its job (MQTT_ACCOUNTS), nothing more
    accounts = {} if open_broker else ensure_auth(data, prefix)

    def env_for(name: str) -> dict[str, str]:
        account = MQTT_ACCOUNTS.get(name)
        if account is None or open_broker:
            return env
        return {**env, "SOUNDMON_MQTT_USERNAME": account,
                "SOUNDMON_MQTT_PASSWORD": accounts[account]}

    infra = [
        Process("mosquitto", [mosquitto, "-c", str(mqtt_conf)], env, logs / "mosquitto.log"),
        Process("redis", [redis_server, str(prepare_redis(data, rport, host))], env,
                logs / "redis.log"),
    ]
    apps = [
        Process("worker-preprocess", soundmon_argv("worker", "preprocess"),
                env_for("worker-preprocess"), logs / "worker-preprocess.log"),
        Process("worker-analyze", soundmon_argv("worker", "analyze"), env_for("worker-analyze"),
                logs / "worker-analyze.log"),
        Process("worker-notify", soundmon_argv("worker", "notify"), env_for("worker-notify"),
                logs / "worker-notify.log"),
        # recording upkeep, alert clips, uploads and replays (docs/recording.md)
        Process("worker-recording", soundmon_argv("worker", "recording"),
                env_for("worker-recording"), logs / "worker-recording.log"),
        Process("gateway", soundmon_argv("gateway"), env_for("gateway"), logs / "gateway.log"),
        Process("dashboard", soundmon_argv("dashboard"), env_for("dashboard"),
                logs / "dashboard.log"),
    ]
    if fport:
        apps.append(Process("flower", soundmon_argv("flower", "--port", str(fport)), env,
                            logs / "flower.log"))
    if n_devices:
        sim = ["simulate", "--devices", str(n_devices), "--broker", f"{host}:{mqtt}",
               *([] if open_broker else ["--provision"])]
        apps.append(Process("simulator", soundmon_argv(*sim, *(["--scene", scene] if scene else [])),
                            env, logs / "simulator.log"))
    run_dir = data / "run"
    run_dir.mkdir(exist_ok=True)

    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started: list[Process] = []
    try:
        for p, port in zip(infra, (mqtt, rport), strict=True):
            started.append(p.start())
            wait_port(port, proc=p.proc)
            # now, not later: `soundmon provision` finds the broker to reload by this file
            (run_dir / f"{p.name}.pid").write_text(f"{p.pid}\n")
        for p in apps:
            started.append(p.start())
        for p in started:
            (run_dir / f"{p.name}.pid").write_text(f"{p.pid}\n")
        health = _wait_healthy(f"http://{host}:{http}/api/health", started, 90.0)
        click.echo("")
        click.echo(f"  Dashboard:  http://{host}:{http}/")
        if admin_password:
            click.echo(f"  Sign in:    user {admin}, password {admin_password}   "
                       f"(saved in {data / 'admin-password'}; more users: soundmon user add NAME)")
        else:
            click.echo(f"  Sign in:    with your dashboard user (new ones: soundmon user add NAME "
                       f"--data {data})")
        click.echo(f"  API token:  {token}   (Authorization: Bearer <token>)")
        click.echo(f"  MQTT:       mqtt://{host}:{mqtt}  topics soundmon/v1/<device>/frame|status")
        click.echo("  Accounts:   open demo broker (anyone may publish)" if open_broker else
                   "  Accounts:   one per device: soundmon provision <device> "
                   f"--data {data}")
        if fport:
            click.echo(f"  Flower:     http://{host}:{fport}")
        click.echo(f"  Logs:       {logs}")
        if health.get("failing"):
            click.echo(f"  Not healthy yet: {health['failing']}")
        click.echo(f"  Devices:    {n_devices} simulated" if n_devices else
                   "  Devices:    none yet (try: soundmon simulate --devices 4)")
        click.echo("Press Ctrl-C to stop.")
        while not stopping:
            time.sleep(0.5)
            for p, port in zip(infra, (mqtt, rport), strict=True):
                if not p.alive() and not stopping:
                    # both keep their data on disk (persistence, AOF): restart and carry on
                    click.echo(f"  {p.name} exited ({p.proc.returncode if p.proc else '?'}); "
                               f"restarting (log: {p.log_path})")
                    p.restarts += 1
                    p.start()
                    wait_port(port, proc=p.proc)
                    (run_dir / f"{p.name}.pid").write_text(f"{p.pid}\n")
            for p in apps:
                if not p.alive() and not stopping:
                    code = p.proc.returncode if p.proc else None
                    if p.name == "simulator" and code == 0:
                        continue  # a simulation with --duration ended
                    if p.restarts >= 5 and time.monotonic() - p.started_at < 10:
                        raise click.ClickException(f"{p.name} keeps crashing; see {p.log_path}")
                    click.echo(f"  {p.name} exited ({code}); restarting (log: {p.log_path})")
                    p.restarts += 1
                    p.start()
                    (run_dir / f"{p.name}.pid").write_text(f"{p.pid}\n")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        click.echo("stopping...")
        for p in reversed(started):
            p.stop()
        for f in run_dir.glob("*.pid"):
            f.unlink(missing_ok=True)
        click.echo("stopped.")
