"""What the parent and the worker processes of a compaction exchange, as plain data.

The CPU work of a compaction runs as synchronous functions in worker processes
(:mod:`.scan`, :mod:`.write`): the ``local`` executor runs them in a process
pool, the ``spark`` executor in Spark tasks. Everything they receive and return
is defined here and is picklable: where data lives (:class:`Storage`,
:class:`Target`), the tasks and their results, and errors as data
(:class:`TaskError`, re-raised in the parent as :class:`RemoteError`). Each
worker reaches S3 itself (:func:`s3_client`, built from the ``[aws]`` settings
in a :class:`Storage`, credentials from the worker's own credential chain), so
no data passes through the parent process.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from s3flow.errors import Disposition, PermanentError, S3flowError
from s3flow.pipelines.ndjson_parquet.compaction.manifest import InputFile
from s3flow.settings import AwsSettings

MIB = 1024 * 1024


class MalformedDataError(PermanentError):
    """An input file has lines that are not JSON objects (policy ``fail``)."""


class InputChangedError(PermanentError):
    """An input file is missing or differs from the version the manifest lists."""


# --- where data lives ----------------------------------------------------------


@dataclass(frozen=True)
class Storage:
    """How worker processes read inputs and write outputs.

    ``kind="s3"``: each worker process builds one boto3 client with
    :func:`s3flow.aws.sync_client` from ``aws`` (the worker's ``[aws]``
    settings, endpoints pinned with :func:`s3flow.aws.pin_endpoints`): the
    same endpoint, region, profile, retries, timeouts and addressing style as
    the worker's own clients. Credentials are not passed: the worker process
    resolves them from the standard chain (environment inherited from the
    parent, profile, container/instance role) and the SDK refreshes temporary
    ones, so long compactions outlive them. ``aws=None``: default settings.
    ``kind="local"``: input ``bucket/key`` is the file ``<root>/<bucket>/<key>``
    (benchmarks and tests of the conversion alone).
    """

    kind: Literal["s3", "local"] = "s3"
    root: str | None = None
    aws: AwsSettings | None = field(default=None, hash=False)


@dataclass(frozen=True)
class Target:
    """Where parts go: ``s3://bucket/prefix`` or a local directory."""

    kind: Literal["s3", "local"]
    bucket: str = ""
    prefix: str = ""
    directory: str = ""

    def key(self, relative: str) -> str:
        """The full key (S3) or path (local) of ``relative``."""
        if self.kind == "s3":
            return self.prefix + relative
        return str(Path(self.directory, relative))

    def uri(self, relative: str) -> str:
        """``s3://bucket/key`` or the local path."""
        if self.kind == "s3":
            return f"s3://{self.bucket}/{self.prefix}{relative}"
        return self.key(relative)


_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()
_POOL = 16  # HTTP connections per worker-process client (parallel multipart uploads)


def s3_client(storage: Storage) -> Any:
    """The boto3 S3 client for ``storage`` (one per process and settings)."""
    from s3flow.aws import sync_client

    aws = storage.aws if storage.aws is not None else AwsSettings()
    key = aws.model_dump_json()
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = sync_client(aws, "s3", pool=_POOL)
        return client


def scratch(directory: str) -> str:
    """``directory`` when it exists here (it may not on a Spark executor), else the temp dir."""
    return directory if os.path.isdir(directory) else tempfile.gettempdir()


# --- tasks and results ---------------------------------------------------------


@dataclass(frozen=True)
class FileTask:
    """Scan one input file."""

    index: int
    file: InputFile
    storage: Storage
    scratch_dir: str
    unit_bytes: int
    malformed: Literal["skip", "quarantine", "fail"]
    spill_dir: str | None = None  # None: do not keep the tables (spark stage 1)
    hint_key: str | None = None  # reuse the previous file's schema as a parse hint
    #: The pipeline's ``max_uncompressed_bytes``: a compressed file decompressing to more
    #: is held out (a decompression bomb). None: no limit.
    max_uncompressed_bytes: int | None = None


@dataclass(frozen=True)
class UnitInfo:
    """One line-aligned piece of an input file, parsed."""

    unit: int
    rows: int
    input_bytes: int  # uncompressed NDJSON bytes
    schema: pa.Schema
    spill: str | None


@dataclass
class FileScan:
    """What scanning one input file found."""

    index: int
    units: list[UnitInfo]
    compressed_bytes: int = 0
    uncompressed_bytes: int = 0
    encoding: str = "identity"
    malformed_lines: int = 0
    samples: list[str] = field(default_factory=list)
    quarantine: str | None = None  # reason, when the whole file is held out
    #: Held out because it changed or went since the manifest was sealed (a newer upload
    #: of the key has its own record and manifest): not the object's fault, not tagged.
    superseded: bool = False


@dataclass(frozen=True)
class UnitRef:
    """A unit placed in a part."""

    file_index: int
    unit: int
    rows: int
    input_bytes: int
    spill: str | None


@dataclass(frozen=True)
class WriteSettings:
    """Parquet writer settings shared by calibration and parts."""

    compression: str
    compression_level: int | None
    row_group_bytes: int


@dataclass(frozen=True)
class PartTask:
    """Write one Parquet part."""

    n: int
    relative_key: str
    units: tuple[UnitRef, ...]
    schema: pa.Schema
    files: dict[int, FileTask]  # to scan again when a unit has no spill (spark)
    writer: WriteSettings
    target: Target
    storage: Storage
    scratch_dir: str


@dataclass(frozen=True)
class CalibrateTask:
    """Measure Parquet bytes per input byte on the first units."""

    units: tuple[UnitRef, ...]
    schema: pa.Schema
    files: dict[int, FileTask]
    writer: WriteSettings


@dataclass(frozen=True)
class PartResult:
    """One written part."""

    n: int
    relative_key: str
    uri: str
    rows: int
    bytes: int
    row_groups: int


# --- error capture (results cross process boundaries as plain data) -----------


@dataclass(frozen=True)
class TaskError:
    """An exception raised in a worker, as data (exception pickling is not reliable)."""

    error_class: str
    message: str
    disposition: str


def capture(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap ``fn`` so it returns a :class:`TaskError` instead of raising."""
    return _Captured(fn)


class _Captured:
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, task: Any) -> Any:
        try:
            return self.fn(task)
        except S3flowError as exc:
            return TaskError(exc.error_class, str(exc), exc.disposition.value)
        except Exception as exc:  # anything else: retryable, with its type in the message
            file = getattr(task, "file", None)  # a file's scan: which file
            where = f"{file.uri()}: " if isinstance(file, InputFile) else ""
            # pyarrow refusing the data (invalid, a type it cannot take) refuses it again
            # on every retry: permanent. Its I/O and memory errors may pass: retryable.
            deterministic = isinstance(exc, _ARROW_DATA_ERRORS)
            return TaskError(
                type(exc).__name__ if deterministic else "ProcessorError",
                f"{where}{type(exc).__name__}: {exc}",
                (Disposition.PERMANENT if deterministic else Disposition.RETRYABLE).value,
            )


_ARROW_DATA_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


class RemoteError(S3flowError):
    """A worker's error, re-raised in the parent with the worker's class name and reason."""

    def __init__(self, err: TaskError) -> None:
        super().__init__(err.message)
        self.disposition = Disposition(err.disposition)
        self._class = err.error_class

    @property
    def error_class(self) -> str:
        """The class name of the error in the worker."""
        return self._class
