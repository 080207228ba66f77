"""docker-compose.yml cannot run here (no Docker engine), so its structure is checked against the code."""

from __future__ import annotations

import base64
import re
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from soundmon import tasknames
from soundmon.brokersetup import MQTT_PORT, MQTTS_PORT, PASSWORD_ENV, compose_mosquitto_conf
from soundmon.cli import COMMANDS, main
from soundmon.provision import SERVICES as PROVISION_SERVICES
from soundmon.provision import AuthFiles, password_hash
from soundmon.services import redis_conf
from soundmon.settings import Settings
from soundmon.up import MQTT_ACCOUNTS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
NGINX = (ROOT / "deploy/nginx.conf").read_text()

LONG_RUNNING = {"mosquitto", "redis", "influxdb", "rabbitmq", "gateway", "worker-preprocess",
                "worker-analyze", "worker-notify", "worker-recording", "dashboard", "flower", "nginx"}
ONE_SHOT = {"broker-setup"}
SOUNDMON = {n for n, s in SERVICES.items() if s.get("image") == "soundmon:latest"}
#: variables of the compose file that are not soundmon settings
COMPOSE_ONLY = {*PASSWORD_ENV.values(), "SOUNDMON_TLS_HOSTS", "SOUNDMON_HTTP_PUBLISH",
                "INFLUXDB_ADMIN_USER", "INFLUXDB_ADMIN_PASSWORD", "INFLUXDB_RETENTION",
                "RABBITMQ_PASSWORD"}
SOUNDMON_UID = "10001"
#: variables holding an address for the user's browser, not for the container
BROWSER_URLS = {"SOUNDMON_FLOWER_URL"}


def _argv(service: dict) -> list[str]:
    cmd = service.get("command", [])  # none: the image's own (influxd, rabbitmq-server, nginx)
    return cmd if isinstance(cmd, list) else shlex.split(cmd)


def _mounts(service: dict) -> dict[str, str]:
    """container path -> source, for every volume of a service."""
    out = {}
    for v in service.get("volumes", []):
        src, dst = v.split(":")[:2]
        out[dst] = src
    return out


def _container_ports(service: dict) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}


def _default(value: str) -> str:
    """``${VAR:-default}`` -> ``default``: what Compose uses when .env does not set VAR."""
    m = re.fullmatch(r"\$\{[A-Z0-9_]+:-(.*)\}", str(value))
    return m[1] if m else str(value)


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_every_service_is_there_with_health_check_restart_policy_and_limits():
    """Long-running services have a health check, a restart policy and resource limits."""
    assert LONG_RUNNING | ONE_SHOT == set(SERVICES)
    for name in LONG_RUNNING:
        svc = SERVICES[name]
        assert svc["healthcheck"]["test"], name
        assert svc.get("restart") in ("unless-stopped", "always"), name
        limits = svc["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) > 0 and re.fullmatch(r"\d+[MG]", limits["memory"]), name
    for name in ONE_SHOT:
        assert SERVICES[name]["restart"] == "no" and "healthcheck" not in SERVICES[name]


@pytest.mark.parametrize("name", sorted(SOUNDMON))
def test_soundmon_services_run_commands_that_exist(name):
    """Each soundmon service runs a `soundmon` subcommand the CLI has, with options it accepts."""
    argv = _argv(SERVICES[name])
    assert argv[0] == "soundmon" and argv[1] in COMMANDS, argv
    # --help with the same arguments proves click accepts them (it parses before --help acts)
    result = CliRunner().invoke(main, [*argv[1:], "--help"])
    assert result.exit_code == 0, result.output


def test_worker_services_cover_every_queue_and_their_health_checks_ping_them():
    """One worker service per queue of tasknames.ROUTES; its ping names that queue's node."""
    queues = {r["queue"] for r in tasknames.ROUTES.values()}
    workers = {name: _argv(s) for name, s in SERVICES.items() if _argv(s)[1:2] == ["worker"]}
    assert {argv[2] for argv in workers.values()} == queues
    for name, argv in workers.items():
        test = " ".join(SERVICES[name]["healthcheck"]["test"])
        # the worker's default node name is QUEUE@%h (workers/app.py), %h = the container host
        assert f"inspect ping -d {argv[2]}@$$HOSTNAME" in test, name
        assert "--name" not in argv


def test_published_ports_are_the_ones_the_services_listen_on():
    """Each published container port is one its command or config listens on."""
    conf = (ROOT / "deploy/mosquitto.conf").read_text()
    listeners = {int(p) for p in re.findall(r"^listener (\d+)", conf, re.M)}
    assert _container_ports(SERVICES["mosquitto"]) == listeners == {MQTT_PORT, MQTTS_PORT}
    for name in ("dashboard", "flower"):
        argv = _argv(SERVICES[name])
        port = int(_option(argv, "--port"))
        assert _option(argv, {"dashboard": "--host", "flower": "--address"}[name]) == "0.0.0.0"
        published = _container_ports(SERVICES[name]) | {int(p) for p in
                                                        SERVICES[name].get("expose", [])}
        assert published == {port}, name
        assert f"http://127.0.0.1:{port}/" in " ".join(SERVICES[name]["healthcheck"]["test"])
    # plain MQTT, Flower and the admin UIs stay on the host; devices and browsers get TLS/nginx
    for name, svc in SERVICES.items():
        for p in svc.get("ports", []):
            host_part = str(p).rsplit(":", 1)[0]
            if name not in ("nginx",) and int(str(p).rsplit(":", 1)[-1]) != MQTTS_PORT:
                assert host_part.startswith("127.0.0.1:"), (name, p)
    assert _container_ports(SERVICES["nginx"]) == {int(re.search(r"listen (\d+);", NGINX)[1])}


def test_nginx_proxies_the_dashboard_service_and_streams_events_unbuffered():
    """nginx's upstream is the dashboard service's port; /api/stream is not buffered."""
    dash_port = _option(_argv(SERVICES["dashboard"]), "--port")
    assert re.search(rf"server dashboard:{dash_port};", NGINX)
    stream = NGINX[NGINX.index("location = /api/stream"):]
    stream = stream[:stream.index("}")]
    for directive in ("proxy_buffering off;", "proxy_http_version 1.1;", "proxy_cache off;"):
        assert directive in stream
    assert "/nginx-health" in " ".join(SERVICES["nginx"]["healthcheck"]["test"])
    assert _mounts(SERVICES["nginx"])["/etc/nginx/nginx.conf"] == "./deploy/nginx.conf"


def test_dependencies_name_real_services_with_the_right_condition():
    """depends_on names services of the file; waits for health, or for a one-shot to finish."""
    for name, svc in SERVICES.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in SERVICES, (name, dep)
            if dep in ONE_SHOT:
                assert cond["condition"] == "service_completed_successfully", (name, dep)
            elif name == "nginx":
                assert cond["condition"] == "service_started"
            else:
                assert cond["condition"] == "service_healthy", (name, dep)
            # a dependency on a profile-only service must be optional
            assert ("profiles" in SERVICES[dep]) == (cond.get("required") is False), (name, dep)
    for name in SOUNDMON - ONE_SHOT:
        needs = {"mosquitto", "redis"} | ({"influxdb"} if name != "worker-preprocess" else set())
        assert needs <= set(SERVICES[name]["depends_on"]), name


def test_settings_and_hosts_in_the_environment_match_the_code():
    """Every SOUNDMON_* variable is a setting; host names in URLs are services of the file."""
    fields = {f"SOUNDMON_{n.upper()}" for n in Settings.model_fields} | {"SOUNDMON_DATA"}
    for name in SOUNDMON:
        env = SERVICES[name]["environment"]
        for var, value in env.items():
            assert var in fields or var in COMPOSE_ONLY, (name, var)
            if var in BROWSER_URLS:
                continue  # followed by a browser, not by the container: see the flower test
            for host in re.findall(r"//(?:[^@/]*@)?([a-z0-9-]+):\d+", str(value)):
                assert host in SERVICES, (name, var, host)
        if name not in ONE_SHOT:
            assert _default(env["SOUNDMON_MQTT_HOST"]) in SERVICES
            assert int(env["SOUNDMON_MQTT_PORT"]) == MQTT_PORT
            if name == "worker-preprocess":  # the DSP runs on any host: no data, no store
                assert not _mounts(SERVICES[name]) and "influxdb" not in SERVICES[name]["depends_on"]
            else:
                assert _mounts(SERVICES[name])[env["SOUNDMON_DATA"]] == "soundmon-data"


def test_services_use_the_mqtt_accounts_soundmon_up_gives_them():
    """Each service has the broker account `soundmon up` gives its process, with its password
    variable; the recording worker's is svc.replay (replays from the dashboard)."""
    used = {name: SERVICES[name]["environment"] for name in SOUNDMON - ONE_SHOT
            if "SOUNDMON_MQTT_USERNAME" in SERVICES[name]["environment"]}
    assert {name: env["SOUNDMON_MQTT_USERNAME"] for name, env in used.items()} == MQTT_ACCOUNTS
    assert MQTT_ACCOUNTS["worker-recording"] == "svc.replay"
    for name, env in used.items():
        account = env["SOUNDMON_MQTT_USERNAME"]
        assert env["SOUNDMON_MQTT_PASSWORD"] == f"${{{PASSWORD_ENV[account]}:?set it in .env}}", name


def test_broker_setup_writes_the_accounts_the_services_log_in_with(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Every service account has a password variable; broker-setup, given .env.example's
    values, writes each account a service uses with the password that service gets."""
    assert set(PASSWORD_ENV) == set(PROVISION_SERVICES)
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.splitlines()
                   if line and not line.startswith("#"))
    for var in SERVICES["broker-setup"]["environment"]:
        monkeypatch.setenv(var, example[var])
    out = CliRunner().invoke(main, [*_argv(SERVICES["broker-setup"])[1:3], str(tmp_path)])
    assert out.exit_code == 0, out.output
    users = dict(line.split(":", 1)
                 for line in AuthFiles(tmp_path).passwd.read_text().splitlines())
    for name in SOUNDMON - ONE_SHOT:
        env = SERVICES[name]["environment"]
        if "SOUNDMON_MQTT_USERNAME" not in env:
            continue
        var = re.fullmatch(r"\$\{([A-Z0-9_]+):\?.*\}", env["SOUNDMON_MQTT_PASSWORD"])[1]
        stored = users[env["SOUNDMON_MQTT_USERNAME"]]
        salt = base64.b64decode(stored.split("$")[3])  # $7$<iterations>$<salt>$<hash>
        assert password_hash(example[var], salt) == stored, name


def test_the_dashboard_links_to_flower_where_a_browser_reaches_it():
    """SOUNDMON_FLOWER_URL defaults to the host port Flower is published on, via localhost
    (the server itself, or an ssh tunnel): Flower has no sign-in and is not behind nginx."""
    url = _default(SERVICES["dashboard"]["environment"]["SOUNDMON_FLOWER_URL"])
    m = re.fullmatch(r"http://(localhost|127\.0\.0\.1):(\d+)/?", url)
    assert m, url
    published = [str(p) for p in SERVICES["flower"]["ports"]]
    assert published == [f"127.0.0.1:{m[2]}:{_option(_argv(SERVICES['flower']), '--port')}"]
    assert "flower" not in NGINX and "5555" not in NGINX
    assert f"# SOUNDMON_FLOWER_URL={url}" in ENV_EXAMPLE
    assert set(BROWSER_URLS) == {"SOUNDMON_FLOWER_URL"}


def test_every_variable_the_file_needs_is_in_env_example():
    """Each ${VAR} of the compose file appears in .env.example; required ones with a value."""
    text = (ROOT / "docker-compose.yml").read_text()
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.splitlines()
                   if line and not line.startswith("#"))
    commented = set(re.findall(r"^# ?([A-Z0-9_]+)=", ENV_EXAMPLE, re.M))
    for var, op in re.findall(r"\$\{([A-Z0-9_]+)(:[?-])?", text):
        if op == ":?":
            assert example.get(var), var
        else:
            assert var in example or var in commented, var
    assert "SOUNDMON_TLS_HOSTS" in example and all(v in example for v in PASSWORD_ENV.values())


def test_every_setting_is_in_env_example_or_set_by_the_file():
    """.env.example names every soundmon setting (settings.py promises it), or Compose sets it."""
    set_by_compose = {"data_dir", "mqtt_port", "mqtt_username", "mqtt_password", "http_host",
                      "http_port"}
    missing = [f"SOUNDMON_{name.upper()}" for name in Settings.model_fields
               if name not in set_by_compose and f"SOUNDMON_{name.upper()}=" not in ENV_EXAMPLE]
    assert missing == []


def test_broker_configs_are_rendered_by_the_code():
    """deploy/*.conf are exactly what soundmon renders; the commands use the mounted files."""
    assert (ROOT / "deploy/mosquitto.conf").read_text() == compose_mosquitto_conf()
    assert (ROOT / "deploy/redis.conf").read_text() == redis_conf(6379, "/data", "0.0.0.0")
    assert _argv(SERVICES["mosquitto"]) == ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
    assert _argv(SERVICES["redis"]) == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert _mounts(SERVICES["mosquitto"])["/mosquitto/config/mosquitto.conf"] == "./deploy/mosquitto.conf"
    assert _mounts(SERVICES["redis"])["/usr/local/etc/redis/redis.conf"] == "./deploy/redis.conf"
    assert _mounts(SERVICES["redis"])["/data"] == "redis-data"  # redis_conf's dir: AOF persists


def test_broker_setup_writes_where_mosquitto_reads():
    """broker-setup's --data/mosquitto is the volume mosquitto reads its accounts and keys from."""
    setup, mosq = SERVICES["broker-setup"], SERVICES["mosquitto"]
    data = _option(_argv(setup), "--data")
    volume = _mounts(setup)[f"{data}/mosquitto"]
    assert _mounts(mosq)["/mosquitto/data"] == volume
    conf = compose_mosquitto_conf()
    for path in re.findall(r"^(?:password_file|acl_file|cafile|certfile|keyfile) (\S+)", conf, re.M):
        assert path.startswith("/mosquitto/data/"), path
    # the broker runs as the user that owns those files (0600): the image's soundmon user
    assert _option(_argv(setup), "--chown") == f"{SOUNDMON_UID}:{SOUNDMON_UID}"
    assert mosq["user"] == f"{SOUNDMON_UID}:{SOUNDMON_UID}"
    assert f"--uid {SOUNDMON_UID} soundmon" in DOCKERFILE
    assert "svc.admin" in mosq["healthcheck"]["test"][1]
    assert set(setup["environment"]) == {*PASSWORD_ENV.values(), "SOUNDMON_TLS_HOSTS"}


def test_named_volumes_are_declared_bind_mounts_exist_and_the_image_runs_as_non_root():
    """Named volumes are declared, ./ mounts are files of the repo, the image drops root."""
    declared = set(COMPOSE.get("volumes") or {})
    used = set()
    for svc in SERVICES.values():
        for src in _mounts(svc).values():
            if src.startswith("./"):
                assert (ROOT / src).is_file(), src
            else:
                assert src in declared, src
                used.add(src)
    assert used == declared
    assert "\nUSER soundmon" in DOCKERFILE
    for folder in ("soundmon", "gateway", "workers", "dashboard", "firmware"):
        assert f"COPY {folder} ./{folder}" in DOCKERFILE
    # the directories the volumes mount over belong to soundmon, so fresh volumes do too
    assert "mkdir -p /data /srv/mosquitto && chown soundmon:soundmon /data /srv/mosquitto" in DOCKERFILE


def test_healthcheck_modules_exist():
    """Health checks that run python modules name modules of this project."""
    import importlib

    for svc in SERVICES.values():
        test = svc.get("healthcheck", {}).get("test", [])
        if test[1:2] == ["python"] and "-m" in test:
            importlib.import_module(test[test.index("-m") + 1])


def test_rabbitmq_is_an_opt_in_profile_with_persistent_data():
    """RabbitMQ runs only with --profile rabbitmq, keeps its data, and has a fixed node name."""
    rmq = SERVICES["rabbitmq"]
    assert rmq["profiles"] == ["rabbitmq"] and rmq["hostname"] == "rabbitmq"
    assert _mounts(rmq)["/var/lib/rabbitmq"] == "rabbitmq-data"
    assert "amqp://soundmon:" in ENV_EXAMPLE and "@rabbitmq:5672//" in ENV_EXAMPLE
