"""The one validated settings object.

Sources, highest priority first: explicit overrides (CLI flags), ``S3FLOW_*``
environment variables (nested with ``__``, e.g. ``S3FLOW_AWS__REGION``), the
TOML file (``-c s3flow.toml`` or ``S3FLOW_CONFIG``), defaults. Unknown keys are
errors that name the key. The field descriptions drive ``docs/configuration.md``
and the CLI help (``s3flow config-reference``).

Modules: ``base`` (the model base, [aws], [worker], [local], [state]),
``executors`` ([pipelines.executors.*]), ``pipelines`` ([[pipelines]], validation,
routes), ``jobs`` ([jobs], [[templates]], [web] and the pipelines derived from
[jobs]), ``environment`` (the ``S3FLOW_*`` source: lists by index, the variable
named in errors), ``loading`` (the root ``Settings`` and ``load_settings``). Import
from ``s3flow.settings``.
"""

from __future__ import annotations

from s3flow.settings.base import (
    AwsSettings,
    ByteRangeChecked,
    LocalSettings,
    OptionalRegex,
    ProcessCount,
    Regex,
    StateSettings,
    WorkerSettings,
    check_byte_range,
    check_regex,
    codec_info,
    text_codec,
)
from s3flow.settings.executors import (
    DEFAULT_CONTAINER_COMMAND,
    EXECUTOR_NAMES,
    BatchExecutorSettings,
    EcsExecutorSettings,
    ExecutorName,
    ExecutorsSettings,
    PoolExecutorSettings,
    SubprocessExecutorSettings,
    results_prefix,
)
from s3flow.settings.jobs import (
    JOBS_BRIDGE,
    JobsSettings,
    StepSettings,
    TemplateSettings,
    WebSettings,
    bridge_pipeline,
    name_part,
    processing_pipeline,
)
from s3flow.settings.loading import (
    CONFIG_ENV,
    Settings,
    configured_by_environment,
    error_lines,
    format_validation_error,
    load_settings,
)
from s3flow.settings.pipelines import PipelineSettings, RouteSettings, ValidationSettings

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONTAINER_COMMAND",
    "EXECUTOR_NAMES",
    "JOBS_BRIDGE",
    "AwsSettings",
    "BatchExecutorSettings",
    "ByteRangeChecked",
    "EcsExecutorSettings",
    "ExecutorName",
    "ExecutorsSettings",
    "JobsSettings",
    "LocalSettings",
    "OptionalRegex",
    "PipelineSettings",
    "PoolExecutorSettings",
    "ProcessCount",
    "Regex",
    "RouteSettings",
    "Settings",
    "StateSettings",
    "StepSettings",
    "SubprocessExecutorSettings",
    "TemplateSettings",
    "ValidationSettings",
    "WebSettings",
    "WorkerSettings",
    "bridge_pipeline",
    "check_byte_range",
    "check_regex",
    "codec_info",
    "configured_by_environment",
    "error_lines",
    "format_validation_error",
    "load_settings",
    "name_part",
    "processing_pipeline",
    "results_prefix",
    "text_codec",
]
