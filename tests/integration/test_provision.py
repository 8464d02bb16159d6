"""`provision` against a real endpoint: what it creates, and that a second run changes nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import unquote_plus

import pytest
from itest_support import Harness, wait_for

from s3flow.errors import ConfigError
from s3flow.provisioning import provision
from s3flow.settings import Settings, load_settings

pytestmark = pytest.mark.integration


def bucket_names(harness: Harness) -> set[str]:
    return {b["Name"] for b in harness.s3.list_buckets()["Buckets"]}


def test_provision_creates_then_is_idempotent(harness: Harness) -> None:
    settings = harness.configure(provision_it=False, prefix="logs/", suffix=".gz")
    dry = asyncio.run(provision(settings, dry_run=True))
    assert {c.action for c in dry} == {"would create"}
    assert harness.bucket not in bucket_names(harness)
    with pytest.raises(harness.s3.exceptions.ClientError):
        harness.s3.head_bucket(Bucket=harness.bucket)  # dry run created nothing

    first = asyncio.run(provision(settings))
    assert {(c.kind, c.action) for c in first} == {
        ("bucket", "created"),
        ("lifecycle", "created"),
        ("dlq", "created"),
        ("queue", "created"),
        ("notification", "created"),
    }
    assert harness.bucket in bucket_names(harness)
    second = asyncio.run(provision(settings))
    assert {c.action for c in second} == {"unchanged"}, second

    enc = harness.s3.get_bucket_encryption(Bucket=harness.bucket)
    rule = enc["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    pab = harness.s3.get_public_access_block(Bucket=harness.bucket)
    assert all(pab["PublicAccessBlockConfiguration"].values())
    attrs = harness.sqs.get_queue_attributes(QueueUrl=harness.queue_url, AttributeNames=["All"])[
        "Attributes"
    ]
    redrive = json.loads(attrs["RedrivePolicy"])
    # The worker dead-letters after 3 failures itself; the queue is the safety net above it.
    assert int(redrive["maxReceiveCount"]) == 13
    assert redrive["deadLetterTargetArn"].endswith(f"{harness.queue}-dlq")
    assert attrs["VisibilityTimeout"] == "30"
    policy = json.loads(attrs["Policy"])
    (st,) = policy["Statement"]
    assert st["Principal"] == {"Service": "s3.amazonaws.com"}
    assert st["Condition"]["ArnLike"] == {"aws:SourceArn": f"arn:aws:s3:::{harness.bucket}"}
    account = redrive["deadLetterTargetArn"].split(":")[4]
    assert st["Condition"]["StringEquals"] == {"aws:SourceAccount": account}
    notif = harness.s3.get_bucket_notification_configuration(Bucket=harness.bucket)
    (qc,) = notif["QueueConfigurations"]
    assert qc["Id"] == "s3flow-p" and qc["Events"] == ["s3:ObjectCreated:*"]
    rules = {r["Name"].lower(): r["Value"] for r in qc["Filter"]["Key"]["FilterRules"]}
    assert rules == {"prefix": "logs/", "suffix": ".gz"}


ABORT_RULE = {
    "ID": "s3flow-abort-incomplete-uploads",
    "Filter": {"Prefix": ""},
    "Status": "Enabled",
    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
}


def _lifecycle(harness: Harness, bucket: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = harness.s3.get_bucket_lifecycle_configuration(Bucket=bucket)[
        "Rules"
    ]
    return rules


def test_every_bucket_gets_the_rule_aborting_incomplete_uploads(harness: Harness) -> None:
    """The parts of a multipart upload a killed worker never completed stayed on the
    buckets provision made (billed for ever); the exported template's buckets abort
    them after 7 days. Provision adds the same rule, keeping an operator's rules."""
    settings = harness.configure(provision_it=False)
    buckets = {harness.bucket, harness.out_bucket}

    def lifecycle_changes(changes: list[Any]) -> dict[str, tuple[str, str]]:
        return {c.name: (c.action, c.detail) for c in changes if c.kind == "lifecycle"}

    detail = "abort incomplete multipart uploads after 7d"
    dry = asyncio.run(provision(settings, dry_run=True))
    assert lifecycle_changes(dry) == {b: ("would create", detail) for b in buckets}
    first = asyncio.run(provision(settings))
    assert lifecycle_changes(first) == {b: ("created", detail) for b in buckets}
    for b in buckets:
        assert _lifecycle(harness, b) == [ABORT_RULE]

    # An operator sets the bucket's rules anew, dropping s3flow's.
    theirs = {
        "ID": "expire-logs",
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "Expiration": {"Days": 30},
    }
    harness.s3.put_bucket_lifecycle_configuration(
        Bucket=harness.bucket, LifecycleConfiguration={"Rules": [theirs]}
    )
    dry = asyncio.run(provision(settings, dry_run=True))
    assert lifecycle_changes(dry) == {
        harness.bucket: ("would create", detail),
        harness.out_bucket: ("unchanged", detail),
    }
    assert _lifecycle(harness, harness.bucket) == [theirs]
    again = asyncio.run(provision(settings))
    assert lifecycle_changes(again)[harness.bucket] == ("created", detail)
    assert _lifecycle(harness, harness.bucket) == [theirs, ABORT_RULE]
    third = asyncio.run(provision(settings))
    assert {c.action for c in third} == {"unchanged"}, third
    assert _lifecycle(harness, harness.bucket) == [theirs, ABORT_RULE]


def test_provision_updates_drifted_settings(harness: Harness) -> None:
    harness.configure()
    settings = harness.configure(provision_it=False, visibility_timeout_s=99, max_receive_count=5)
    changes = asyncio.run(provision(settings))
    queue = next(c for c in changes if c.kind == "queue")
    assert queue.action == "updated" and "VisibilityTimeout" in queue.detail
    attrs = harness.sqs.get_queue_attributes(QueueUrl=harness.queue_url, AttributeNames=["All"])[
        "Attributes"
    ]
    assert attrs["VisibilityTimeout"] == "99"
    assert int(json.loads(attrs["RedrivePolicy"])["maxReceiveCount"]) == 15


def test_provision_merges_its_statement_into_an_operator_policy(harness: Harness) -> None:
    settings = harness.configure()
    url = harness.queue_url
    arn = harness.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    ours = json.loads(
        harness.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"][
            "Policy"
        ]
    )["Statement"][0]
    operator = {
        "Sid": "ops-team-read",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:role/ops"},
        "Action": "sqs:ReceiveMessage",
        "Resource": arn,
    }
    stale_ours = {**ours, "Condition": {"ArnLike": {"aws:SourceArn": "arn:aws:s3:::old"}}}
    doc = {"Version": "2012-10-17", "Statement": [operator, stale_ours]}
    harness.sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(doc)})
    changes = asyncio.run(provision(settings))
    queue = next(c for c in changes if c.kind == "queue")
    assert queue.action == "updated" and "Policy" in queue.detail
    policy = json.loads(
        harness.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"][
            "Policy"
        ]
    )
    by_sid = {st["Sid"]: st for st in policy["Statement"]}
    assert by_sid["ops-team-read"] == operator  # the operator's statement is kept
    assert by_sid[ours["Sid"]] == ours  # s3flow's own statement is put right, not duplicated
    assert len(policy["Statement"]) == 2
    again = asyncio.run(provision(settings))
    assert {c.action for c in again} == {"unchanged"}


def test_queue_max_receive_count_must_exceed_the_workers_limit(harness: Harness) -> None:
    with pytest.raises(ConfigError, match="queue_max_receive_count"):
        harness.configure(provision_it=False, max_receive_count=5, queue_max_receive_count=5)


def test_provision_refuses_fifo_queue(harness: Harness) -> None:
    settings = harness.configure(provision_it=False, queue=f"{harness.queue}.fifo")
    with pytest.raises(ConfigError, match="FIFO"):
        asyncio.run(provision(settings))


# --- several pipelines on one bucket ------------------------------------------------------


def _two_pipelines(h: Harness, a: dict[str, Any], b: dict[str, Any]) -> Settings:
    """Settings of pipelines 'a' and 'b' on the harness's bucket, each with its own queue."""
    base = {"processor": "line-count", "bucket": h.bucket, "output": f"s3://{h.out_bucket}/r/"}
    return load_settings(
        None,
        {
            "state": {"url": h.state_url},
            "pipelines": [
                {"name": "a", "queue": f"{h.queue}-a", **base, **a},
                {"name": "b", "queue": f"{h.queue}-b", **base, **b},
            ],
        },
    )


def _keys_on(h: Harness, queue: str) -> list[str]:
    """The object keys of the notifications on ``queue`` (the test event dropped)."""
    url = h.sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    keys = []
    for m in h.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        keys += [
            unquote_plus(r["s3"]["object"]["key"]) for r in json.loads(m["Body"]).get("Records", [])
        ]
    return sorted(keys)


def test_pipelines_with_disjoint_filters_get_one_notification_each(harness: Harness) -> None:
    """One configuration per pipeline, filtered by its prefix and suffix: each queue gets
    only its pipeline's objects."""
    settings = _two_pipelines(
        harness, {"prefix": "in/", "suffix": ".csv"}, {"prefix": "in/", "suffix": ".json"}
    )
    asyncio.run(provision(settings))
    notif = harness.s3.get_bucket_notification_configuration(Bucket=harness.bucket)
    rules = {
        q["Id"]: {r["Name"].lower(): r["Value"] for r in q["Filter"]["Key"]["FilterRules"]}
        for q in notif["QueueConfigurations"]
    }
    assert rules == {
        "s3flow-a": {"prefix": "in/", "suffix": ".csv"},
        "s3flow-b": {"prefix": "in/", "suffix": ".json"},
    }
    for k in ("in/x.csv", "in/y.json", "in/z.txt"):
        harness.put(k, b"1\n")
    assert wait_for(lambda: _keys_on(harness, f"{harness.queue}-a"), 5, "a's event") == ["in/x.csv"]
    assert wait_for(lambda: _keys_on(harness, f"{harness.queue}-b"), 5, "b's event") == [
        "in/y.json"
    ]


def test_provision_refuses_overlapping_notifications_before_creating_anything(
    harness: Harness,
) -> None:
    """Two pipelines whose key_regex keep them apart pass the settings check, but their
    notifications overlap (S3 filters by prefix and suffix only): real S3 refuses them
    ("Configurations overlap"; moto accepts them), so provision refuses them first, naming
    both and what to do, dry run or not, before any bucket or queue exists."""
    settings = _two_pipelines(
        harness,
        {"prefix": "in/", "key_regex": "^in/orders-"},
        {"prefix": "in/", "suffix": ".csv", "key_regex": "^in/refunds-"},
    )
    for dry_run in (True, False):
        with pytest.raises(ConfigError) as refused:
            asyncio.run(provision(settings, dry_run=dry_run))
        text = str(refused.value)
        assert f"'a' and 'b' on bucket '{harness.bucket}'" in text
        assert "'a' prefix 'in/' suffix '' key_regex '^in/orders-'" in text
        assert "'b' prefix 'in/' suffix '.csv' key_regex '^in/refunds-'" in text
        assert "Configurations overlap" in text and "by key prefix and suffix only" in text
        assert "disjoint" in text and "[[pipelines.routes]]" in text
    with pytest.raises(harness.s3.exceptions.ClientError):
        harness.s3.head_bucket(Bucket=harness.bucket)
    with pytest.raises(harness.sqs.exceptions.QueueDoesNotExist):
        harness.sqs.get_queue_url(QueueName=f"{harness.queue}-a")


def test_provision_refuses_a_notification_overlapping_one_it_does_not_own(
    harness: Harness,
) -> None:
    """An operator's own configuration on the bucket is kept as it is: one of s3flow's that
    overlaps it (same event type, overlapping prefix and suffix) would make S3 refuse the
    whole configuration, so provision says which and changes no notification."""
    harness.s3.create_bucket(Bucket=harness.bucket)
    arn = harness.sqs.get_queue_attributes(
        QueueUrl=harness.sqs.create_queue(QueueName=f"{harness.queue}-ops")["QueueUrl"],
        AttributeNames=["QueueArn"],
    )["Attributes"]["QueueArn"]
    theirs = {
        "Id": "ops-audit",
        "QueueArn": arn,
        "Events": ["s3:ObjectCreated:Put"],
        "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".csv"}]}},
    }
    harness.s3.put_bucket_notification_configuration(
        Bucket=harness.bucket, NotificationConfiguration={"QueueConfigurations": [theirs]}
    )
    settings = harness.configure(provision_it=False, prefix="in/", suffix="s.csv")
    with pytest.raises(ConfigError) as refused:
        asyncio.run(provision(settings))
    text = str(refused.value)
    assert "'s3flow-p'" in text and "'ops-audit'" in text and "Configurations overlap" in text
    notif = harness.s3.get_bucket_notification_configuration(Bucket=harness.bucket)
    assert [q["Id"] for q in notif["QueueConfigurations"]] == ["ops-audit"]
    disjoint = harness.configure(provision_it=False, prefix="in/", suffix=".json")
    asyncio.run(provision(disjoint))
    notif = harness.s3.get_bucket_notification_configuration(Bucket=harness.bucket)
    assert sorted(q["Id"] for q in notif["QueueConfigurations"]) == ["ops-audit", "s3flow-p"]


def test_a_second_configuration_on_the_bucket_keeps_the_firsts_notification(
    harness: Harness,
) -> None:
    """`provision -c other.toml` for a pipeline on the same bucket made the bucket's
    s3flow notifications equal to *its* pipelines: the first configuration's was deleted
    and its pipeline silently received nothing more."""
    first = harness.configure(provision_it=False, name="counts", prefix="logs/")
    second = harness.configure(
        provision_it=False, name="other", prefix="other/", queue=f"{harness.queue}-2"
    )
    asyncio.run(provision(first))
    changes = asyncio.run(provision(second))
    (notification,) = [c for c in changes if c.kind == "notification"]
    assert notification.action == "created"
    assert "kept s3flow-counts: not in this configuration" in notification.detail
    notif = harness.s3.get_bucket_notification_configuration(Bucket=harness.bucket)
    assert sorted(q["Id"] for q in notif["QueueConfigurations"]) == [
        "s3flow-counts",
        "s3flow-other",
    ]
    again = asyncio.run(provision(first))
    assert {c.action for c in again} == {"unchanged"}, again
    harness.put("logs/a.txt", b"1\n")
    harness.put("other/b.txt", b"1\n")
    assert wait_for(lambda: _keys_on(harness, harness.queue), 5, "counts' event") == ["logs/a.txt"]
    assert wait_for(lambda: _keys_on(harness, f"{harness.queue}-2"), 5, "other's event") == [
        "other/b.txt"
    ]
    overlapping = harness.configure(
        provision_it=False, name="third", prefix="logs/x", queue=f"{harness.queue}-3"
    )
    with pytest.raises(ConfigError) as refused:
        asyncio.run(provision(overlapping))
    text = str(refused.value)
    assert "'s3flow-third'" in text and "'s3flow-counts'" in text
    assert "the s3flow notification of a pipeline this configuration does not have" in text
    assert "if it is stale, delete it" in text


def test_another_configurations_notification_whose_queue_is_gone_is_removed(
    harness: Harness,
) -> None:
    """A kept notification whose queue was deleted can deliver nothing, and S3 refuses a
    whole configuration with a destination that does not exist."""
    first = harness.configure(provision_it=False, name="counts", prefix="logs/")
    second = harness.configure(
        provision_it=False, name="other", prefix="other/", queue=f"{harness.queue}-2"
    )
    asyncio.run(provision(first))
    harness.sqs.delete_queue(
        QueueUrl=harness.sqs.get_queue_url(QueueName=harness.queue)["QueueUrl"]
    )
    dry = asyncio.run(provision(second, dry_run=True))
    (planned,) = [c for c in dry if c.kind == "notification"]
    assert "would remove s3flow-counts: queue gone" in planned.detail
    changes = asyncio.run(provision(second))
    (notification,) = [c for c in changes if c.kind == "notification"]
    assert "removed s3flow-counts: queue gone" in notification.detail
    notif = harness.s3.get_bucket_notification_configuration(Bucket=harness.bucket)
    assert [q["Id"] for q in notif["QueueConfigurations"]] == ["s3flow-other"]


def test_a_queue_given_by_url_gets_its_dlq_by_name_and_works(harness: Harness) -> None:
    """The DLQ of a queue given by URL defaulted to '<URL>-dlq', which provision took for
    an existing queue and never made: "GetQueueAttributes ... -dlq failed"."""
    url = harness.sqs.create_queue(QueueName=harness.queue)["QueueUrl"]
    settings = harness.configure(provision_it=False, queue=url)
    asyncio.run(provision(settings))
    dlq_url = harness.sqs.get_queue_url(QueueName=f"{harness.queue}-dlq")["QueueUrl"]
    attrs = harness.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
    target = json.loads(attrs["Attributes"]["RedrivePolicy"])["deadLetterTargetArn"]
    assert target.endswith(f":{harness.queue}-dlq")
    harness.purge()
    harness.put("a.txt", b"1\n")
    assert harness.run().pipelines["p"].objects_processed == 1
    assert harness.depth(dlq_url) == (0, 0)
