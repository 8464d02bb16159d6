"""s3flow: turn files landing in object storage into processed outputs, reliably and fast."""

from __future__ import annotations

__version__ = "0.1.0"

from s3flow.app import build_runtimes, queue_status, run_worker
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
    UndecodableContentError,
)
from s3flow.events import Envelope, ObjectEvent, parse_body
from s3flow.local import LocalEndpoint
from s3flow.processors import (
    BaseProcessor,
    ProcessContext,
    Processor,
    Result,
    create_processor,
    register_processor,
)
from s3flow.provision import provision
from s3flow.settings import PipelineSettings, Settings, load_settings
from s3flow.sinks import LocalDirSink, S3Sink, Sink
from s3flow.worker.engine import Worker, WorkerObserver
from s3flow.worker.outcomes import Ack, DeadLetter, Release, Retry

__all__ = [
    "Ack",
    "BaseProcessor",
    "ConfigError",
    "CorruptDataError",
    "DeadLetter",
    "Disposition",
    "Envelope",
    "EnvelopeError",
    "InvalidInputError",
    "LocalDirSink",
    "LocalEndpoint",
    "ObjectEvent",
    "ObjectMissingError",
    "PermanentError",
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
