"""CLI commands of the ``ndjson-to-parquet`` pipeline (attached through the registry).

``s3flow manifests list|show|pending|seal|retry`` (:mod:`.cli_manifests`) and
``s3flow run compact s3://.../<id>.json`` (:mod:`.cli_compact`).
"""

from __future__ import annotations

import typer

from s3flow.pipelines.ndjson_parquet import cli_compact, cli_manifests


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Attach this pipeline's commands to ``s3flow`` and ``s3flow run``."""
    cli_manifests.register(app, run_app)
    cli_compact.register(app, run_app)
