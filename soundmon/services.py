"""Starting the real parts: mosquitto and redis-server configs, and supervised processes.

``soundmon up``, the integration tests and docker-compose.yml all use the configs written
here, so what is tested is what runs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

MOSQUITTO_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto")
REDIS_CANDIDATES = ("redis-server", "/usr/bin/redis-server")
INSTALL_HINT = ("install them with `make install`, or `sudo apt-get install mosquitto "
                "mosquitto-clients redis-server` (Debian/Ubuntu)")


def find_binary(candidates: tuple[str, ...]) -> str | None:
    for c in candidates:
        path = shutil.which(c) or (c if os.path.isabs(c) and os.access(c, os.X_OK) else None)
        if path:
            return path
    return None


OPEN_ACCESS = """# Local demo and tests: anonymous on loopback. For devices on a network use a password_file
# and ACLs (README: Docker Compose).
allow_anonymous true"""


def mosquitto_conf(port: int, data_dir: Path | str, bind: str = "127.0.0.1",
                   log_dest: str = "stdout", run_as: str | None = None,
                   password_file: Path | str | None = None,
                   acl_file: Path | str | None = None) -> str:
    """mosquitto.conf for soundmon.

    Persistence is on, and the per-client queue is sized so a gateway that is slow or down
    for a while is never silently dropped (mosquitto drops beyond ``max_queued_messages``,
    default 1000: at 4 devices x 2 frames/s that is two minutes of downtime).
    With ``password_file`` and ``acl_file`` (soundmon.provision) anonymous access is off and
    each device may publish only as itself; without them the broker is an open demo broker.
    """
    data = str(data_dir).rstrip("/") + "/"
    # Started as root, mosquitto switches to the "mosquitto" user, which cannot write into a
    # root-owned data directory under /root or /tmp/pytest-of-root (0700). When soundmon up
    # itself runs as root it keeps the broker on the same account instead.
    user = f"user {run_as}\n" if run_as else ""
    if password_file and acl_file:
        access = f"""# Accounts from `soundmon provision`: each device publishes only as itself
allow_anonymous false
password_file {password_file}
acl_file {acl_file}"""
    else:
        access = OPEN_ACCESS
    return f"""# mosquitto configuration written by soundmon (soundmon service-config mosquitto)
{user}listener {port} {bind}
{access}
persistence true
persistence_location {data}
# seconds between saves of the in-memory state; a crash loses at most this much of queued data
autosave_interval 10
# Queue for a slow or absent gateway: about 1.4 h of 200 devices at 2 frames/s, or 8 GB of
# 8 KB frames at most; past that mosquitto drops new messages and logs it.
max_queued_messages 1000000
max_queued_bytes 8000000000
# v3.1.1 clients: in-flight window; v5 clients (the gateway) state their own receive-maximum
max_inflight_messages 1000
# the largest valid frame is 24 + 2 * 65535 bytes
message_size_limit 262144
log_dest {log_dest}
log_type error
log_type warning
log_type notice
connection_messages false
"""


def redis_conf(port: int, data_dir: Path | str, bind: str = "127.0.0.1") -> str:
    """redis.conf for soundmon: every write is in the append-only file before Redis answers.

    The gateway acknowledges frames to MQTT once Redis took their batch, so Redis must not
    lose what it acknowledged: ``appendfsync always`` instead of the usual ``everysec``
    (which can lose the last second on a crash). Frames travel in batches, so this costs one
    fsync per batch of up to 512 frames; measured with bench/throughput.py it is a few percent.
    """
    # Protected mode refuses every non-loopback client of a password-less Redis; on a
    # container network (compose) the clients are remote, so it is off there and Redis is
    # not published outside that network.
    protected = "yes" if bind.startswith("127.") else "no"
    return f"""# redis configuration written by soundmon (soundmon service-config redis)
port {port}
bind {bind}
protected-mode {protected}
dir {data_dir}
appendonly yes
appendfsync always
save ""
# never evict queued tasks (kombu loses messages whose keys are evicted)
maxmemory-policy noeviction
daemonize no
loglevel notice
"""


def prepare_mosquitto(data_dir: Path, port: int, bind: str = "127.0.0.1",
                      auth: bool = False, prefix: str = "soundmon") -> Path:
    """Write the config and make its data directory writable by the broker's user.

    ``auth``: accounts and ACL from ``data_dir`` (soundmon.provision), anonymous off.
    """
    mdir = data_dir / "mosquitto"
    mdir.mkdir(parents=True, exist_ok=True)
    conf = mdir / "mosquitto.conf"
    run_as = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
    files: dict[str, Path] = {}
    if auth:
        from soundmon.provision import AuthFiles, ensure_auth

        ensure_auth(data_dir, prefix)
        files = {"password_file": AuthFiles(data_dir).passwd, "acl_file": AuthFiles(data_dir).acl}
    conf.write_text(mosquitto_conf(port, mdir, bind, run_as=run_as, **files))
    return conf


def prepare_redis(data_dir: Path, port: int, bind: str = "127.0.0.1") -> Path:
    rdir = data_dir / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    conf = rdir / "redis.conf"
    conf.write_text(redis_conf(port, rdir, bind))
    return conf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1",
              proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before opening {port}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f} s")


def soundmon_argv(*args: str) -> list[str]:
    """Run a soundmon subcommand with this interpreter (works without the console script)."""
    return [sys.executable, "-m", "soundmon", *args]


@dataclass
class Process:
    """A supervised child process with its own process group and log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group (graceful: drain, save), SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@click.command("service-config")
@click.argument("service", type=click.Choice(["mosquitto", "redis"]))
@click.option("--port", type=int, default=None, help="Listening port (1883 / 6379).")
@click.option("--bind", default="127.0.0.1", show_default=True)
@click.option("--data", "data_dir", default=None, help="Directory for the broker's files.")
def service_config_command(service: str, port: int | None, bind: str,
                           data_dir: str | None) -> None:
    """Print the mosquitto or redis configuration soundmon runs them with."""
    if service == "mosquitto":
        click.echo(mosquitto_conf(port or 1883, data_dir or "/mosquitto/data", bind), nl=False)
    else:
        click.echo(redis_conf(port or 6379, data_dir or "/data", bind), nl=False)
