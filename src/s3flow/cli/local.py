"""`s3flow local` and `s3flow demo`: zero-setup tooling."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from s3flow.cli.common import (
    ConfigOpt,
    app,
    console,
    err_console,
    exit_on_error,
    fail,
    settings_from,
    state,
)
from s3flow.errors import S3flowError
from s3flow.logs import setup_logging


@app.command()
def local(
    config: ConfigOpt = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            min=0,
            max=65535,
            help="Port on 127.0.0.1 (0 = a free one); default: \\[local] port (4566).",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            help="Bind address; keep it on loopback. Default: \\[local] host (127.0.0.1).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the embedded AWS endpoint (moto server: S3, SQS, DynamoDB) until Ctrl-C or SIGTERM."""
    from s3flow.local.endpoint import LocalEndpoint, interrupt_on_signals
    from s3flow.web.auth import is_loopback

    with exit_on_error():
        settings = settings_from(config).local
    port = settings.port if port is None else port
    host = settings.host if host is None else host
    if not is_loopback(host):
        err_console.print(
            f"warning: the endpoint listens on {host}: it has no authentication, so anyone "
            "who can reach this machine can read and change its buckets, queues and "
            "tables. Keep it on 127.0.0.1 unless other machines must reach it.",
            highlight=False,
        )

    # SIGTERM and SIGINT: stop the server, wait for it, exit 0. If this process dies
    # without cleaning up (SIGKILL) the server notices and exits by itself.
    with interrupt_on_signals():
        try:
            endpoint = LocalEndpoint(host, port)
            endpoint.start()
        except KeyboardInterrupt:  # start() has stopped the server already
            console.print("stopped")
            return
        except S3flowError as exc:
            raise fail(exc) from exc
        try:
            console.print(f"local AWS endpoint running at [bold]{endpoint.url}[/]")
            console.print(f"  export AWS_ENDPOINT_URL={endpoint.url}")
            for k, v in endpoint.env().items():
                if k != "AWS_ENDPOINT_URL":
                    console.print(f"  export {k}={v}")
            console.print("press Ctrl-C to stop")
            while endpoint.pid is not None:
                time.sleep(0.5)
            raise fail(RuntimeError("the local AWS endpoint exited unexpectedly"))
        except KeyboardInterrupt:
            pass
        finally:
            endpoint.stop()
        console.print("stopped")


@app.command()
def demo(
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            "--endpoint-url", help="Use this endpoint instead of starting an embedded one."
        ),
    ] = None,
) -> None:
    """Zero-setup end to end: embedded endpoint, provision, upload samples, process, summary."""
    from s3flow.local.demo import run_demo

    setup_logging("text", state["log_level"] or "WARNING")
    with exit_on_error():
        code = run_demo(console, endpoint_url=endpoint_url)
    raise typer.Exit(code)
