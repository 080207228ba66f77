"""The ``soundmon`` command: one entry point for every service and tool.

Each subcommand lives next to the code it runs and is imported only when called, so
``soundmon --help`` stays fast and a worker never imports the web stack.
"""

from __future__ import annotations

import importlib

import click

from soundmon import __version__

#: subcommand -> "module:attribute" of its click command
COMMANDS = {
    "up": "soundmon.up:up_command",
    "gateway": "gateway.service:gateway_command",
    "worker": "workers.command:worker_command",
    "dashboard": "dashboard.server:dashboard_command",
    "flower": "workers.command:flower_command",
    "simulate": "soundmon.simulate:simulate_command",
    "service-config": "soundmon.services:service_config_command",
    "provision": "soundmon.provision:provision_command",
    "flash": "soundmon.flash:flash_command",
    "deploy": "soundmon.deploy:deploy_command",
    "analyze": "workers.fileanalysis:analyze_command",
    "calibrate": "workers.calibrate_cmd:calibrate_command",
    "certs": "soundmon.certs:certs_command",
    "broker-setup": "soundmon.brokersetup:broker_setup_command",
    "replay": "soundmon.replay:replay_command",
    "user": "soundmon.users:user_command",
    "bench": "soundmon.bench:bench_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="soundmon")
def main() -> None:
    """soundmon: sound monitoring from ESP32 microphones to alerts and a live dashboard.

    Start everything on this machine with ``soundmon up --simulate 4``.
    """
