"""A real RabbitMQ node for the tests, started by hand from Debian's ``rabbitmq-server``.

Everything lives in one directory: the node's database (``RABBITMQ_MNESIA_BASE``), logs, its
config and its Erlang cookie (``$HOME/.erlang.cookie``, read by the node and by rabbitmqctl).
It listens on free loopback ports that the test picks: AMQP (``RABBITMQ_NODE_PORT``), the
Erlang distribution port (``RABBITMQ_DIST_PORT``), and a private ``epmd`` (``ERL_EPMD_PORT``),
so it never touches a system RabbitMQ or the system epmd on 4369, and ``stop`` leaves nothing
running. A start takes about 8 s on 2 cores (Erlang boot), so the suite starts one node per
session and resets its queues between tests.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

from soundmon import tasknames
from soundmon.services import Process, free_port, port_open, wait_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the real script; /usr/sbin's wrapper su's
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
BOOT_TIMEOUT_S = 90.0


def rabbitmq_installed() -> bool:
    return os.access(SERVER, os.X_OK) and shutil.which("epmd") is not None


class RabbitMQ:
    """One RabbitMQ node on free ports; ``start``/``stop``/``kill`` keep its data between runs."""

    def __init__(self, base: Path, host: str = "127.0.0.1") -> None:
        self.base = base
        self.host = host
        self.amqp_port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.nodename = f"soundmon-test-{self.amqp_port}@localhost"
        base.mkdir(parents=True, exist_ok=True)
        cookie = base / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16))
            cookie.chmod(0o400)  # Erlang refuses a cookie others can read
        (base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {host}:{self.amqp_port}\n"
            # the default guest user may connect from other hosts (network-namespace tests)
            "loopback_users = none\n"
        )
        (base / "enabled_plugins").write_text("[].\n")  # no management plugin: faster boot
        self.env = dict(os.environ)
        self.env.update({
            "HOME": str(base),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": host,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),  # not /etc/rabbitmq's
        })
        self.epmd = Process("epmd", ["epmd", "-port", str(self.epmd_port)], self.env,
                            base / "epmd.log")
        self.node = Process("rabbitmq", [SERVER], self.env, base / "rabbitmq.log")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.amqp_port}//"

    def start(self) -> RabbitMQ:
        if not self.epmd.alive():
            self.epmd.start()
            wait_port(self.epmd_port, proc=self.epmd.proc)
        self.node.start()
        wait_port(self.amqp_port, timeout=BOOT_TIMEOUT_S, host=self.host, proc=self.node.proc)
        return self

    def kill(self) -> None:
        """SIGKILL the node (no shutdown, no flush): only what it fsynced survives."""
        self.node.kill()
        self._wait_closed()

    def _wait_closed(self, timeout: float = 20.0) -> None:
        """Until the old node's listener is gone, so a restart cannot see it as the new one."""
        deadline = time.monotonic() + timeout
        while port_open(self.amqp_port, self.host) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.node.stop(timeout=30)
        self._wait_closed()
        self.epmd.stop()

    def reset(self) -> None:
        """Delete soundmon's queues, so a test never sees tasks an earlier test left behind."""
        from kombu import Connection

        with Connection(self.url, connect_timeout=10) as conn:
            channel = conn.channel()
            for queue in {r["queue"] for r in tasknames.ROUTES.values()}:
                channel.queue_delete(queue)

    def ctl(self, *args: str) -> list[str]:
        """argv for rabbitmqctl against this node (same cookie and epmd through ``self.env``)."""
        return [CTL, "-n", self.nodename, *args]
