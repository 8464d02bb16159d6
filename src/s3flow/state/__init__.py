"""State store: file lifecycles, idempotency claims, checkpoints, locks, upload jobs.

:func:`open_state_store` builds the store a ``state.url`` names; use the
result with ``async with``::

    async with open_state_store("sqlite:.s3flow/state.db") as store:
        claim = await store.claim(oid, pipeline="p", owner="w1", ttl_s=90)

Retention: finished records expire ``retention_days`` after they finished
(SQLite: a background prune while the store is open; DynamoDB: TTL). See
``docs/operations.md`` ("Retention") for what expires when.

The two stores (:class:`SqliteStateStore`, :class:`DynamoStateStore`) are imported on
first use: the DynamoDB one brings the AWS SDK, which importing a processor's base
classes (``from s3flow import BaseProcessor``, through :mod:`s3flow.state.base`) or a
record type need not load.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3flow.errors import ConfigError
from s3flow.settings import AwsSettings
from s3flow.state import records
from s3flow.state.base import MaintenanceStore, StateStore
from s3flow.state.jobs import (
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    EventType,
    JobCursor,
    JobEvent,
    JobFile,
    JobOutput,
    JobPosition,
    JobRecord,
    JobStatus,
    JobStep,
    JobStore,
    StepStatus,
    apply_event,
    job_from_json,
    job_to_json,
)
from s3flow.state.lifecycle import DEFAULT_RETENTION_DAYS, retention_seconds
from s3flow.state.records import *  # noqa: F403 (its __all__: records, statuses, errors)

if TYPE_CHECKING:  # pragma: no cover - imported on first use (module __getattr__)
    from s3flow.state.dynamodb import DynamoStateStore
    from s3flow.state.sqlite import SqliteStateStore

#: the stores, by the module that defines each (imported when first asked for)
_LAZY: dict[str, str] = {
    "DynamoStateStore": "s3flow.state.dynamodb",
    "SqliteStateStore": "s3flow.state.sqlite",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 's3flow.state' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = [
    "TERMINAL_EVENTS",
    "TERMINAL_STATUSES",
    "DynamoStateStore",
    "EventType",
    "JobCursor",
    "JobEvent",
    "JobFile",
    "JobOutput",
    "JobPosition",
    "JobRecord",
    "JobStatus",
    "JobStep",
    "JobStore",
    "MaintenanceStore",
    "SqliteStateStore",
    "StateStore",
    "StepStatus",
    "apply_event",
    "job_from_json",
    "job_to_json",
    "open_state_store",
    "sqlite_path",
]
# ... and every name of the records module (statuses, transition tables, records, errors).
__all__ += records.__all__

_USAGE = "use 'sqlite:PATH', 'sqlite:///abs/path.db', a path ending in .db/.sqlite or 'dynamodb://PREFIX'"


def sqlite_path(url: str) -> str | None:
    """The file a SQLite state URL names (None if ``url`` is not a SQLite URL).

    ``sqlite:///abs/path.db`` -> ``/abs/path.db``; ``sqlite:rel/path.db`` and
    ``sqlite:/abs/path.db`` as written; a bare ``*.db`` / ``*.sqlite`` path as is.
    """
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:") :]
        if rest.startswith("///"):
            rest = rest[2:]
        elif rest.startswith("//"):
            raise ConfigError(f"state url {url!r}: {_USAGE} (three slashes for an absolute path)")
        if not rest:
            raise ConfigError(f"state url {url!r} names no file: {_USAGE}")
        return rest
    if "://" not in url and url.endswith((".db", ".sqlite")):
        return url
    return None


def _read_only_here(file: Path) -> bool:
    """Whether a reading command opens ``file`` read-only: it exists with something in
    it (an empty file is a new store) and this process cannot write it or its directory
    (where it can, the store opens as always, upgrading an older schema)."""
    file = file.expanduser()
    try:
        if file.stat().st_size == 0:
            return False
    except OSError:
        return False
    return not (os.access(file, os.W_OK) and os.access(file.parent, os.W_OK))


def open_state_store(
    url: str,
    aws: AwsSettings | None = None,
    *,
    retention_days: float = DEFAULT_RETENTION_DAYS,
    prune: bool = True,
    read_only: bool = False,
) -> StateStore:
    """The store ``url`` names, not yet opened (enter it with ``async with``).

    ``sqlite:///abs/path.db``, ``sqlite:relative.db`` (relative to the working
    directory), a plain path ending in ``.db`` / ``.sqlite``, or
    ``dynamodb://TABLE_PREFIX`` (``aws`` gives region/endpoint; default settings
    otherwise). Anything else raises ConfigError.

    ``retention_days`` (``[state] retention_days``; 0 keeps everything) is how
    long finished records are kept. With ``prune`` a SQLite store prunes them in
    the background while it is open (first after 30 s, then every 5 minutes:
    a short command never does); DynamoDB expires them by TTL either way.

    ``read_only`` (a command that only reads) opens a SQLite file that exists and
    that this process cannot write (or in a directory it cannot write) read-only:
    no schema change, no switch to WAL, no prune (a missing file is created, empty,
    as by any command; a writable one opens as always). A DynamoDB store is the same
    either way.
    """
    retention_s = retention_seconds(retention_days)
    path = sqlite_path(url)
    if path is not None:
        from s3flow.state.sqlite import SqliteStateStore
        from s3flow.state.sqlite.retention import PRUNE_EVERY_S

        file = path if path == ":memory:" else Path(path)
        return SqliteStateStore(
            file,
            retention_s=retention_s,
            prune_every_s=PRUNE_EVERY_S if prune else None,
            read_only=read_only and isinstance(file, Path) and _read_only_here(file),
        )
    if url.startswith("dynamodb://"):
        prefix = url[len("dynamodb://") :].strip("/")
        if not prefix:
            raise ConfigError(f"state url {url!r} names no table prefix: {_USAGE}")
        from s3flow.state.dynamodb import DynamoStateStore

        return DynamoStateStore(
            prefix, aws if aws is not None else AwsSettings(), retention_s=retention_s
        )
    raise ConfigError(f"unknown state store url {url!r}: {_USAGE}")
