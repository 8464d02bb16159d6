"""Least-privilege policies of the worker and web task roles, derived from the config.

Only the actions s3flow calls, only on the resources this config names:

* worker, per pipeline: consume its queue (receive, delete, change visibility,
  read attributes, and send: a failed record of a multi-record message is
  re-sent alone), send to its DLQ, read its source objects (``bucket/prefix*``),
  list its buckets (so a missing object answers 404, not 403), write, read and
  delete under its output prefix (the start-up probe is deleted) and abort the
  multipart uploads of big outputs there (job outputs alike), tag source
  objects when the pipeline can quarantine (validation, ``on_permanent_error =
  "quarantine"``, a processor that quarantines what it refuses: ``ndjson-manifest``
  (whose files compaction quarantines too) and ``jobs-bridge``; routes without a default
  route quarantine what matches none); sources are read and tagged by the
  version their event names (``VersionId``), hence the ``*ObjectVersion*`` actions
  next to the plain ones (AWS checks those on a versioned bucket); with the ``ecs`` or
  ``batch`` executor, read and delete each run's result document (under the
  executor's ``results``, default ``s3://<output bucket>/.s3flow/results/<pipeline>/``);
* built-in processors that touch more, run by the pipeline or by one of its routes
  (with the options that run gets): ``ndjson-manifest`` writes manifests,
  ``parquet-compact`` tags the NDJSON files it reads; and
  ``[jobs]`` (the processing FIFO, its DLQ, the progress FIFO);
* the state store's DynamoDB tables (and their indexes) when the store is DynamoDB.

The web app (only with ``[jobs]``) presigns uploads under ``uploads/``, presigns
downloads of job outputs (each template's ``output_prefix``), consumes the progress
FIFO and reads and writes the jobs tables. Operator commands (``status``, ``files``,
``dlq``, ``backfill``) are not the services' business: they run with an operator's
credentials.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from s3flow.deploy.naming import Json, Naming
from s3flow.settings import PipelineSettings, Settings, results_prefix

SQS_CONSUME = (
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ReceiveMessage",
    "sqs:SendMessage",
)
SQS_SEND = ("sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage")
SQS_PROGRESS = (
    "sqs:ChangeMessageVisibility",  # an event the store did not take comes back soon
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ReceiveMessage",
)
S3_READ = ("s3:GetObject",)
#: Reading (and HEAD-ing) source objects: the worker names the version an event carries
#: (``VersionId``), which on a versioned bucket needs ``s3:GetObjectVersion`` as well.
S3_READ_SOURCES = ("s3:GetObject", "s3:GetObjectVersion")
S3_LIST = ("s3:ListBucket",)
#: Writing outputs: an output over the sink's multipart threshold (a zip, a big PDF,
#: Parquet) goes up in parts, and a failed one is aborted.
S3_WRITE = ("s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject")
#: A container run's result document: read, then deleted (the container writes it).
S3_RUN_RESULTS = ("s3:DeleteObject", "s3:GetObject")
S3_PUT = ("s3:PutObject",)
#: Tagging source objects (quarantine): the event's version is tagged, which on a
#: versioned bucket takes the ``*ObjectVersionTagging`` actions.
S3_TAG = (
    "s3:DeleteObjectTagging",
    "s3:DeleteObjectVersionTagging",
    "s3:GetObjectTagging",
    "s3:GetObjectVersionTagging",
    "s3:PutObjectTagging",
    "s3:PutObjectVersionTagging",
)
STORE_WORKER = (
    "dynamodb:BatchGetItem",
    "dynamodb:DeleteItem",
    "dynamodb:DescribeTable",  # the start-up check: the tables exist (s3flow.app.run_worker)
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
)
STORE_WEB = (
    "dynamodb:BatchGetItem",
    "dynamodb:DescribeTable",  # the start-up check: the job tables exist (s3flow web)
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
)

#: Where ``ndjson-manifest`` writes manifests unless its options say otherwise
#: (``manifest_prefix``; ``manifest_bucket`` defaults to the source bucket). A unit
#: test checks this against the processor's options model.
MANIFEST_PREFIX_DEFAULT = "manifests/"
#: Built-in processors whose AWS needs this module knows.
KNOWN_PROCESSORS = frozenset(
    {
        "line-count",
        "csv-to-kafka",
        "ndjson-manifest",
        "parquet-compact",
        "text-to-pdf",
        "zip",
        "jobs-bridge",
    }
)
#: Built-in processors that quarantine the objects they refuse (``InvalidInputError``),
#: whatever the pipeline's validation and ``on_permanent_error`` say.
QUARANTINING_PROCESSORS = frozenset({"ndjson-manifest", "jobs-bridge"})
S3_READ_TAGS = ("s3:GetObjectTagging", "s3:GetObjectVersionTagging")


@dataclass
class Statements:
    """Policy statements under construction: one per Sid, resources in order, no repeats."""

    _order: list[str] = field(default_factory=list)
    _actions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _resources: dict[str, dict[str, Json]] = field(default_factory=dict)

    def allow(self, sid: str, actions: Iterable[str], resources: Iterable[Json]) -> None:
        """Allow ``actions`` on ``resources`` under statement ``sid`` (merged by Sid)."""
        if sid not in self._actions:
            self._order.append(sid)
            self._actions[sid] = ()
            self._resources[sid] = {}
        self._actions[sid] = tuple(sorted({*self._actions[sid], *actions}))
        for r in resources:
            self._resources[sid].setdefault(json.dumps(r, sort_keys=True), r)

    def document(self) -> dict[str, Json]:
        """The policy document (``Version`` 2012-10-17)."""
        return {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": sid,
                    "Effect": "Allow",
                    "Action": list(self._actions[sid]),
                    "Resource": list(self._resources[sid].values()),
                }
                for sid in self._order
                if self._resources[sid]
            ],
        }


@dataclass
class Arns:
    """How the policies refer to the template's resources."""

    queue: Callable[[str], Json]
    """Queue name -> its ARN (a ``Fn::GetAtt`` of the queue the template creates)."""
    store: list[Json] = field(default_factory=list)
    """The state store's tables and indexes (empty unless the store is DynamoDB)."""
    job_tables: list[Json] = field(default_factory=list)
    """The tables (and index) of upload jobs: what the web app reads and writes."""


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def _job_outputs(settings: Settings) -> list[str]:
    """Where job outputs go: each template's ``output_prefix`` (in the uploads bucket)."""
    return list(dict.fromkeys(t.output_prefix for t in settings.templates))


def _can_quarantine(p: PipelineSettings) -> bool:
    """Whether the worker may quarantine (tag) ``p``'s sources: its validation, its
    ``on_permanent_error``, a processor it runs that quarantines what it refuses, or
    routes without a default one (an object matching none is quarantined)."""
    return (
        p.validation.active
        or p.on_permanent_error == "quarantine"
        or any(name in QUARANTINING_PROCESSORS for name, _ in p.processor_runs())
        or (bool(p.routes) and not any(r.is_default for r in p.routes))
    )


def _run_results(p: PipelineSettings) -> list[str]:
    """Where ``p``'s runs on the ``ecs`` and ``batch`` executors leave their result
    documents (``s3://bucket/prefix/``), for the worker to read and delete."""
    out = []
    for executor in dict.fromkeys(e for e, _ in p.executor_uses()):
        section = getattr(p.executors, executor) if executor in ("ecs", "batch") else None
        if section is not None:
            out.append(results_prefix(section, p.output, p.name))
    return out


def _processor_extras(
    st: Statements, naming: Naming, p: PipelineSettings, run: tuple[str, dict[str, Any]]
) -> None:
    """What the built-in ``processor`` of ``run`` (pipeline ``p``'s or a route's) needs
    beyond reading the source and writing the output."""
    processor, options = run
    if processor == "ndjson-manifest":
        bucket = str(options.get("manifest_bucket") or p.bucket)
        prefix = str(options.get("manifest_prefix", MANIFEST_PREFIX_DEFAULT))
        st.allow("WriteManifests", S3_PUT, [naming.s3_arn(bucket, prefix + "*")])


def worker_statements(settings: Settings, naming: Naming, arns: Arns) -> Statements:
    """The worker task role's policy for ``settings`` (see the module's docstring)."""
    st = Statements()
    for p in settings.pipelines:
        st.allow("ConsumeQueues", SQS_CONSUME, [arns.queue(p.queue)])
        st.allow("SendToQueues", SQS_SEND, [arns.queue(p.dlq_name)])
        st.allow("ReadSources", S3_READ_SOURCES, [naming.s3_arn(p.bucket, p.prefix + "*")])
        st.allow("ListBuckets", S3_LIST, [naming.s3_arn(p.bucket)])
        if p.output.startswith("s3://"):
            out_bucket, out_prefix = _split_s3(p.output)
            st.allow("WriteOutputs", S3_WRITE, [naming.s3_arn(out_bucket, out_prefix + "*")])
            st.allow("ListBuckets", S3_LIST, [naming.s3_arn(out_bucket)])
        if any(r.tags for r in p.routes):
            # Routing on object tags reads them.
            st.allow("ReadTags", S3_READ_TAGS, [naming.s3_arn(p.bucket, p.prefix + "*")])
        if _can_quarantine(p):
            st.allow("TagQuarantined", S3_TAG, [naming.s3_arn(p.bucket, p.prefix + "*")])
        for results in _run_results(p):
            bucket, prefix = _split_s3(results)
            st.allow("ReadRunResults", S3_RUN_RESULTS, [naming.s3_arn(bucket, prefix + "*")])
            st.allow("ListBuckets", S3_LIST, [naming.s3_arn(bucket)])
        for run in p.processor_runs():
            _processor_extras(st, naming, p, run)
    jobs = settings.jobs
    if jobs is not None:
        # Each template's steps write under its output_prefix of the uploads bucket.
        st.allow(
            "WriteOutputs",
            S3_WRITE,
            [naming.s3_arn(jobs.bucket, prefix + "*") for prefix in _job_outputs(settings)],
        )
        st.allow("ConsumeQueues", SQS_CONSUME, [arns.queue(jobs.resource("processing.fifo"))])
        st.allow(
            "SendToQueues",
            SQS_SEND,
            [
                arns.queue(jobs.resource("processing-dlq.fifo")),
                arns.queue(jobs.resource("progress.fifo")),
            ],
        )
    if arns.store:
        st.allow("StateStore", STORE_WORKER, arns.store)
    return st


def web_statements(settings: Settings, naming: Naming, arns: Arns) -> Statements:
    """The web task role's policy (upload jobs only; empty without ``[jobs]``)."""
    st = Statements()
    jobs = settings.jobs
    if jobs is None:
        return st
    st.allow("ConsumeProgress", SQS_PROGRESS, [arns.queue(jobs.resource("progress.fifo"))])
    st.allow("PresignUploads", S3_PUT, [naming.s3_arn(jobs.bucket, "uploads/*")])
    st.allow(
        "PresignDownloads",
        S3_READ,
        [naming.s3_arn(jobs.bucket, prefix + "*") for prefix in _job_outputs(settings)],
    )
    # The start-up check that the page's origin may upload (s3flow.web.runtime).
    st.allow("ReadUploadsCors", ("s3:GetBucketCORS",), [naming.s3_arn(jobs.bucket)])
    if arns.job_tables:
        st.allow("JobStore", STORE_WEB, arns.job_tables)
    return st
