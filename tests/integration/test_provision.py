"""`provision` against a real endpoint: what it creates, and that a second run changes nothing."""

from __future__ import annotations

import asyncio
import json

import pytest
from itest_support import Harness

from s3flow.errors import ConfigError
from s3flow.provision import provision

pytestmark = pytest.mark.integration


def test_provision_creates_then_is_idempotent(harness: Harness) -> None:
    settings = harness.configure(provision_it=False, prefix="logs/", suffix=".gz")
    dry = asyncio.run(provision(settings, dry_run=True))
    assert {c.action for c in dry} == {"would create"}
    assert harness.s3.list_buckets()["Buckets"] is not None
    with pytest.raises(harness.s3.exceptions.ClientError):
        harness.s3.head_bucket(Bucket=harness.bucket)  # dry run created nothing

    first = asyncio.run(provision(settings))
    assert {(c.kind, c.action) for c in first} == {
        ("bucket", "created"),
        ("dlq", "created"),
        ("queue", "created"),
        ("notification", "created"),
    }
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
    assert int(redrive["maxReceiveCount"]) == 3
    assert redrive["deadLetterTargetArn"].endswith(f"{harness.queue}-dlq")
    assert attrs["VisibilityTimeout"] == "30"
    policy = json.loads(attrs["Policy"])
    assert policy["Statement"][0]["Principal"] == {"Service": "s3.amazonaws.com"}
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
    assert json.loads(attrs["RedrivePolicy"])["maxReceiveCount"] in (5, "5")


def test_provision_refuses_fifo_queue(harness: Harness) -> None:
    settings = harness.configure(provision_it=False, queue=f"{harness.queue}.fifo")
    with pytest.raises(ConfigError, match="FIFO"):
        asyncio.run(provision(settings))
