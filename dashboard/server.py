"""``soundmon dashboard``: serve the API and the live page with uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import FrameType

import click
from pydantic import ValidationError

from soundmon.settings import Settings


@click.command("dashboard")
@click.option("--host", default=None, help="Interface to listen on [default: SOUNDMON_HTTP_HOST].")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="TCP port [default: SOUNDMON_HTTP_PORT].")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Data directory holding soundmon.db [default: SOUNDMON_DATA].")
def dashboard_command(host: str | None, port: int | None, data_dir: Path | None) -> None:
    """Serve the HTTP API and the dashboard (needs SOUNDMON_API_TOKEN; creates user admin
    on first start)."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings:\n{exc}") from exc
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    if not (settings.api_token or "").strip():
        raise click.ClickException(
            "SOUNDMON_API_TOKEN is not set; refusing to serve the API without a token. "
            "Set it (e.g. SOUNDMON_API_TOKEN=$(python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')), or start everything with `soundmon up`, "
            "which generates one."
        )

    from soundmon.users import ADMIN_PASSWORD_FILE, ensure_admin

    admin, password = ensure_admin(settings.data_dir, settings.db_path)
    if password:
        click.echo(f"dashboard sign-in: user {admin}, password in "
                   f"{settings.data_dir / ADMIN_PASSWORD_FILE}")

    import uvicorn  # the web stack only when serving

    from dashboard.app import create_app

    app = create_app(settings)
    host = host or settings.http_host
    port = port or settings.http_port
    hub = app.state.hub

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # open SSE streams never end by themselves: end them so shutdown does not wait
            with contextlib.suppress(RuntimeError):  # no loop running yet
                asyncio.get_running_loop().call_soon_threadsafe(hub.close_clients)
            super().handle_exit(sig, frame)

    click.echo(f"soundmon dashboard on http://{host}:{port}/ (API: Bearer SOUNDMON_API_TOKEN)")
    config = uvicorn.Config(app, host=host, port=port, log_level="info",
                            timeout_graceful_shutdown=3)  # backstop for stuck clients
    Server(config).run()
