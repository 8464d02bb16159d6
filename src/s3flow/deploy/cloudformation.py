"""``s3flow provision --export cloudformation``: one template for a whole deployment.

What ``s3flow provision`` creates for the config, declared instead of made:

* buckets: SSE-S3, every public-access block, a TLS-only bucket policy, bucket-owner
  object ownership, a lifecycle rule aborting multipart uploads left incomplete
  after 7 days, and where the config asks (``[jobs]``) CORS and a lifecycle rule
  expiring abandoned uploads;
* per pipeline a DLQ (14 days) and a queue (visibility timeout, long poll, redrive
  policy) with SSE-SQS, and a queue policy that lets only the source bucket of this
  account send (``aws:SourceArn`` and ``aws:SourceAccount``, the statement
  :func:`s3flow.provisioning.queue_policy` writes);
* the bucket notifications. A bucket's ``NotificationConfiguration`` is validated by
  S3 when it is set, so the bucket ``DependsOn`` the queue policies of its queues
  (and the policies name the bucket by ARN, not by reference: no cycle);
* with ``[jobs]``: the processing FIFO and its FIFO DLQ, the progress FIFO;
* with a DynamoDB state store: its tables, from the definitions the store itself
  creates (passed in as ``tables``; see :func:`export_cloudformation`);

and what running it takes: least-privilege task roles for the worker and the web
app (:mod:`.iam`), an ECS cluster with one Fargate service per worker group with
queue-backlog-per-task autoscaling (:mod:`.ecs`), and CloudWatch alarms (a DLQ
holds messages; a queue's oldest message is too old: :mod:`.alarms`).

Every parameter has a default, so a stack can be created without passing any
(:mod:`.parameters`); what the template cannot do for a config comes back as
warnings (:mod:`.caveats`). The template is deterministic: the same config gives
the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from s3flow.deploy.alarms import add_queue_alarms, alarmed_queues
from s3flow.deploy.caveats import deployment_warnings
from s3flow.deploy.ecs import (
    WEB_TASK_DEFINITION,
    WorkerGroup,
    add_cluster,
    add_network,
    add_web_task,
    add_worker_group,
    task_trust_policy,
)
from s3flow.deploy.environment import container_environment
from s3flow.deploy.iam import Arns, Statements, web_statements, worker_statements
from s3flow.deploy.naming import ID_FORMS, Json, Naming, get_att, ref, sub
from s3flow.deploy.parameters import add_parameters
from s3flow.deploy.template import Template, check_limits
from s3flow.errors import ConfigError
from s3flow.provisioning import (
    ABORT_INCOMPLETE_UPLOAD_DAYS,
    ABORT_INCOMPLETE_UPLOADS_RULE,
    NOTIFICATION_ID_PREFIX,
    check_notifications,
    queue_policy,
)
from s3flow.settings import (
    JOBS_BRIDGE,
    JobsSettings,
    PipelineSettings,
    Settings,
    processing_pipeline,
)

DLQ_RETENTION_S = 1_209_600  # 14 days, as `s3flow provision`
QUEUE_RETENTION_S = 345_600  # 4 days: SQS's default, written out
DEFAULT_PROJECT = "s3flow"
DEFAULT_BRANCH = "main"
_QUEUE_ARN = "@@S3FLOW-QUEUE-ARN@@"
_ACCOUNT = "@@S3FLOW-ACCOUNT@@"


@dataclass
class CloudFormationExport:
    """A template and what a person should know before deploying it."""

    template: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def dynamodb_table_prefix(settings: Settings) -> str | None:
    """The table prefix of a ``dynamodb://PREFIX`` state store, else None."""
    url = settings.state.url
    return url[len("dynamodb://") :] if url.startswith("dynamodb://") else None


def export_cloudformation(
    settings: Settings,
    *,
    tables: Sequence[Mapping[str, Any]] | None = None,
    ttl_attribute: str | None = None,
) -> CloudFormationExport:
    """The CloudFormation template for ``settings`` (see the module's docstring).

    ``tables``: the state store's CreateTable definitions, required when the store is
    DynamoDB (``s3flow.state.dynamodb.tables.table_definitions(prefix)``; this module
    sits below the state package and does not import it). Raises
    :class:`~s3flow.errors.ConfigError` for what cannot be exported (no pipelines,
    queue URLs instead of names, a FIFO queue as a notification target, overlapping
    bucket notifications: see :func:`~s3flow.provisioning.check_notifications`; a
    template over CloudFormation's limits: see :func:`.template.check_limits`).
    ``ttl_attribute``: the store's expiry attribute (``[state] retention_days``), declared
    as each table's ``TimeToLiveSpecification``.
    """
    if dynamodb_table_prefix(settings) is not None and tables is None:
        raise ValueError(
            "the state store is DynamoDB: pass tables=table_definitions(prefix) "
            "(s3flow.state.dynamodb.tables)"
        )
    # The template declares the notifications `s3flow provision` sets: S3 would refuse
    # overlapping ones when the stack is created, so they are refused here.
    check_notifications(settings)
    export = _Builder(settings, list(tables or []), ttl_attribute).build()
    check_limits(export.template)
    return export


def _queue_names(p: PipelineSettings) -> None:
    for what, value in (("queue", p.queue), ("dlq", p.dlq_name)):
        if value.startswith(("https://", "http://")):
            raise ConfigError(
                f"pipeline {p.name!r}: {what} {value!r} is a URL; the template creates its "
                "queues, so give their names (e.g. 'counts-events')"
            )
    if p.queue.endswith(".fifo"):
        raise ConfigError(
            f"pipeline {p.name!r}: queue {p.queue!r} is FIFO; S3 cannot send event "
            "notifications to FIFO queues"
        )


class _Builder:
    def __init__(
        self, settings: Settings, tables: list[Mapping[str, Any]], ttl_attribute: str | None
    ) -> None:
        if not settings.pipelines:
            raise ConfigError("no pipelines configured: nothing to export")
        for p in settings.pipelines:
            _queue_names(p)
        self.settings = settings
        self.tables = tables
        self.ttl_attribute = ttl_attribute
        jobs = settings.jobs
        self.naming = Naming(
            jobs.project if jobs else DEFAULT_PROJECT,
            (jobs.branch or DEFAULT_BRANCH) if jobs else DEFAULT_BRANCH,
        )
        names = ", ".join(p.name for p in settings.pipelines)
        self.t = Template(
            description=(
                f"s3flow: pipelines {names}"[:900] + " (s3flow provision --export cloudformation)"
            )
        )
        # A store on the task's disk (SQLite): one task per worker group.
        self.single_task = dynamodb_table_prefix(settings) is None
        self.queues: dict[str, str] = {}  # queue name -> logical id
        self.buckets: dict[str, str] = {}  # bucket name -> logical id

    # --- the whole template ----------------------------------------------------------------

    def build(self) -> CloudFormationExport:
        self._declare_ids()
        add_parameters(self.t, self.naming, single_task=self.single_task)
        self._buckets()
        self._queues()
        self._notifications()
        arns = self._tables()
        add_queue_alarms(self.t, self.naming, self.settings, self.queues)
        self._services(arns)
        return CloudFormationExport(self.t.to_dict(), deployment_warnings(self.settings))

    def _declare_ids(self) -> None:
        """Tell the naming every resource with an id built from a name, and which of its
        ids the template has: only those are kept apart (a DLQ has no queue policy, so
        queues ``x-dlq`` and ``x-dlq-policy`` clash nowhere)."""
        n = self.naming
        for name in self._bucket_names():
            n.declare("Bucket", name, "Bucket{}Policy")
        dlqs, mains = alarmed_queues(self.settings)
        for queue in dlqs:
            n.declare("Queue", queue, "Queue{}DepthAlarm")
        for queue in mains:
            n.declare("Queue", queue, "Queue{}AgeAlarm")
        for p in self.settings.pipelines:  # the targets of bucket notifications
            n.declare("Queue", p.queue, "Queue{}Policy")
        for definition in self.tables:
            n.declare("Table", str(definition["TableName"]))
        if self.settings.jobs is not None:
            n.reserve(WEB_TASK_DEFINITION)  # a pipeline named "web" keeps clear of it
        for group in _worker_groups(self.settings):
            n.declare("WorkerGroup", group.name, *ID_FORMS["WorkerGroup"][1:])

    # --- buckets and queues --------------------------------------------------------------

    def _bucket_names(self) -> list[str]:
        names: list[str] = []
        for p in self.settings.pipelines:
            names.append(p.bucket)
            if p.output.startswith("s3://"):
                names.append(p.output[5:].split("/", 1)[0])
        return list(dict.fromkeys(names))

    def _buckets(self) -> None:
        n = self.naming
        jobs = self.settings.jobs
        for name in self._bucket_names():
            logical = n.logical_id("Bucket", name)
            props: dict[str, Json] = {
                "BucketName": n.name(name),
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [
                        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                    ]
                },
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": True,
                    "BlockPublicPolicy": True,
                    "IgnorePublicAcls": True,
                    "RestrictPublicBuckets": True,
                },
                "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
            }
            if jobs is not None and name == jobs.bucket:
                props.update(_jobs_bucket(jobs))
            lifecycle = props.setdefault("LifecycleConfiguration", {"Rules": []})
            lifecycle["Rules"].append(_abort_incomplete_uploads())
            self.t.add(logical, "AWS::S3::Bucket", props, deletion="Retain")
            self.buckets[name] = logical
            self.t.add(
                n.logical_id("Bucket", name, "Bucket{}Policy"),
                "AWS::S3::BucketPolicy",
                {"Bucket": ref(logical), "PolicyDocument": _tls_only(logical)},
            )
            self.t.output(f"{logical}Name", ref(logical), f"bucket {name}")

    def _queue(
        self,
        name: str,
        props: dict[str, Json],
        *,
        fifo: bool = False,
        dlq: str | None = None,
        max_receive_count: int = 0,
    ) -> str:
        """Add a queue once (a DLQ may serve several pipelines); returns its logical id."""
        if name in self.queues:
            return self.queues[name]
        logical = self.naming.logical_id("Queue", name)
        body: dict[str, Json] = {"QueueName": self.naming.name(name)}
        if fifo:
            body.update({"FifoQueue": True, "ContentBasedDeduplication": False})
        body.update(props)
        if dlq is not None:
            body["RedrivePolicy"] = {
                "deadLetterTargetArn": get_att(self.queues[dlq], "Arn"),
                "maxReceiveCount": max_receive_count,
            }
        body["SqsManagedSseEnabled"] = True
        # Messages in transit only: the queues go with the stack.
        self.t.add(logical, "AWS::SQS::Queue", body, deletion="Delete")
        self.queues[name] = logical
        self.t.output(f"{logical}Url", ref(logical), f"queue {name}")
        return logical

    def _queues(self) -> None:
        dlq_props: dict[str, Json] = {"MessageRetentionPeriod": DLQ_RETENTION_S}
        for p in self.settings.pipelines:
            self._queue(p.dlq_name, dict(dlq_props))
            self._queue(
                p.queue,
                {
                    "VisibilityTimeout": p.visibility_timeout_s,
                    "ReceiveMessageWaitTimeSeconds": p.wait_time_s,
                    "MessageRetentionPeriod": QUEUE_RETENTION_S,
                },
                dlq=p.dlq_name,
                max_receive_count=p.redrive_max_receive_count,
            )
        jobs = self.settings.jobs
        if jobs is not None:
            processing_dlq = jobs.resource("processing-dlq.fifo")
            self._queue(processing_dlq, dict(dlq_props), fifo=True)
            self._queue(
                jobs.resource("processing.fifo"),
                {
                    "VisibilityTimeout": jobs.visibility_timeout_s,
                    "MessageRetentionPeriod": QUEUE_RETENTION_S,
                },
                fifo=True,
                dlq=processing_dlq,
                # above the runner's limit: it fails the job on the receive after the last
                # attempt (the worker died in it); the DLQ is a safety net (as provision)
                max_receive_count=processing_pipeline(jobs).redrive_max_receive_count,
            )
            self._queue(
                jobs.resource("progress.fifo"),
                {"VisibilityTimeout": 30, "MessageRetentionPeriod": QUEUE_RETENTION_S},
                fifo=True,
            )

    def _notifications(self) -> None:
        per_queue: dict[str, list[str]] = {}
        per_bucket: dict[str, list[PipelineSettings]] = {}
        for p in self.settings.pipelines:
            buckets = per_queue.setdefault(p.queue, [])
            if p.bucket not in buckets:
                buckets.append(p.bucket)
            per_bucket.setdefault(p.bucket, []).append(p)
        policies: dict[str, str] = {}
        for queue, buckets in per_queue.items():
            logical = self.queues[queue]
            statements = [st for b in buckets for st in self._queue_policy(logical, b)]
            policies[queue] = self.t.add(
                self.naming.logical_id("Queue", queue, "Queue{}Policy"),
                "AWS::SQS::QueuePolicy",
                {
                    "Queues": [ref(logical)],
                    "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
                },
            )
        for bucket, pipelines in per_bucket.items():
            resource = self.t.resources[self.buckets[bucket]]
            configs = []
            for p in pipelines:
                config: dict[str, Json] = {
                    "Event": "s3:ObjectCreated:*",
                    "Queue": get_att(self.queues[p.queue], "Arn"),
                }
                rules = [
                    {"Name": name, "Value": value}
                    for name, value in (("prefix", p.prefix), ("suffix", p.suffix))
                    if value
                ]
                if rules:
                    config["Filter"] = {"S3Key": {"Rules": rules}}
                configs.append(config)
            resource["Properties"]["NotificationConfiguration"] = {"QueueConfigurations": configs}
            # S3 checks it may send to each queue when the configuration is set.
            resource["DependsOn"] = sorted({policies[p.queue] for p in pipelines})

    def _queue_policy(self, queue_logical: str, bucket: str) -> list[Json]:
        """The statement `s3flow provision` writes, with the template's references."""
        doc = json.loads(queue_policy(_QUEUE_ARN, bucket, _ACCOUNT))
        out = []
        for st in doc["Statement"]:
            st["Sid"] = sub(st["Sid"].replace(bucket, self.naming.text(bucket)))
            st["Resource"] = get_att(queue_logical, "Arn")
            cond = st["Condition"]
            cond["ArnLike"]["aws:SourceArn"] = self.naming.s3_arn(bucket)
            cond["StringEquals"]["aws:SourceAccount"] = ref("AWS::AccountId")
            out.append(st)
        return out

    # --- the state store ---------------------------------------------------------------

    def _tables(self) -> Arns:
        arns = Arns(queue=lambda name: get_att(self.queues[name], "Arn"))
        prefix = dynamodb_table_prefix(self.settings)
        if prefix is None:
            return arns
        job_tables = {f"{prefix}-jobs", f"{prefix}-job-events"}
        for definition in self.tables:
            name = str(definition["TableName"])
            logical = self.naming.logical_id("Table", name)
            props: dict[str, Json] = {"TableName": self.naming.name(name)}
            for key in ("KeySchema", "AttributeDefinitions", "BillingMode"):
                props[key] = definition[key]
            if definition.get("GlobalSecondaryIndexes"):
                props["GlobalSecondaryIndexes"] = definition["GlobalSecondaryIndexes"]
            if self.ttl_attribute:
                props["TimeToLiveSpecification"] = {
                    "AttributeName": self.ttl_attribute,
                    "Enabled": True,
                }
            self.t.add(logical, "AWS::DynamoDB::Table", props, deletion="Retain")
            self.t.output(f"{logical}Name", ref(logical), f"state store table {name}")
            mine = [get_att(logical, "Arn")]
            if "GlobalSecondaryIndexes" in props:
                mine.append(sub("${" + logical + ".Arn}/index/*"))
            arns.store += mine
            if name in job_tables:
                arns.job_tables += mine
        return arns

    # --- ECS ------------------------------------------------------------------------------------

    def _role(self, logical: str, description: str, statements: Statements) -> None:
        props: dict[str, Json] = {
            "Description": description,
            "AssumeRolePolicyDocument": task_trust_policy(),
        }
        doc = statements.document()
        if doc["Statement"]:
            props["Policies"] = [{"PolicyName": "s3flow", "PolicyDocument": doc}]
        self.t.add(logical, "AWS::IAM::Role", props)
        self.t.output(f"{logical}Arn", get_att(logical, "Arn"), description)

    def _services(self, arns: Arns) -> None:
        s, n = self.settings, self.naming
        self._role(
            "WorkerTaskRole",
            "s3flow worker: the queues, objects and tables of this config",
            worker_statements(s, n, arns),
        )
        network = add_network(self.t)
        add_cluster(self.t)
        self.t.output("ClusterName", ref("Cluster"), "ECS cluster")
        self.t.output("LogGroupName", ref("LogGroup"), "container logs")
        env = container_environment(s, n)
        queue_name = {q: get_att(logical, "QueueName") for q, logical in self.queues.items()}
        for group in _worker_groups(s):
            service = add_worker_group(
                self.t,
                n,
                group,
                environment=env,
                network=network,
                queue_name=queue_name,
                stop_timeout_s=s.worker.shutdown_grace_s,
                single_task=self.single_task,
            )
            self.t.output(
                f"{service}Name", get_att(service, "Name"), f"ECS service of {group.name}"
            )
        if s.jobs is not None:
            self._role(
                "WebTaskRole",
                "s3flow web app: upload jobs (presigned URLs, progress, job store)",
                web_statements(s, n, arns),
            )
            add_web_task(self.t, n, environment=env)


def _jobs_bucket(jobs: JobsSettings) -> dict[str, Json]:
    """CORS for browser uploads and the rule expiring abandoned uploads (as provision)."""
    return {
        "CorsConfiguration": {
            "CorsRules": [
                {
                    "AllowedOrigins": sorted(jobs.origins()),
                    "AllowedMethods": ["GET", "POST"],
                    "AllowedHeaders": ["*"],
                    "ExposedHeaders": ["ETag"],
                    "MaxAge": 3000,
                }
            ]
        },
        "LifecycleConfiguration": {
            "Rules": [
                {
                    "Id": f"{NOTIFICATION_ID_PREFIX}expire-uploads",
                    "Prefix": "uploads/",
                    "Status": "Enabled",
                    "ExpirationInDays": jobs.abandoned_upload_days,
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                }
            ]
        },
    }


def _abort_incomplete_uploads() -> dict[str, Json]:
    """The rule aborting multipart uploads left incomplete (a worker killed mid-upload)."""
    return {
        "Id": ABORT_INCOMPLETE_UPLOADS_RULE,
        "Status": "Enabled",
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": ABORT_INCOMPLETE_UPLOAD_DAYS},
    }


def _tls_only(bucket_logical: str) -> dict[str, Json]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [
                    get_att(bucket_logical, "Arn"),
                    sub("${" + bucket_logical + ".Arn}/*"),
                ],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }


def _worker_groups(settings: Settings) -> list[WorkerGroup]:
    groups = []
    jobs = settings.jobs
    for p in settings.pipelines:
        if jobs is not None and p.name == JOBS_BRIDGE:
            groups.append(
                WorkerGroup(
                    name=p.name,
                    pipeline=p.name,
                    queues=(p.queue, jobs.resource("processing.fifo")),
                    backlog_per_task=jobs.concurrency,
                )
            )
        else:
            groups.append(WorkerGroup(p.name, p.name, (p.queue,), p.concurrency))
    return groups
