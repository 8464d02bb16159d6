"""What every command shares: the Typer apps, consoles, shared options, errors, running.

A command's usual course: :func:`settings_or_exit`, then its work in
:func:`exit_on_error` (or :func:`with_store` / :func:`with_progress`, which
include it), then print; an s3flow error ends it with its message and exit 2.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from s3flow import __version__
from s3flow.errors import ConfigError, S3flowError
from s3flow.logs import setup_logging
from s3flow.settings import (
    CONFIG_ENV,
    PipelineSettings,
    Settings,
    StateSettings,
    configured_by_environment,
    load_settings,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from s3flow.state.base import StateStore

T = TypeVar("T")
E = TypeVar("E", bound=Enum)

app = typer.Typer(
    name="s3flow",
    help="Turn files landing in S3 into processed outputs: S3 -> SQS -> s3flow worker -> outputs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("s3flow.cli")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar=CONFIG_ENV,
        help=f"Config file (TOML); default ${CONFIG_ENV}, else ./s3flow.toml when present.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
LimitOpt = Annotated[int, typer.Option("--limit", help="At most this many rows.")]
state: dict[str, Any] = {"log_format": None, "log_level": None, "config_file": None}

#: Read when neither -c/--config nor $S3FLOW_CONFIG names a config file.
DEFAULT_CONFIG = Path("s3flow.toml")
_DEFAULT_STATE_URL = StateSettings.model_fields["url"].default


def _version(value: bool) -> None:
    if value:
        console.print(f"s3flow {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format", help="Log format: text or json (default from settings: text)."
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """s3flow: reliable, fast S3 -> SQS file processing."""
    if log_format is not None and log_format not in ("text", "json"):
        raise typer.BadParameter("must be 'text' or 'json'", param_hint="--log-format")
    if log_level is not None and log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise typer.BadParameter("must be DEBUG, INFO, WARNING or ERROR", param_hint="--log-level")
    state["log_format"] = log_format
    state["log_level"] = log_level.upper() if log_level else None


def settings_from(config: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    worker_over: dict[str, Any] = {}
    if state["log_format"]:
        worker_over["log_format"] = state["log_format"]
    if state["log_level"]:
        worker_over["log_level"] = state["log_level"]
    over = dict(overrides or {})
    if worker_over:
        over["worker"] = {**over.get("worker", {}), **worker_over}
    if config is None and not os.environ.get(CONFIG_ENV) and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    state["config_file"] = config if config is not None else os.environ.get(CONFIG_ENV)
    settings = load_settings(config, over)
    setup_logging(settings.worker.log_format, settings.worker.log_level)
    return settings


def fail(exc: BaseException) -> typer.Exit:
    # Escaped: messages quote config keys like [pipelines.options], which Rich
    # would take for markup; not wrapped, so they stay greppable.
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2 if isinstance(exc, S3flowError) else 1)


@contextmanager
def exit_on_error() -> Iterator[None]:
    """An s3flow error raised in the block ends the command (:func:`fail`: message, exit 2)."""
    try:
        yield
    except S3flowError as exc:
        raise fail(exc) from exc


def settings_or_exit(config: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    """:func:`settings_from`; a bad configuration ends the command."""
    with exit_on_error():
        return settings_from(config, overrides)


NO_STORE = "no state store configured (state.url = 'none')"


def note_new_store(settings: Settings) -> None:
    """Say so on stderr when the SQLite store an operator command opens does not exist
    yet: opening creates it empty, and the usual cause is a relative ``[state] url``
    (``sqlite:.s3flow/state.db``) read from another directory than the worker's."""
    from s3flow.state import sqlite_path

    try:
        path = sqlite_path(settings.state.url)
    except S3flowError:
        return  # opening the store says what is wrong with the URL
    if path is None or Path(path).exists():
        return
    where = Path(path).resolve()
    if (
        not state["config_file"]
        and not configured_by_environment()
        and settings.state.url == _DEFAULT_STATE_URL
    ):
        # Nothing configured at all: an empty store made here would only hide that.
        raise ConfigError(
            f"no config file (no -c/--config, no ${CONFIG_ENV}, no ./{DEFAULT_CONFIG} in "
            f"{Path.cwd()}) and no state store at {where}: run this in the directory the "
            "worker runs in, or pass the worker's config with -c"
        )
    hint = (
        f" [state] url {settings.state.url!r} is relative to the working directory "
        f"({Path.cwd()}): run this where the worker runs, or give an absolute "
        "'sqlite:///path' in the configuration."
        if not Path(path).is_absolute()
        else ""
    )
    err_console.print(
        f"note: no state store at {where} yet: it is created now, empty.{hint}",
        highlight=False,
        markup=False,
    )


def with_store(
    settings: Settings,
    fn: Callable[[StateStore], Awaitable[T]],
    *,
    missing: str = NO_STORE,
    prune: bool = True,
    read_only: bool = False,
) -> T:
    """Run ``fn`` on the opened state store; an s3flow error ends the command.

    ``missing`` is the error when no store is configured; ``prune=False`` keeps
    a SQLite store from pruning in the background while it is open; ``read_only``
    (``fn`` only reads) opens an existing SQLite file read-only, so that one this
    process cannot write (a read-only mount, a copy) can be read.
    """
    from s3flow.app import open_store

    async def go() -> T:
        async with open_store(settings, prune=prune, read_only=read_only) as store:
            if store is None:
                raise S3flowError(missing)
            return await fn(store)

    with exit_on_error():
        note_new_store(settings)
        return asyncio.run(go())


def with_progress(main: Callable[[Progress], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` with a progress display on stderr; an s3flow error ends the command."""
    from rich.progress import Progress

    # The display stops before an error is printed.
    with exit_on_error(), Progress(console=err_console) as progress:
        return asyncio.run(main(progress))


async def cancel_on_signals(main: Coroutine[Any, Any, T]) -> T:
    """Await ``main`` as a task that SIGTERM/SIGINT cancel (so it can still report)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def new_table(title: str, columns: Iterable[str]) -> Table:
    """A Rich table with these column headings."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    return table


#: ``-p``: a pipeline; left out, the only one configured (:func:`one_pipeline`).
PipelineOpt = Annotated[
    str | None, typer.Option("--pipeline", "-p", help="Pipeline (default: the only one).")
]


def status_option(statuses: type[E], value: str | None) -> E | None:
    """``--status`` as one of ``statuses`` (None when not given); a bad value is a usage
    error naming the valid ones ("'bogus' is not a file status: use one of ...")."""
    try:
        return statuses(value) if value else None
    except ValueError as exc:
        what = re.sub(r"(?<!^)(?=[A-Z])", " ", statuses.__name__).lower()  # "file status"
        allowed = ", ".join(str(s.value) for s in statuses)
        raise typer.BadParameter(
            f"{value!r} is not a {what}: use one of {allowed}", param_hint="--status"
        ) from exc


class RunGroup(TyperGroup):
    """``s3flow run``: a pipeline's own commands (``csv-to-kafka``, ``compact``) first; any
    other name is a processor, run on one object by the generic command
    (:mod:`s3flow.cli.run` sets :attr:`generic`)."""

    #: A click command (typer vendors its own click: kept untyped here).
    generic: ClassVar[Any] = None

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The named command, else (a processor name) the generic one-object command."""
        found = super().get_command(ctx, cmd_name)
        if found is None and RunGroup.generic is not None and not cmd_name.startswith("-"):
            return RunGroup.generic
        return found


run_app = typer.Typer(
    cls=RunGroup,
    help=(
        "Run one job to completion (batch mode): exit 0 on success, non-zero with the reason. "
        "Besides the commands below, `s3flow run PROCESSOR s3://bucket/key --output URI` runs "
        "any registered processor on one object (the subprocess/container contract: exit 0 "
        "done, 2 permanent, 1 retryable; one JSON result line on stdout; see "
        "`s3flow run line-count --help`)."
    ),
    no_args_is_help=True,
)
app.add_typer(run_app, name="run")


def one_pipeline(settings: Settings, name: str | None) -> PipelineSettings:
    """The pipeline called ``name``, or the only one configured."""
    if name:
        return settings.pipeline(name)
    from s3flow.app import select_pipelines  # s3flow.app is heavy: not at CLI start

    (first, *others) = select_pipelines(settings, None)  # ConfigError when there are none
    if others:
        names = ", ".join(p.name for p in settings.pipelines)
        raise S3flowError(f"several pipelines are configured ({names}): choose one with --pipeline")
    return first


def ts(t: float | None) -> str:
    """A unix time as local 'YYYY-MM-DD HH:MM:SS' ('-' for None)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"
