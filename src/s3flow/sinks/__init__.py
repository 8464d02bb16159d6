"""Output sinks: S3 and local directory."""

from __future__ import annotations

from typing import Any

from s3flow.sinks.base import Sink
from s3flow.sinks.local import LocalDirSink
from s3flow.sinks.s3 import S3Sink, split_s3_url


def open_sink(output: str, s3: Any) -> Sink:
    """The sink for an ``output`` setting: ``s3://...`` or a local directory."""
    if output.startswith("s3://"):
        return S3Sink(s3, output)
    return LocalDirSink(output)


__all__ = ["LocalDirSink", "S3Sink", "Sink", "open_sink", "split_s3_url"]
