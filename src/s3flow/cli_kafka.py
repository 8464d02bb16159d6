"""CLI commands of the ``csv-to-kafka`` pipeline (attached by :mod:`s3flow.cli`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Attach this pipeline's commands to the ``s3flow`` app and its ``run`` group."""
