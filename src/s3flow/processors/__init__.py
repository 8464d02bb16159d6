"""Processor registry: built-ins, ``s3flow.processors`` entry points, a decorator, import paths."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from s3flow.errors import ConfigError
from s3flow.processors.base import BaseProcessor, ProcessContext, Processor, Result

_REGISTRY: dict[str, Callable[..., Any]] = {}
T = TypeVar("T")


def register_processor(name: str) -> Callable[[T], T]:
    """Class decorator: make a processor available under ``name`` in settings."""

    def deco(cls: T) -> T:
        _REGISTRY[name] = cls  # type: ignore[assignment]
        return cls

    return deco


def _load_entry_point(name: str) -> Callable[..., Any] | None:
    for ep in entry_points(group="s3flow.processors"):
        if ep.name == name:
            loaded: Callable[..., Any] = ep.load()
            return loaded
    return None


def _load_path(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"processor {path!r}: cannot import module {module_name!r}: {exc}"
        ) from exc
    try:
        found: Callable[..., Any] = getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"processor {path!r}: module {module_name!r} has no {attr!r}") from exc
    return found


def available_processors() -> list[str]:
    """Names usable in ``processor = ...`` (besides ``module:attr`` paths)."""
    names = set(_REGISTRY)
    names.update(ep.name for ep in entry_points(group="s3flow.processors"))
    return sorted(names)


def builtin_processors() -> dict[str, Callable[..., Any]]:
    """Processors registered in this process by name (built-ins and decorated classes)."""
    return dict(_REGISTRY)


def create_processor(spec: str, options: dict[str, Any] | None = None) -> Processor:
    """Instantiate the processor named ``spec`` with its options."""
    factory: Callable[..., Any] | None
    if ":" in spec:
        factory = _load_path(spec)
    else:
        factory = _REGISTRY.get(spec) or _load_entry_point(spec)
    if factory is None:
        known = ", ".join(available_processors()) or "none"
        raise ConfigError(
            f"unknown processor {spec!r}; available: {known} (or give 'module:attribute')"
        )
    try:
        proc = factory(options or {})
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"processor {spec!r}: bad options: {exc}") from exc
    if not hasattr(proc, "process"):
        raise ConfigError(f"processor {spec!r} has no process() method")
    return proc  # type: ignore[no-any-return]


# Built-ins are known even when the package's entry points are not installed.
from s3flow.processors.csv_kafka import CsvToKafkaProcessor  # noqa: E402
from s3flow.processors.line_count import LineCountProcessor  # noqa: E402

_REGISTRY.setdefault(LineCountProcessor.name, LineCountProcessor)
from s3flow.processors.ndjson_manifest import NdjsonManifestProcessor  # noqa: E402

_REGISTRY.setdefault(NdjsonManifestProcessor.name, NdjsonManifestProcessor)
from s3flow.processors.parquet_compact import ParquetCompactProcessor  # noqa: E402

_REGISTRY.setdefault(ParquetCompactProcessor.name, ParquetCompactProcessor)
_REGISTRY.setdefault(CsvToKafkaProcessor.name, CsvToKafkaProcessor)

__all__ = [
    "BaseProcessor",
    "LineCountProcessor",
    "ProcessContext",
    "Processor",
    "Result",
    "available_processors",
    "builtin_processors",
    "create_processor",
    "register_processor",
]
