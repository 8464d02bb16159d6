"""Idempotent setup of what the pipelines need: buckets (with a lifecycle rule aborting
multipart uploads left incomplete), queues, DLQs, notifications.

Every resource is read first and changed only when it differs from what the
settings ask for, so a second run reports ``unchanged`` everywhere. With
``dry_run`` nothing is changed and the plan is returned.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from s3flow.aws import open_clients
from s3flow.errors import ConfigError, translate_aws_error
from s3flow.settings import JobsSettings, PipelineSettings, Settings, processing_pipeline
from s3flow.settings.loading import describe_filters, filters_overlap, key_filters_overlap
from s3flow.settings.pipelines import queue_name_of

NOTIFICATION_ID_PREFIX = "s3flow-"

#: Days after which every bucket's lifecycle rule aborts a multipart upload left
#: incomplete (a worker killed mid-upload): its parts are billed until then.
ABORT_INCOMPLETE_UPLOAD_DAYS = 7
#: The ID of that rule (the CloudFormation export declares the same rule).
ABORT_INCOMPLETE_UPLOADS_RULE = f"{NOTIFICATION_ID_PREFIX}abort-incomplete-uploads"

#: The event type of every notification s3flow sets.
NOTIFICATION_EVENT = "s3:ObjectCreated:*"

#: Why S3 refuses overlapping notification configurations (the end of the errors).
_S3_RULE = (
    "S3 filters notifications by key prefix and suffix only (key_regex is applied by the "
    "worker) and refuses two configurations for the same event type on one bucket whose "
    "prefixes and suffixes both overlap (PutBucketNotificationConfiguration: "
    '"Configurations overlap"; some emulators accept them)'
)


@dataclass
class Change:
    """One resource and what provisioning did (or would do) to it."""

    kind: str  # bucket | lifecycle | cors | queue | dlq | notification
    name: str
    action: str  # created | updated | unchanged | would create | would update
    detail: str = ""


def _code(exc: BaseException) -> str:
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        return str((resp.get("Error") or {}).get("Code") or "")
    return ""


def _is_url(name: str) -> bool:
    return name.startswith(("https://", "http://"))


class Provisioner:
    """Creates or verifies resources through open S3/SQS clients."""

    def __init__(self, s3: Any, sqs: Any, region: str, *, dry_run: bool = False) -> None:
        self.s3 = s3
        self.sqs = sqs
        self.region = region
        self.dry_run = dry_run
        self.changes: list[Change] = []

    def _record(self, kind: str, name: str, exists: bool, changed: bool, detail: str = "") -> None:
        if not exists:
            action = "would create" if self.dry_run else "created"
        elif changed:
            action = "would update" if self.dry_run else "updated"
        else:
            action = "unchanged"
        self.changes.append(Change(kind, name, action, detail))

    async def _read(
        self,
        call: Callable[..., Awaitable[dict[str, Any]]],
        operation: str,
        bucket: str,
        *,
        absent: tuple[str, ...],
    ) -> dict[str, Any] | None:
        """``call(Bucket=bucket)``'s response; None when the error says there is none.

        ``absent`` are the error codes that say so; a code counts when it starts
        with one of them (AWS names one ``ServerSideEncryptionConfigurationNotFoundError``).
        """
        try:
            return await call(Bucket=bucket)
        except Exception as exc:
            if _code(exc).startswith(absent):
                return None
            raise translate_aws_error(exc, f"{operation} {bucket}") from exc

    async def _read_rules(
        self,
        call: Callable[..., Awaitable[dict[str, Any]]],
        operation: str,
        bucket: str,
        absent: str,
        field: str,
    ) -> list[dict[str, Any]]:
        """The rules listed under ``field`` in ``call(Bucket=bucket)``'s response; none
        when the bucket, or its configuration (error code ``absent``), does not exist."""
        response = await self._read(call, operation, bucket, absent=(absent, "NoSuchBucket", "404"))
        rules: list[dict[str, Any]] = (response or {}).get(field, [])
        return rules

    # --- buckets -----------------------------------------------------------

    async def bucket(self, name: str) -> None:
        """Bucket with default encryption (SSE-S3) and all public access blocked."""
        head = await self._read(
            self.s3.head_bucket, "HeadBucket", name, absent=("404", "NoSuchBucket", "NotFound")
        )
        exists = head is not None
        fixes: list[str] = []
        if exists:
            enc = await self._read(
                self.s3.get_bucket_encryption,
                "GetBucketEncryption",
                name,
                absent=("ServerSideEncryptionConfigurationNotFound",),
            )
            if not (enc or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules", []):
                fixes.append("encryption")
            pab = await self._read(
                self.s3.get_public_access_block,
                "GetPublicAccessBlock",
                name,
                absent=("NoSuchPublicAccessBlockConfiguration",),
            )
            flags = (pab or {}).get("PublicAccessBlockConfiguration", {})
            if not all(flags.get(k) for k in _PAB):
                fixes.append("public access block")
        else:
            fixes = ["encryption", "public access block"]
        self._record("bucket", name, exists, bool(fixes), ", ".join(fixes))
        if self.dry_run:
            return
        try:
            if not exists:
                kwargs: dict[str, Any] = {"Bucket": name}
                if self.region != "us-east-1":
                    kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
                await self.s3.create_bucket(**kwargs)
            if "encryption" in fixes:
                await self.s3.put_bucket_encryption(
                    Bucket=name,
                    ServerSideEncryptionConfiguration={
                        "Rules": [
                            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                        ]
                    },
                )
            if "public access block" in fixes:
                await self.s3.put_public_access_block(
                    Bucket=name, PublicAccessBlockConfiguration={k: True for k in _PAB}
                )
        except Exception as exc:
            raise translate_aws_error(exc, f"provisioning bucket {name}") from exc

    async def cors(self, name: str, origins: list[str]) -> None:
        """Let browsers on ``origins`` POST uploads straight to the bucket."""
        wanted = [
            {
                "AllowedOrigins": sorted(origins),
                "AllowedMethods": ["GET", "POST"],
                "AllowedHeaders": ["*"],
                "ExposeHeaders": ["ETag"],
                "MaxAgeSeconds": 3000,
            }
        ]
        have = await self._read_rules(
            self.s3.get_bucket_cors, "GetBucketCors", name, "NoSuchCORSConfiguration", "CORSRules"
        )
        norm = [
            {k: (sorted(v) if isinstance(v, list) else v) for k, v in r.items() if k != "ID"}
            for r in have
        ]
        self._record("cors", name, bool(have), norm != wanted, ", ".join(sorted(origins)))
        if norm == wanted or self.dry_run:
            return
        try:
            await self.s3.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": wanted})
        except Exception as exc:
            raise translate_aws_error(exc, f"PutBucketCors {name}") from exc

    async def expire_prefix(self, name: str, prefix: str, days: int) -> None:
        """A lifecycle rule expiring objects under ``prefix`` after ``days`` (kept: other rules)."""
        wanted = {
            "ID": f"{NOTIFICATION_ID_PREFIX}expire-{prefix.strip('/') or 'all'}",
            "Filter": {"Prefix": prefix},
            "Status": "Enabled",
            "Expiration": {"Days": days},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
        await self._lifecycle_rule(name, f"{name}/{prefix}", wanted, f"expire after {days}d")

    async def abort_incomplete_uploads(self, name: str) -> None:
        """A lifecycle rule aborting the bucket's multipart uploads left incomplete after
        :data:`ABORT_INCOMPLETE_UPLOAD_DAYS` (kept: other rules)."""
        days = ABORT_INCOMPLETE_UPLOAD_DAYS
        wanted = {
            "ID": ABORT_INCOMPLETE_UPLOADS_RULE,
            "Filter": {"Prefix": ""},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days},
        }
        await self._lifecycle_rule(
            name, name, wanted, f"abort incomplete multipart uploads after {days}d"
        )

    async def _lifecycle_rule(
        self, name: str, shown: str, wanted: dict[str, Any], detail: str
    ) -> None:
        """Make the bucket's lifecycle rule of ID ``wanted["ID"]`` equal ``wanted``, keeping
        every other rule; recorded as ``shown`` with ``detail``."""
        rule_id = wanted["ID"]
        rules = await self._read_rules(
            self.s3.get_bucket_lifecycle_configuration,
            "GetBucketLifecycleConfiguration",
            name,
            "NoSuchLifecycleConfiguration",
            "Rules",
        )
        mine = [r for r in rules if r.get("ID") == rule_id]
        same = bool(mine) and all(_same_rule_part(k, mine[0].get(k), v) for k, v in wanted.items())
        self._record("lifecycle", shown, bool(mine), not same, detail)
        if same or self.dry_run:
            return
        others = [r for r in rules if r.get("ID") != rule_id]
        try:
            await self.s3.put_bucket_lifecycle_configuration(
                Bucket=name, LifecycleConfiguration={"Rules": [*others, wanted]}
            )
        except Exception as exc:
            raise translate_aws_error(exc, f"PutBucketLifecycleConfiguration {name}") from exc

    # --- queues --------------------------------------------------------------

    async def _find_queue(self, name: str) -> str | None:
        try:
            return str((await self.sqs.get_queue_url(QueueName=name))["QueueUrl"])
        except Exception as exc:
            if "NonExistentQueue" in _code(exc) or "QueueDoesNotExist" in _code(exc):
                return None
            raise translate_aws_error(exc, f"GetQueueUrl {name}") from exc

    async def queue_must_exist(self, url: str) -> None:
        """A queue given by ``url`` exists (provision makes only queues given by name)."""
        try:
            await self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        except Exception as exc:
            code = _code(exc)
            if "NonExistentQueue" not in code and "QueueDoesNotExist" not in code:
                raise translate_aws_error(exc, f"GetQueueAttributes {url}") from exc
            name = queue_name_of(url)
            raise ConfigError(
                f"queue {url} does not exist, and provision creates only queues given by "
                f"name: write {name!r} instead of the URL (provision then creates it where "
                "the endpoint and region point), or check the URL's account, region and name"
            ) from exc

    async def queue(self, kind: str, name: str, wanted: dict[str, str]) -> tuple[str, str]:
        """Create or update a queue to have ``wanted`` attributes. Returns (url, arn)."""
        given = name
        if _is_url(name):
            url: str | None = name
            name = queue_name_of(name)
        else:
            url = await self._find_queue(name)
        if url is None:
            self._record(kind, name, False, True)
            if self.dry_run:
                return "", f"arn:aws:sqs:{self.region}:000000000000:{name}"
            try:
                url = str(
                    (await self.sqs.create_queue(QueueName=name, Attributes=wanted))["QueueUrl"]
                )
            except Exception as exc:
                raise translate_aws_error(exc, f"CreateQueue {name}") from exc
        else:
            try:
                attrs = (
                    await self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
                ).get("Attributes", {})
            except Exception as exc:
                if url == given:
                    await self.queue_must_exist(given)  # the clearer error when missing
                raise translate_aws_error(exc, f"GetQueueAttributes {name}") from exc
            if "Policy" in wanted:  # merge by Sid: an operator's statements stay
                wanted = {**wanted, "Policy": merge_policy(attrs.get("Policy"), wanted["Policy"])}
            diff = {k: v for k, v in wanted.items() if not _same_attr(k, attrs.get(k), v)}
            self._record(kind, name, True, bool(diff), ", ".join(sorted(diff)))
            if diff and not self.dry_run:
                try:
                    await self.sqs.set_queue_attributes(QueueUrl=url, Attributes=diff)
                except Exception as exc:
                    raise translate_aws_error(exc, f"SetQueueAttributes {name}") from exc
        try:
            arn = (await self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))[
                "Attributes"
            ]["QueueArn"]
        except Exception as exc:
            raise translate_aws_error(exc, f"GetQueueAttributes {name}") from exc
        return url, str(arn)

    # --- notifications ---------------------------------------------------------

    async def notifications(self, bucket: str, configs: list[dict[str, Any]]) -> None:
        """Make the bucket's notifications of this configuration's pipelines equal
        ``configs``; keep every other one as it is.

        Other ``s3flow-*`` notifications are kept too: another configuration's pipelines
        on the same bucket (a second ``provision -c other.toml``), or one removed from
        this configuration (named in the change's detail: delete it by hand if so).
        """
        try:
            current = await self.s3.get_bucket_notification_configuration(Bucket=bucket)
        except Exception as exc:
            if self.dry_run and _code(exc) in ("NoSuchBucket", "404"):
                current = {}
            else:
                raise translate_aws_error(
                    exc, f"GetBucketNotificationConfiguration {bucket}"
                ) from exc
        current.pop("ResponseMetadata", None)
        queues = current.get("QueueConfigurations", [])
        mine = {c["Id"] for c in configs}
        ours = [q for q in queues if q.get("Id") in mine]
        others = [q for q in queues if q.get("Id") not in mine]
        # Another s3flow notification whose queue is gone can deliver nothing, and S3
        # refuses a whole configuration with a destination that does not exist.
        orphans = [q for q in others if await self._orphan(q)]
        others = [q for q in others if q not in orphans]
        foreign = [
            *others,
            *current.get("TopicConfigurations", []),
            *current.get("LambdaFunctionConfigurations", []),
        ]
        _check_foreign(bucket, configs, foreign)
        same = sorted(map(_norm_notification, ours)) == sorted(map(_norm_notification, configs))
        names = ", ".join(c["Id"] for c in configs)
        kept = sorted(
            str(q["Id"]) for q in others if str(q.get("Id", "")).startswith(NOTIFICATION_ID_PREFIX)
        )
        notes = []
        if kept:
            notes.append(
                f"kept {', '.join(kept)}: not in this configuration (another "
                "configuration's pipeline, or one removed from this one)"
            )
        if orphans:
            gone = ", ".join(str(q["Id"]) for q in orphans)
            notes.append(f"{'would remove' if self.dry_run else 'removed'} {gone}: queue gone")
        self._record(
            "notification",
            f"{bucket} -> {names}",
            bool(ours),
            not same or bool(orphans),
            "; ".join(notes),
        )
        if (same and not orphans) or self.dry_run:
            return
        new = {k: v for k, v in current.items() if k != "QueueConfigurations"}
        new["QueueConfigurations"] = others + configs
        try:
            await self.s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration=new
            )
        except Exception as exc:
            raise translate_aws_error(exc, f"PutBucketNotificationConfiguration {bucket}") from exc

    async def _orphan(self, config: dict[str, Any]) -> bool:
        """Whether ``config`` is an s3flow notification whose queue no longer exists."""
        if not str(config.get("Id", "")).startswith(NOTIFICATION_ID_PREFIX):
            return False
        parts = str(config.get("QueueArn", "")).split(":")
        if len(parts) != 6:
            return False
        try:
            await self.sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])
        except Exception as exc:
            return _code(exc) in _QUEUE_GONE
        return False


#: The error codes of a GetQueueUrl for a queue that does not exist.
_QUEUE_GONE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")

_PAB = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")


def _same_rule_part(key: str, have: Any, want: Any) -> bool:
    """Whether a lifecycle rule's ``key`` is as wanted (a filter of the whole bucket is
    ``{}`` or ``{"Prefix": ""}``)."""
    if key == "Filter":
        return bool((have or {"Prefix": ""}) == (want or {"Prefix": ""}))
    return bool(have == want)


def _same_attr(name: str, have: Any, want: str) -> bool:
    if have is None:
        return False
    if name in ("RedrivePolicy", "Policy"):
        try:
            a, b = json.loads(have), json.loads(want)
        except (TypeError, ValueError):
            return False
        if name == "RedrivePolicy":
            return bool(
                a.get("deadLetterTargetArn") == b.get("deadLetterTargetArn")
                and int(a.get("maxReceiveCount", 0)) == int(b.get("maxReceiveCount", 0))
            )
        return bool(a == b)
    return str(have) == str(want)


def _filter_value(config: dict[str, Any], name: str) -> str:
    """A notification configuration's prefix or suffix rule ('' when it has none)."""
    rules = config.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    return next((str(r["Value"]) for r in rules if str(r["Name"]).lower() == name), "")


def _events_overlap(a: list[str], b: list[str]) -> bool:
    """Whether two event lists share an event type (``s3:ObjectCreated:*`` covers
    ``s3:ObjectCreated:Put``)."""

    def covers(x: str, y: str) -> bool:
        return x == y or (x.endswith("*") and y.startswith(x[:-1]))

    return any(covers(x, y) or covers(y, x) for x in a for y in b)


def _check_foreign(
    bucket: str, configs: list[dict[str, Any]], foreign: list[dict[str, Any]]
) -> None:
    """ConfigError when one of s3flow's ``configs`` overlaps a notification configuration
    it does not manage (an operator's queue, topic or Lambda one, or another s3flow
    configuration's): S3 would refuse the whole configuration, and s3flow keeps the
    others as they are."""
    for ours in configs:
        prefix, suffix = _filter_value(ours, "prefix"), _filter_value(ours, "suffix")
        for theirs in foreign:
            p, s = _filter_value(theirs, "prefix"), _filter_value(theirs, "suffix")
            if _events_overlap(
                ours.get("Events", []), theirs.get("Events", [])
            ) and key_filters_overlap((prefix, p), (suffix, s)):
                whose = (
                    "the s3flow notification of a pipeline this configuration does not have "
                    "(another configuration's, or one renamed or removed here: if it is "
                    "stale, delete it from the bucket's notifications and run provision "
                    "again)"
                    if str(theirs.get("Id", "")).startswith(NOTIFICATION_ID_PREFIX)
                    else "the bucket's own notification"
                )
                raise ConfigError(
                    f"bucket {bucket!r}: s3flow's notification {ours['Id']!r} (prefix "
                    f"{prefix!r} suffix {suffix!r}) overlaps {whose} "
                    f"{theirs.get('Id', '?')!r} (events {', '.join(theirs.get('Events', []))}, "
                    f"prefix {p!r} suffix {s!r}): {_S3_RULE}. Nothing was changed on the "
                    "bucket's notifications; make the pipeline's prefix or suffix disjoint "
                    "from that configuration's, or remove or narrow that configuration"
                )


def notification_overlaps(settings: Settings) -> list[tuple[PipelineSettings, PipelineSettings]]:
    """The pairs of pipelines whose bucket notifications S3 would refuse together: one
    bucket, overlapping prefix/suffix filters (:func:`~s3flow.settings.loading.filters_overlap`;
    each sets one ``s3:ObjectCreated:*`` configuration), whatever their key_regex."""
    ps = settings.pipelines
    return [(p, q) for i, p in enumerate(ps) for q in ps[i + 1 :] if filters_overlap(p, q)]


def check_notifications(settings: Settings) -> None:
    """ConfigError naming every pair of pipelines whose notifications overlap (see
    :func:`notification_overlaps`): raised before anything is created or exported."""
    pairs = notification_overlaps(settings)
    if not pairs:
        return
    shown = "; ".join(
        f"{p.name!r} and {q.name!r} on bucket {p.bucket!r} ({describe_filters(p)}; "
        f"{describe_filters(q)})"
        for p, q in pairs
    )
    raise ConfigError(
        f"the bucket notifications of these pipelines overlap: {shown}. {_S3_RULE}, so "
        "they cannot be provisioned (nothing was created). Make their prefixes or suffixes "
        "disjoint (e.g. prefix 'in/a/' and 'in/b/', or suffix '.csv' and '.json'), or make "
        "them one pipeline whose [[pipelines.routes]] send each kind of object to its "
        "processor (key_regex / key_glob per route, see docs/routing.md)"
    )


def _norm_notification(q: dict[str, Any]) -> tuple[Any, ...]:
    rules = q.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    return (
        q.get("Id"),
        q.get("QueueArn"),
        tuple(sorted(q.get("Events", []))),
        tuple(sorted((str(r["Name"]).lower(), r["Value"]) for r in rules)),
    )


def queue_policy(queue_arn: str, bucket: str, account: str | None = None) -> str:
    """Queue policy that lets S3 (only for ``bucket`` of ``account``) send notifications.

    ``aws:SourceAccount`` guards against a bucket of the same name in another
    account (bucket ARNs carry no account id).
    """
    condition: dict[str, Any] = {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}}
    if account:
        condition["StringEquals"] = {"aws:SourceAccount": account}
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": f"s3flow-allow-s3-{bucket}"[:100],
                    "Effect": "Allow",
                    "Principal": {"Service": "s3.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": condition,
                }
            ],
        },
        sort_keys=True,
    )


def merge_policy(current: str | None, ours: str) -> str:
    """``current`` with s3flow's statements (matched by Sid) replaced or added.

    An operator's own statements are kept as they are.
    """
    mine = json.loads(ours)
    try:
        doc = json.loads(current) if current else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("Statement"), list | dict):
        return ours
    statements = doc["Statement"] if isinstance(doc["Statement"], list) else [doc["Statement"]]
    sids = {st.get("Sid") for st in mine["Statement"]}
    kept = [st for st in statements if not (isinstance(st, dict) and st.get("Sid") in sids)]
    merged = {**doc, "Statement": kept + mine["Statement"]}
    merged.setdefault("Version", "2012-10-17")
    return json.dumps(merged, sort_keys=True)


def _check_pipeline(p: PipelineSettings) -> None:
    if p.queue.endswith(".fifo"):
        raise ConfigError(
            f"pipeline {p.name!r}: queue {p.queue!r} is FIFO; S3 cannot send event "
            "notifications to FIFO queues (AWS rejects it; some emulators silently drop events)"
        )


async def provision(settings: Settings, *, dry_run: bool = False) -> list[Change]:
    """Create or verify everything the configured pipelines need."""
    if not settings.pipelines:
        raise ConfigError("no pipelines configured: nothing to provision")
    for p in settings.pipelines:
        _check_pipeline(p)
    # One notification configuration per pipeline, filtered by its prefix and suffix:
    # S3 would refuse overlapping ones after the buckets and queues were made.
    check_notifications(settings)
    async with open_clients(settings.aws) as clients:
        prov = Provisioner(clients.s3, clients.sqs, settings.aws.region, dry_run=dry_run)
        buckets: list[str] = []
        for p in settings.pipelines:
            buckets.append(p.bucket)
            if p.output.startswith("s3://"):
                buckets.append(p.output[5:].split("/", 1)[0])
        for b in dict.fromkeys(buckets):
            await prov.bucket(b)
            await prov.abort_incomplete_uploads(b)
        per_bucket: dict[str, list[dict[str, Any]]] = {}
        for p in settings.pipelines:
            if _is_url(p.queue):
                await prov.queue_must_exist(p.queue)  # before its DLQ is made
            # A DLQ named after a queue given by URL is made by name, where the endpoint
            # and region point (the worker finds it by the queue's redrive policy).
            dlq = p.dlq or queue_name_of(p.dlq_name)
            _, dlq_arn = await prov.queue("dlq", dlq, {"MessageRetentionPeriod": "1209600"})
            name = queue_name_of(p.queue)
            account = dlq_arn.split(":")[4]
            arn_guess = f"arn:aws:sqs:{settings.aws.region}:{account}:{name}"
            wanted = {
                "VisibilityTimeout": str(p.visibility_timeout_s),
                "ReceiveMessageWaitTimeSeconds": str(p.wait_time_s),
                # The worker dead-letters after max_receive_count failures itself; the
                # queue's redrive is only the safety net (a message that kills workers).
                "RedrivePolicy": json.dumps(
                    {
                        "deadLetterTargetArn": dlq_arn,
                        "maxReceiveCount": p.redrive_max_receive_count,
                    }
                ),
                "Policy": queue_policy(arn_guess, p.bucket, account),
            }
            _, arn = await prov.queue("queue", p.queue, wanted)
            rules = []
            if p.prefix:
                rules.append({"Name": "prefix", "Value": p.prefix})
            if p.suffix:
                rules.append({"Name": "suffix", "Value": p.suffix})
            config: dict[str, Any] = {
                "Id": f"{NOTIFICATION_ID_PREFIX}{p.name}",
                "QueueArn": arn,
                "Events": [NOTIFICATION_EVENT],
            }
            if rules:
                config["Filter"] = {"Key": {"FilterRules": rules}}
            per_bucket.setdefault(p.bucket, []).append(config)
        for bucket, configs in per_bucket.items():
            await prov.notifications(bucket, configs)
        if settings.jobs is not None:
            await _provision_jobs(prov, settings.jobs)
        return prov.changes


async def _provision_jobs(prov: Provisioner, jobs: JobsSettings) -> None:
    """The upload-jobs extras: bucket CORS and lifecycle, the processing and progress FIFOs.

    The uploads bucket, the intake queue, its DLQ and the notification on
    ``uploads/`` come with the ``jobs-intake`` pipeline that ``[jobs]`` adds.
    """
    await prov.cors(jobs.bucket, jobs.origins())
    await prov.expire_prefix(jobs.bucket, "uploads/", jobs.abandoned_upload_days)
    fifo = {"FifoQueue": "true", "ContentBasedDeduplication": "false"}
    _, dlq_arn = await prov.queue(
        "dlq", jobs.resource("processing-dlq.fifo"), {**fifo, "MessageRetentionPeriod": "1209600"}
    )
    await prov.queue(
        "queue",
        jobs.resource("processing.fifo"),
        {
            **fifo,
            "VisibilityTimeout": str(jobs.visibility_timeout_s),
            "RedrivePolicy": json.dumps(
                {
                    "deadLetterTargetArn": dlq_arn,
                    # Above max_receive_count: the job runner fails a job on the receive after
                    # its last attempt (the worker died in it); the DLQ is only a safety net.
                    "maxReceiveCount": processing_pipeline(jobs).redrive_max_receive_count,
                }
            ),
        },
    )
    await prov.queue("queue", jobs.resource("progress.fifo"), {**fifo, "VisibilityTimeout": "30"})
