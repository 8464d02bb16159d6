"""s3flow: turn files landing in object storage into processed outputs, reliably and fast.

The public API is re-exported lazily: ``import s3flow`` (or ``s3flow.errors``)
imports nothing else until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Ack": "s3flow.worker.outcomes",
    "BaseProcessor": "s3flow.processors.base",
    "ConfigError": "s3flow.errors",
    "CorruptDataError": "s3flow.errors",
    "DeadLetter": "s3flow.worker.outcomes",
    "Disposition": "s3flow.errors",
    "Envelope": "s3flow.events",
    "EnvelopeError": "s3flow.errors",
    "FileSink": "s3flow.sinks.base",
    "InvalidInputError": "s3flow.errors",
    "LocalDirSink": "s3flow.sinks.local",
    "LocalEndpoint": "s3flow.local.endpoint",
    "ObjectEvent": "s3flow.events",
    "ObjectMissingError": "s3flow.errors",
    "OptionsProcessor": "s3flow.processors.base",
    "PermanentError": "s3flow.errors",
    "PipelineContext": "s3flow.processors.base",
    "PipelineSettings": "s3flow.settings",
    "ProcessContext": "s3flow.processors.base",
    "Processor": "s3flow.processors.base",
    "Release": "s3flow.worker.outcomes",
    "Result": "s3flow.processors.base",
    "Retry": "s3flow.worker.outcomes",
    "RetryableError": "s3flow.errors",
    "S3Sink": "s3flow.sinks.s3",
    "S3flowError": "s3flow.errors",
    "Settings": "s3flow.settings",
    "Sink": "s3flow.sinks.base",
    "Split": "s3flow.worker.outcomes",
    "TooLargeError": "s3flow.errors",
    "UndecodableContentError": "s3flow.errors",
    "Worker": "s3flow.worker.engine",
    "WorkerObserver": "s3flow.worker.handler",
    "build_runtimes": "s3flow.app",
    "create_processor": "s3flow.processors.registry",
    "load_settings": "s3flow.settings",
    "parse_body": "s3flow.events",
    "provision": "s3flow.provisioning",
    "queue_status": "s3flow.ops.status",
    "register_processor": "s3flow.processors.registry",
    "run_worker": "s3flow.app",
}

__all__ = [
    "Ack",
    "BaseProcessor",
    "ConfigError",
    "CorruptDataError",
    "DeadLetter",
    "Disposition",
    "Envelope",
    "EnvelopeError",
    "FileSink",
    "InvalidInputError",
    "LocalDirSink",
    "LocalEndpoint",
    "ObjectEvent",
    "ObjectMissingError",
    "OptionsProcessor",
    "PermanentError",
    "PipelineContext",
    "PipelineSettings",
    "ProcessContext",
    "Processor",
    "Release",
    "Result",
    "Retry",
    "RetryableError",
    "S3Sink",
    "S3flowError",
    "Settings",
    "Sink",
    "Split",
    "TooLargeError",
    "UndecodableContentError",
    "Worker",
    "WorkerObserver",
    "__version__",
    "build_runtimes",
    "create_processor",
    "load_settings",
    "parse_body",
    "provision",
    "queue_status",
    "register_processor",
    "run_worker",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 's3flow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from s3flow.app import build_runtimes, run_worker
    from s3flow.errors import (
        ConfigError,
        CorruptDataError,
        Disposition,
        EnvelopeError,
        InvalidInputError,
        ObjectMissingError,
        PermanentError,
        RetryableError,
        S3flowError,
        TooLargeError,
        UndecodableContentError,
    )
    from s3flow.events import Envelope, ObjectEvent, parse_body
    from s3flow.local.endpoint import LocalEndpoint
    from s3flow.ops.status import queue_status
    from s3flow.processors.base import (
        BaseProcessor,
        OptionsProcessor,
        PipelineContext,
        ProcessContext,
        Processor,
        Result,
    )
    from s3flow.processors.registry import create_processor, register_processor
    from s3flow.provisioning import provision
    from s3flow.settings import PipelineSettings, Settings, load_settings
    from s3flow.sinks.base import FileSink, Sink
    from s3flow.sinks.local import LocalDirSink
    from s3flow.sinks.s3 import S3Sink
    from s3flow.worker.engine import Worker
    from s3flow.worker.handler import WorkerObserver
    from s3flow.worker.outcomes import Ack, DeadLetter, Release, Retry, Split
