"""`soundmon up` refuses clearly when the brokers are missing; the CLI lists every command."""

from __future__ import annotations

from click.testing import CliRunner

from soundmon import up
from soundmon.cli import COMMANDS, main


def test_up_without_brokers_says_how_to_install(monkeypatch, tmp_path):
    """With mosquitto and redis-server missing, `up` exits non-zero and names the install step."""
    monkeypatch.setattr(up, "find_binary", lambda candidates: None)
    result = CliRunner().invoke(main, ["up", "--data", str(tmp_path)])
    assert result.exit_code != 0
    assert "mosquitto and redis-server not found" in result.output
    assert "apt-get install mosquitto" in result.output


def test_every_command_has_help():
    """Each registered subcommand imports and prints its help."""
    for name in COMMANDS:
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)


def test_api_token_is_generated_once_and_kept(monkeypatch, tmp_path):
    """Without SOUNDMON_API_TOKEN, `up` makes a token, saves it (0600) and reuses it."""
    monkeypatch.delenv("SOUNDMON_API_TOKEN", raising=False)
    first = up.api_token(tmp_path)
    assert len(first) >= 24 and up.api_token(tmp_path) == first
    assert (tmp_path / "api-token").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("SOUNDMON_API_TOKEN", "from-env")
    assert up.api_token(tmp_path) == "from-env"


def test_the_worker_command_execs_celery_without_importing_the_app_first():
    """`soundmon worker` replaces itself with `celery -A workers.app`: importing the app
    before the exec (scipy, numba, Celery) would double a worker's start."""
    import subprocess
    import sys

    code = ("import sys; from soundmon.cli import main; cmd = main.get_command(None, 'worker');"
            "cmd.main(['--help'], standalone_mode=False); print('workers.app' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("False"), out.stdout
