"""Processors: the protocol a pipeline implements and the registry that finds them by name."""

from __future__ import annotations

from s3flow.processors.base import BaseProcessor, ProcessContext, Processor, Result
from s3flow.processors.registry import (
    available_processors,
    builtin_processors,
    create_processor,
    processor_class,
    register_processor,
)

__all__ = [
    "BaseProcessor",
    "ProcessContext",
    "Processor",
    "Result",
    "available_processors",
    "builtin_processors",
    "create_processor",
    "processor_class",
    "register_processor",
]
