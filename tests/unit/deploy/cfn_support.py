"""Configs the CloudFormation export is tested with, and a small intrinsic resolver."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from s3flow.deploy import CloudFormationExport, dynamodb_table_prefix, export_cloudformation
from s3flow.settings import Settings, load_settings
from s3flow.state.dynamodb.tables import table_definitions

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("**/*.toml"))

LINE_COUNT: dict[str, Any] = {
    "pipelines": [
        {
            "name": "counts",
            "processor": "line-count",
            "bucket": "incoming",
            "prefix": "logs/",
            "suffix": ".log",
            "queue": "counts-events",
            "output": "s3://results/counts/",
            "concurrency": 32,
        }
    ]
}

JOBS_DYNAMODB: dict[str, Any] = {
    "state": {"url": "dynamodb://acme-dev-state"},
    "jobs": {"project": "acme", "branch": "dev", "cors_origins": ["https://app.example.com"]},
    "templates": [
        {"name": "count", "steps": [{"processor": "line-count"}]},
        {"name": "bundle", "steps": [{"processor": "zip"}], "output_prefix": "bundles/"},
    ],
    "web": {"tokens": ["sha256:" + "0" * 64]},
    **LINE_COUNT,
}

NDJSON_DYNAMODB: dict[str, Any] = {
    "state": {"url": "dynamodb://lake"},
    "worker": {"shutdown_grace_s": 300, "log_format": "json"},
    "pipelines": [
        {
            "name": "events",
            "processor": "ndjson-manifest",
            "bucket": "lake-raw",
            "prefix": "events/",
            "queue": "lake-events",
            "dlq": "lake-dlq",
            "output": "s3://lake-raw/manifests/",
            "validation": {"suffixes": [".ndjson"]},
            "options": {"dataset": "events"},
        },
        {
            "name": "compact",
            "processor": "parquet-compact",
            "bucket": "lake-raw",
            "prefix": "manifests/",
            "queue": "lake-manifests",
            "dlq": "lake-dlq",
            "output": "s3://lake-parquet/events/",
            "on_permanent_error": "quarantine",
            "visibility_timeout_s": 900,
        },
    ],
}

CONFIGS: dict[str, dict[str, Any]] = {
    "line-count": LINE_COUNT,
    "jobs-dynamodb": JOBS_DYNAMODB,
    "ndjson-dynamodb": NDJSON_DYNAMODB,
}


def export(settings: Settings) -> CloudFormationExport:
    """The export as `s3flow provision --export cloudformation` makes it."""
    prefix = dynamodb_table_prefix(settings)
    tables = table_definitions(prefix) if prefix is not None else None
    return export_cloudformation(settings, tables=tables)


def settings_of(name: str) -> Settings:
    """A config of :data:`CONFIGS` by name, or an example file's path."""
    if name in CONFIGS:
        return Settings(**CONFIGS[name])
    return load_settings(name)


PSEUDO = {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws"}


def resolve(value: Any, params: dict[str, str]) -> Any:
    """``value`` with ``Fn::Sub`` and ``Ref`` to parameters and pseudo parameters resolved."""
    names = {**PSEUDO, **params}
    if isinstance(value, list):
        return [resolve(v, params) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Fn::Sub"} and isinstance(value["Fn::Sub"], str):

        def one(m: re.Match[str]) -> str:
            inner = m.group(1)
            if inner.startswith("!"):
                return "${" + inner[1:] + "}"
            return names.get(inner, m.group(0))  # a resource attribute stays

        return re.sub(r"\$\{([^}]*)\}", one, value["Fn::Sub"])
    if set(value) == {"Ref"} and value["Ref"] in names:
        return names[value["Ref"]]
    return {k: resolve(v, params) for k, v in value.items()}


def defaults(template: dict[str, Any]) -> dict[str, str]:
    """Every parameter's default, as CloudFormation passes it (a string)."""
    return {k: str(p["Default"]) for k, p in template["Parameters"].items()}
