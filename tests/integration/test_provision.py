"""`provision` against a real endpoint: what it creates, and that a second run changes nothing."""

from __future__ import annotations

import asyncio
import json

import pytest
from itest_support import Harness

from s3flow.errors import ConfigError
from s3flow.provision import provision

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
