"""Options of the ``parquet-compact`` processor (``[pipelines.options]``)."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

from s3flow.settings import ProcessCount

__all__ = ["CompactionOptions", "parse_options"]


class CompactionOptions(BaseModel):
    """How manifests are compacted. Unknown keys are an error naming the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    executor: Literal["local", "spark"] = Field(
        default="local",
        description="'local': a process pool on this machine; 'spark': pyspark tasks.",
    )
    compression: Literal["snappy", "zstd"] = Field(
        default="snappy", description="Parquet compression codec."
    )
    compression_level: int | None = Field(
        default=None, description="Codec level (zstd: 1-22); None = the codec's default."
    )
    parquet_target_mb: PositiveFloat = Field(
        default=128, description="Target size of one Parquet part (approximate)."
    )
    row_group_mb: PositiveFloat = Field(
        default=128,
        description="Arrow (in-memory) bytes gathered per Parquet row group; bounds memory.",
    )
    malformed_lines: Literal["skip", "quarantine", "fail"] = Field(
        default="skip",
        description=(
            "A line that is not a JSON object: 'skip' it (counted, reported), 'quarantine' "
            "the whole file (tagged, left out of the output), or 'fail' the manifest."
        ),
    )
    processes: ProcessCount = Field(
        default=0, description="Worker processes (local); 0 = CPU count."
    )
    unit_mb: PositiveFloat = Field(
        default=64,
        description="Large files are parsed in line-aligned pieces of at most this size.",
    )
    spark_master: str = Field(default="local[2]", description="Spark master URL (spark).")
    spark_conf: dict[str, str] = Field(
        default_factory=dict, description="Extra Spark configuration (spark)."
    )
    tmp_dir: str | None = Field(
        default=None,
        description="Scratch directory (local spill of Arrow data, about the manifest's size).",
    )

    @property
    def worker_processes(self) -> int:
        """The effective number of worker processes."""
        return self.processes or os.cpu_count() or 1


def parse_options(options: dict[str, Any] | None) -> CompactionOptions:
    """Validate a ``[pipelines.options]`` table; ConfigError names each bad key."""
    from s3flow.processors.base import parse_options as parse_processor_options

    return parse_processor_options("parquet-compact", CompactionOptions, dict(options or {}))
