"""Processor registry: built-ins, ``s3flow.processors`` entry points, a decorator, import paths.

The core never imports a pipeline: built-in processors are named here by their
import path and loaded on first use, like any ``module:attribute`` a user gives.
A pipeline's extras (CLI commands, ``files show`` details) hang off its
processor class (see :mod:`s3flow.processors.base`) and its ``CLI`` modules
listed in :data:`CLI_EXTENSIONS` / the ``s3flow.cli`` entry-point group.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from s3flow.errors import ConfigError
from s3flow.processors.base import BaseProcessor, Processor
from s3flow.settings import EXECUTOR_NAMES

_REGISTRY: dict[str, Callable[..., Any]] = {}
T = TypeVar("T")


class ProcessorSpecError(ConfigError):
    """A ``processor`` setting that names no usable processor (unknown, not importable,
    malformed, not a processor): the setting itself is wrong, not its options."""

    @property
    def error_class(self) -> str:
        """A ConfigError to whoever reads a result, a log or a DLQ message."""
        return "ConfigError"


#: Built-in processors, by import path (loaded lazily: the core never imports a pipeline).
BUILTINS: dict[str, str] = {
    "line-count": "s3flow.pipelines.line_count:LineCountProcessor",
    "csv-to-kafka": "s3flow.pipelines.csv_kafka.processor:CsvToKafkaProcessor",
    "ndjson-manifest": "s3flow.pipelines.ndjson_parquet.manifest_processor:NdjsonManifestProcessor",
    "parquet-compact": "s3flow.pipelines.ndjson_parquet.compact_processor:ParquetCompactProcessor",
    "zip": "s3flow.pipelines.zip_bundle:ZipProcessor",
    "jobs-bridge": "s3flow.jobs.bridge:BridgeProcessor",
    "text-to-pdf": "s3flow.pipelines.text_to_pdf.processor:TextToPdfProcessor",
}

#: Built-in CLI extensions: ``register(app, run_app)`` functions of the pipelines.
CLI_EXTENSIONS: tuple[str, ...] = (
    "s3flow.pipelines.csv_kafka.cli:register",
    "s3flow.pipelines.ndjson_parquet.cli:register",
)


def register_processor(name: str) -> Callable[[T], T]:
    """Class decorator: make a processor available under ``name`` in settings."""

    def deco(cls: T) -> T:
        _REGISTRY[name] = cls  # type: ignore[assignment]
        return cls

    return deco


def _load_entry_point(group: str, name: str) -> Callable[..., Any] | None:
    for ep in entry_points(group=group):
        if ep.name == name:
            loaded: Callable[..., Any] = ep.load()
            return loaded
    return None


def load_path(path: str) -> Any:
    """Import ``module:attribute`` (ConfigError naming what is missing or malformed)."""
    module_name, _, attr = path.partition(":")
    if not attr or not all(part.isidentifier() for part in module_name.split(".")):
        # ':Thumbs' and '.myprocs:Thumbs' (relative: there is no package to be relative to)
        # made import_module raise ValueError / TypeError, not a ConfigError.
        raise ConfigError(
            f"{path!r} is not a 'module:Class' path: give an absolute module name, ':' "
            "and the name in it (e.g. 'mypkg.procs:Thumbs')"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{path!r}: cannot import module {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"{path!r}: module {module_name!r} has no {attr!r}") from exc


def available_processors() -> list[str]:
    """Names usable in ``processor = ...`` (besides ``module:attr`` paths)."""
    names = set(_REGISTRY) | set(BUILTINS)
    names.update(ep.name for ep in entry_points(group="s3flow.processors"))
    return sorted(names)


def builtin_processors() -> dict[str, Callable[..., Any]]:
    """Every built-in processor (loaded) and the ones registered by decorator, by name."""
    out = {name: load_path(path) for name, path in BUILTINS.items()}
    out.update(_REGISTRY)
    return out


def processor_class(spec: str) -> Callable[..., Any] | None:
    """The class (factory) a ``processor = spec`` setting names, without instantiating it."""
    if ":" in spec:
        found: Callable[..., Any] = load_path(spec)
        return found
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if spec in BUILTINS:
        return load_path(BUILTINS[spec])  # type: ignore[no-any-return]
    return _load_entry_point("s3flow.processors", spec)


def known_processor(spec: str) -> Callable[..., Any]:
    """The factory ``spec`` names; :class:`ConfigError` naming the available ones if none."""
    try:
        factory = processor_class(spec)
    except ConfigError as exc:
        raise ProcessorSpecError(f"processor {exc}") from exc
    if factory is None:
        known = ", ".join(available_processors()) or "none"
        raise ProcessorSpecError(
            f"unknown processor {spec!r}; available: {known} (or give 'module:attribute')"
        )
    return factory


def create_processor(spec: str, options: dict[str, Any] | None = None) -> Processor:
    """Instantiate the processor named ``spec`` with its options."""
    factory = known_processor(spec)
    try:
        proc = factory(options or {})
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"processor {spec!r}: bad options: {exc}") from exc
    if not hasattr(proc, "process"):
        raise ProcessorSpecError(f"processor {spec!r} has no process() method")
    # (A plain `def process` is found when it returns: one that returns an awaitable,
    # or a decorated `async def`, is a processor too; see executors.one.run_object.)
    return proc  # type: ignore[no-any-return]


def _has_lifecycle(cls: Any) -> bool:
    """Whether ``cls`` has its own ``start``/``stop`` hooks (pipeline-level state)."""
    for hook in ("start", "stop"):
        mine = getattr(cls, hook, None)
        if mine is not None and mine is not getattr(BaseProcessor, hook):
            return True
    return False


def supported_executors(cls: Any) -> tuple[str, ...]:
    """The executors processor class ``cls`` can run on (see ``BaseProcessor.executors``)."""
    declared = getattr(cls, "executors", None)
    if declared is not None:
        return tuple(declared)
    return ("inline",) if _has_lifecycle(cls) else EXECUTOR_NAMES


def default_executor(cls: Any) -> str:
    """``pool`` for a CPU-bound processor that can run there, else ``inline``."""
    if getattr(cls, "cpu_bound", False) and "pool" in supported_executors(cls):
        return "pool"
    return "inline"


def default_executor_for(spec: str) -> str:
    """The default executor of the processor ``spec`` names (``inline`` when unknown)."""
    try:
        cls = processor_class(spec)
    except ConfigError as exc:
        raise ProcessorSpecError(f"processor {exc}") from exc
    return default_executor(cls) if cls is not None else "inline"


def portable_spec(spec: str) -> str:
    """A ``processor = spec`` another process can resolve.

    Built-in names, entry-point names and ``module:attribute`` paths resolve anywhere
    s3flow is installed; a name registered with the decorator only exists in a process
    that imported its module, so it becomes that class's ``module:qualname``.
    """
    if ":" in spec or spec in BUILTINS or spec not in _REGISTRY:
        return spec
    cls = _REGISTRY[spec]
    return f"{getattr(cls, '__module__', '')}:{getattr(cls, '__qualname__', spec)}"


def cli_extensions() -> list[Callable[..., Any]]:
    """The pipelines' ``register(app, run_app)`` functions: built-ins, then entry points."""
    out = [load_path(path) for path in CLI_EXTENSIONS]
    out += [ep.load() for ep in entry_points(group="s3flow.cli")]
    return out
