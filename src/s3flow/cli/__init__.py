"""The ``s3flow`` command line (Typer + Rich): one module per command group.

:mod:`.common` holds what they share. Pipelines add their own commands
(``s3flow run csv-to-kafka``, ``s3flow manifests``...) through the processor
registry's CLI extensions, so this package never imports a pipeline.
"""

from __future__ import annotations

import importlib

from s3flow.cli.common import app, run_app
from s3flow.processors.registry import cli_extensions

__all__ = ["app", "main"]

# Each module registers its commands on import; this order is the order of `--help`.
for _name in (
    "worker",
    "setup",
    "status",
    "files",
    "state",
    "dlq",
    "backfill",
    "local",
    "jobs",
    "upload",
    "web",
    "run",
):
    importlib.import_module(f"s3flow.cli.{_name}")


def _register_pipeline_commands() -> None:
    for register in cli_extensions():
        register(app, run_app)


_register_pipeline_commands()


def main() -> None:
    """Console-script entry point."""
    app()
