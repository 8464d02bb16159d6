"""The one-object contract shared by ``s3flow run``, the subprocess executor and containers.

A run gets its object, output and processor options from its arguments or, as a
container does, from its environment:

* ``SOURCE_BUCKET``, ``OBJECT_KEY`` (and ``OBJECT_VERSION_ID`` when the bucket is
  versioned): the object; ``OBJECT_IF_MATCH``, when the event named its upload by eTag
  (a sequencer, no versionId): the run reads only that upload, and one overwritten
  since reports ``ObjectChangedError`` (disposition ``skip``: superseded);
* ``DEST_BUCKET`` (+ ``DEST_PREFIX``), or the whole ``S3FLOW_OUTPUT`` URI: the output;
* ``S3FLOW_PROCESSOR`` and ``S3FLOW_OPTIONS`` (a JSON object): the processor;
* ``S3FLOW_PIPELINE``, ``S3FLOW_ROUTE``, ``S3FLOW_WORKER_ID``: for the processor's context
  and the result;
* ``S3FLOW_RESULT_URI`` (containers): where to write the one-line JSON result document.

It reports by one JSON line on stdout and its exit code (0 done, 2 permanent, 1 retryable;
see :mod:`s3flow.executors.base`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from s3flow.executors.base import ObjectJob
from s3flow.sinks.s3 import split_s3_url

SOURCE_BUCKET = "SOURCE_BUCKET"
OBJECT_KEY = "OBJECT_KEY"
OBJECT_VERSION_ID = "OBJECT_VERSION_ID"
OBJECT_IF_MATCH = "OBJECT_IF_MATCH"
DEST_BUCKET = "DEST_BUCKET"
DEST_PREFIX = "DEST_PREFIX"
OUTPUT = "S3FLOW_OUTPUT"
PROCESSOR = "S3FLOW_PROCESSOR"
OPTIONS = "S3FLOW_OPTIONS"
PIPELINE = "S3FLOW_PIPELINE"
ROUTE = "S3FLOW_ROUTE"
WORKER_ID = "S3FLOW_WORKER_ID"
RESULT_URI = "S3FLOW_RESULT_URI"
MAX_UNCOMPRESSED = "S3FLOW_MAX_UNCOMPRESSED_BYTES"


def job_environment(job: ObjectJob, result_uri: str | None = None) -> dict[str, str]:
    """The environment that tells a run everything about ``job``."""
    env = {
        SOURCE_BUCKET: job.event.bucket,
        OBJECT_KEY: job.event.key,
        OUTPUT: job.output,
        PROCESSOR: job.processor,
        OPTIONS: json.dumps(dict(job.options), separators=(",", ":"), default=str),
        PIPELINE: job.pipeline,
        ROUTE: job.route,
        WORKER_ID: job.worker_id,
    }
    if job.output.startswith("s3://"):
        bucket, prefix = split_s3_url(job.output)
        env[DEST_BUCKET] = bucket
        env[DEST_PREFIX] = prefix
    if job.event.version_id and job.event.version_id != "null":
        env[OBJECT_VERSION_ID] = job.event.version_id
    if job.event.if_match:
        env[OBJECT_IF_MATCH] = job.event.if_match
    if job.max_uncompressed_bytes is not None:
        env[MAX_UNCOMPRESSED] = str(job.max_uncompressed_bytes)
    if result_uri:
        env[RESULT_URI] = result_uri
    return env


def output_from_env(env: Mapping[str, str]) -> str | None:
    """The output a run's environment names: ``S3FLOW_OUTPUT``, else ``DEST_BUCKET``
    (+ ``DEST_PREFIX``), else None."""
    if env.get(OUTPUT):
        return env[OUTPUT]
    bucket = env.get(DEST_BUCKET)
    if not bucket:
        return None
    prefix = env.get(DEST_PREFIX, "")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return f"s3://{bucket}/{prefix}"


def run_arguments(template: list[str], job: ObjectJob) -> list[str]:
    """A command template with ``{processor}``, ``{source}`` and ``{output}`` filled in."""
    values = {"processor": job.processor, "source": job.source, "output": job.output}
    return [arg.format_map(values) for arg in template]
