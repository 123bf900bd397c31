"""``datapipe ui``: serve the web view of the pipeline (needs the ``ui`` extra: Starlette + uvicorn).

Registered by the core's own plugin (``datapipe.builtins``) through the ``datapipe_cli`` hook, so
``datapipe.cli`` does not change and nothing of Starlette is imported until the command runs. The
command gets the CLI's context object (``datapipe.cli.CliContext``: ``app``, ``executor()``,
``callbacks()``, ``debug``) from click and does not import ``datapipe.cli`` (which loads the plugins).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Optional

import click

from datapipe.run_callback import RunCallback

TOKEN_ENV = "DATAPIPE_UI_TOKEN"


class UiUsageError(click.ClickException):
    """Bad usage, one line, exit code 2 (like the CLI's own usage errors)."""

    exit_code = 2


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) resolves only to loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as e:
        raise UiUsageError(f"--host {host!r}: cannot resolve ({e})") from e
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


@click.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; loopback unless told.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option(
    "--token",
    default=None,
    envvar=TOKEN_ENV,
    help=f"Require this token on every request (env {TOKEN_ENV}); mandatory with a non-loopback --host.",
)
@click.option("--read-only", is_flag=True, help="Hide and refuse every action (run, run failed keys, reset).")
@click.pass_obj
def ui(obj: Any, host: str, port: int, token: Optional[str], read_only: bool) -> None:
    """Serve a web view of the pipeline: graph, steps, tables, runs with live progress, /metrics."""
    if not is_loopback(host) and not token:
        raise UiUsageError(
            f"--host {host} is not a loopback address: anyone who can reach it could run and reset steps; "
            f"give --token (or set {TOKEN_ENV})"
        )
    try:
        import uvicorn

        from datapipe.ui.server import create_app
    except ImportError as e:
        raise UiUsageError(f"datapipe ui needs the ui extra: pip install 'datapipe-core[ui]' ({e})") from e
    plugin_callbacks = obj.callbacks(RunCallback())  # OpenTelemetry and plugins' listeners, as for `run`
    web = create_app(obj.app, token or None, read_only, executor=obj.executor(), callbacks=[plugin_callbacks])
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"datapipe ui: http://{shown}:{port}/" + (" (token required)" if token else ""), err=True)
    uvicorn.run(web, host=host, port=port, log_level="debug" if obj.debug else "warning", access_log=obj.debug)


__all__ = ["ui", "is_loopback", "TOKEN_ENV"]
