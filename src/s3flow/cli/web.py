"""`s3flow web`: serve the HTTP API (and the progress consumer); `s3flow web hash-token`."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from s3flow.cli.common import ConfigOpt, app, console, err_console, fail, settings_from
from s3flow.errors import S3flowError

if TYPE_CHECKING:
    from s3flow.web.server import WebServer

web_app = typer.Typer()
app.add_typer(web_app, name="web")


@web_app.callback(invoke_without_command=True)
def web(
    ctx: typer.Context,
    config: ConfigOpt = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="Bind address (default: web.host, 127.0.0.1). Beyond loopback it needs "
            "web.tokens.",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", help="Port (default: web.port, 8080; 0 = a free one).", show_default=False
        ),
    ] = None,
    progress: Annotated[
        bool,
        typer.Option(
            "--progress/--no-progress",
            help="Run the progress consumer (progress queue -> state store) in this process.",
        ),
    ] = True,
) -> None:
    """Serve the HTTP API for upload jobs until SIGTERM or Ctrl-C (then exit 0).

    Presigned uploads, job status and live progress (server-sent events).
    With a jobs table it also consumes the progress queue into the state
    store. Without web.tokens it only listens on loopback.
    """
    if ctx.invoked_subcommand is not None:
        return
    from s3flow.web.server import serve

    def started(server: WebServer) -> None:
        console.print(f"s3flow web listening on [bold]{server.url}[/] (Ctrl-C to stop)")

    try:
        over: dict[str, Any] = {}
        if host is not None:
            over["host"] = host
        if port is not None:
            over["port"] = port
        settings = settings_from(config, {"web": over} if over else None)
        asyncio.run(serve(settings, consume_progress=progress, on_started=started))
    except S3flowError as exc:
        raise fail(exc) from exc
    except KeyboardInterrupt:  # Ctrl-C while starting, before the server handles signals
        pass
    console.print("stopped")


@web_app.command("hash-token")
def hash_token_cmd(
    generate: Annotated[
        bool,
        typer.Option("--generate", help="Make a new random token and print it with its hash."),
    ] = False,
) -> None:
    """Print the 'sha256:<hex>' of a token (from stdin or a prompt) for web.tokens.

    With --generate, print a new token on the first line and its hash on the
    second. The server stores only hashes; clients send the token itself
    (Authorization: Bearer <token>).
    """
    from s3flow.web.auth import generate_token, hash_token

    if generate:
        token = generate_token()
        print(token)
        print(hash_token(token))
        err_console.print(
            "first line: the token (give it to clients; it is not stored anywhere); second: "
            "its hash for web.tokens",
            highlight=False,
        )
        return
    if sys.stdin.isatty():
        token = typer.prompt("token", hide_input=True, confirmation_prompt=True)
    else:
        token = sys.stdin.readline()
    token = token.strip()
    if not token:
        raise fail(S3flowError("no token given: type one, pipe one in, or use --generate"))
    print(hash_token(token))
