"""docker-compose.yml cannot run here (no Docker engine), so its structure is checked against the code."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from soundmon.cli import COMMANDS, main
from soundmon.services import mosquitto_conf, redis_conf

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
REQUIRED = {"mosquitto", "redis", "gateway", "worker-preprocess", "worker-analyze", "dashboard",
            "flower"}


def _argv(service: dict) -> list[str]:
    cmd = service["command"]
    return cmd if isinstance(cmd, list) else shlex.split(cmd)


def test_every_required_service_is_there_with_a_health_check():
    """All seven services exist, each with a health check and a restart policy."""
    assert REQUIRED <= set(SERVICES)
    for name, svc in SERVICES.items():
        assert "healthcheck" in svc and svc["healthcheck"]["test"], name
        assert svc.get("restart") in ("unless-stopped", "always"), name


@pytest.mark.parametrize("name", sorted(REQUIRED - {"mosquitto", "redis"}))
def test_soundmon_services_run_commands_that_exist(name):
    """Each soundmon service runs a `soundmon` subcommand the CLI has, with options it accepts."""
    argv = _argv(SERVICES[name])
    assert argv[0] == "soundmon" and argv[1] in COMMANDS, argv
    # --help with the same arguments proves click accepts them (it parses before --help acts)
    result = CliRunner().invoke(main, [*argv[1:], "--help"])
    assert result.exit_code == 0, result.output


def test_dependencies_name_real_services_and_wait_for_health():
    """depends_on only names services of the file, and waits for their health checks."""
    for name, svc in SERVICES.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in SERVICES, (name, dep)
            assert cond["condition"] == "service_healthy"


def test_broker_configs_are_the_ones_soundmon_up_runs():
    """deploy/*.conf are exactly what `soundmon service-config` renders for the containers."""
    assert (ROOT / "deploy/mosquitto.conf").read_text() == mosquitto_conf(
        1883, "/mosquitto/data", "0.0.0.0")
    assert (ROOT / "deploy/redis.conf").read_text() == redis_conf(6379, "/data", "0.0.0.0")
    assert _argv(SERVICES["mosquitto"]) == ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
    assert _argv(SERVICES["redis"]) == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    mounts = SERVICES["mosquitto"]["volumes"] + SERVICES["redis"]["volumes"]
    assert "./deploy/mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in mounts
    assert "./deploy/redis.conf:/usr/local/etc/redis/redis.conf:ro" in mounts


def test_named_volumes_are_declared_and_the_image_runs_as_non_root():
    """Every named volume is declared; the Dockerfile drops root."""
    declared = set(COMPOSE.get("volumes") or {})
    for svc in SERVICES.values():
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in declared, src
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nUSER soundmon" in dockerfile
    for folder in ("soundmon", "gateway", "workers", "dashboard"):
        assert f"COPY {folder} ./{folder}" in dockerfile


def test_healthcheck_modules_exist():
    """Health checks that run python modules name modules of this project."""
    import importlib

    for svc in SERVICES.values():
        test = svc["healthcheck"]["test"]
        if test[1] == "python" and "-m" in test:
            importlib.import_module(test[test.index("-m") + 1])
