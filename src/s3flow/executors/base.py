"""The executor protocol: run one object somewhere, get a ``Result`` or a classified error.

An :class:`ObjectJob` says everything a run needs: the processor (a spec any process can
resolve) and its options, the event, the output URI and the ``[aws]`` settings. An
:class:`Executor` runs it in the worker's loop, a process pool, a subprocess, an ECS
task or a Batch job, and returns the processor's :class:`~s3flow.processors.base.Result`
or raises an :class:`~s3flow.errors.S3flowError` classified as the processor's error
was. Cancelling ``run`` (worker shutdown) stops the run wherever it is.

Runs outside this process report through one JSON document, the single line
``s3flow run`` prints on stdout (and writes to ``$S3FLOW_RESULT_URI`` when set)::

    {"status": "done", "processor": ..., "source": "s3://b/k", "outputs": [...],
     "counters": {...}, "detail": {...}, "seconds": 0.12}
    {"status": "error", "processor": ..., "source": ..., "error_class": "CorruptDataError",
     "disposition": "permanent", "error": "..."}

and its exit code: 0 done, 2 permanent (bad input: not worth retrying), 1 retryable.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from s3flow import errors
from s3flow.errors import (
    Disposition,
    JobTimeoutError,
    PermanentError,
    RetryableError,
    S3flowError,
)
from s3flow.events import ObjectEvent
from s3flow.processors.base import Result
from s3flow.settings import AwsSettings

#: Exit codes of the one-object contract (``s3flow run``, a container).
EXIT_DONE = 0
EXIT_RETRYABLE = 1
EXIT_PERMANENT = 2

Progress = Callable[[int], None]


@dataclass(frozen=True)
class ObjectJob:
    """One object to run a processor on, wherever it runs (picklable, JSON-able)."""

    processor: str
    options: Mapping[str, Any]
    event: ObjectEvent
    output: str
    aws: AwsSettings = field(default_factory=AwsSettings)
    pipeline: str = "run"
    route: str = "default"
    worker_id: str = ""
    max_uncompressed_bytes: int | None = None
    #: Seconds the run may take from its start (what is left of the pipeline's
    #: ``job_timeout_s``); None: no limit. Every executor stops a run that goes on past
    #: it where it runs and raises :func:`job_timed_out`'s error.
    timeout_s: float | None = None

    @property
    def source(self) -> str:
        """``s3://bucket/key`` of the object."""
        return self.event.uri()


class Executor(Protocol):
    """Where a processor runs. Built per pipeline; ``close`` releases what it holds."""

    name: str

    async def run(self, job: ObjectJob, progress: Progress | None = None) -> Result:
        """Run ``job``; return its Result or raise its classified S3flowError."""
        ...

    async def close(self) -> None:
        """Stop what is left (processes, tasks) and release clients; idempotent."""
        ...


def job_timed_out(job: ObjectJob, where: str, how: str) -> JobTimeoutError:
    """The error of ``job``'s run on ``where`` stopped (``how``) at its ``timeout_s``."""
    return JobTimeoutError(
        f"{job.source}: the run on {where} went on past job_timeout_s (the "
        f"{job.timeout_s:.0f} s left of it when the run started) and was {how}; if such "
        f"files need longer, raise pipeline {job.pipeline!r}'s job_timeout_s"
    )


class ExecutorError(S3flowError):
    """An error a run elsewhere reported (or its exit code implied), classified as it was."""

    def __init__(self, message: str, *, error_class: str, disposition: Disposition) -> None:
        super().__init__(message)
        self._error_class = error_class
        self.disposition = disposition

    @property
    def error_class(self) -> str:
        """The remote error's class name (as written to DLQ attributes and the history)."""
        return self._error_class


# --- result documents ------------------------------------------------------------------


def result_doc(result: Result, *, processor: str, source: str, seconds: float) -> dict[str, Any]:
    """The ``done`` document of a run."""
    return {
        "status": "done",
        "processor": processor,
        "source": source,
        "outputs": list(result.outputs),
        "counters": dict(result.counters),
        "detail": result.detail,
        "seconds": round(seconds, 3),
    }


def error_doc(err: S3flowError, *, processor: str, source: str) -> dict[str, Any]:
    """The ``error`` document of a run."""
    return {
        "status": "error",
        "processor": processor,
        "source": source,
        "error_class": err.error_class,
        "disposition": err.disposition.value,
        "error": str(err),
    }


def dump_doc(doc: Mapping[str, Any]) -> str:
    """One line of JSON (non-JSON values in ``detail`` become strings)."""
    return json.dumps(doc, default=str, ensure_ascii=False, separators=(",", ":"))


def parse_doc(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that is a result document, or None."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("status") in ("done", "error"):
            return doc
    return None


def result_from_doc(doc: Mapping[str, Any]) -> Result:
    """The Result a ``done`` document describes."""
    counters = doc.get("counters") or {}
    detail = doc.get("detail") or {}
    return Result(
        outputs=[str(o) for o in doc.get("outputs") or []],
        counters={str(k): v for k, v in counters.items() if isinstance(v, int | float)},
        detail=dict(detail) if isinstance(detail, dict) else {"detail": detail},
    )


def _error_classes() -> dict[str, type[S3flowError]]:
    return {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, S3flowError)
    }


def error_from_doc(doc: Mapping[str, Any]) -> S3flowError:
    """The error an ``error`` document describes: s3flow's own class when it has one
    (so the failure policy treats it exactly as an inline failure), else an
    :class:`ExecutorError` carrying the class name and disposition."""
    name = str(doc.get("error_class") or "ExecutorError")
    message = str(doc.get("error") or "no message")
    try:
        disposition = Disposition(str(doc.get("disposition")))
    except ValueError:
        disposition = Disposition.RETRYABLE
    cls = _error_classes().get(name)
    if cls is not None and cls.disposition is disposition:
        try:
            return cls(message)
        except TypeError:
            pass
    return ExecutorError(message, error_class=name, disposition=disposition)


def exit_code_for(err: S3flowError | None) -> int:
    """0 done, 1 retryable, 2 anything retrying will not fix (incl. a vanished object)."""
    if err is None:
        return EXIT_DONE
    return EXIT_RETRYABLE if err.disposition is Disposition.RETRYABLE else EXIT_PERMANENT


def error_for_exit(code: int | None, what: str, reason: str = "") -> S3flowError:
    """The error a run that left no result document implies by its exit code.

    2 is permanent; any other code, a signal (a negative code: killed by ``-code``) and
    none at all (never started), retryable.
    An exit 0 without a document is retryable too: the run did not say what it wrote.
    """
    why = f": {reason}" if reason else ""
    if code is not None and code < 0:  # killed by signal -code (asyncio's returncode)
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return RetryableError(f"{what} was killed by {name}{why}")
    if code == EXIT_PERMANENT:
        return PermanentError(f"{what} exited 2 (permanent error){why}")
    if code is None:
        return RetryableError(f"{what} ended without an exit code{why}")
    if code == EXIT_DONE:
        return RetryableError(f"{what} exited 0 but reported no result{why}")
    return RetryableError(f"{what} exited {code}{why}")
