"""ElasticMQ + S3Proxy from Maven Central, and the latency proxy in front of them."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from itest_support import s3_event

from s3flow.app import open_store
from s3flow.local.aws.server import ElasticMQ, S3Proxy, client_env
from s3flow.local.kafka.host import port_free
from s3flow.local.kafka.install import java_available, maven_available
from s3flow.local.latency import LatencyProxy, run_in_thread
from s3flow.ops.dlq import redrive
from s3flow.settings import load_settings
from s3flow.state.records import FileStatus, ObjectId

pytestmark = pytest.mark.skipif(
    not (java_available() and maven_available()), reason="needs Java 17+ and Maven"
)


def _clients(sqs_url: str, s3_url: str) -> tuple[Any, Any]:
    import boto3
    from botocore.config import Config

    env = client_env()
    session = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    conf = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return (
        session.client("sqs", endpoint_url=sqs_url, config=conf),
        session.client("s3", endpoint_url=s3_url, config=conf),
    )


def test_elasticmq_and_s3proxy_serve_boto3_and_stop() -> None:
    with ElasticMQ() as mq, S3Proxy() as s3p:
        ports = (mq.port, s3p.port)
        assert not port_free(mq.port) and not port_free(s3p.port)
        with run_in_thread(LatencyProxy(mq.port, 0.010), LatencyProxy(s3p.port, 0.020)) as (
            pq,
            ps,
        ):
            for sqs_url, s3_url in ((mq.url, s3p.url), (pq.url, ps.url)):
                sqs, s3 = _clients(sqs_url, s3_url)
                name = f"q{int(time.time() * 1000)}"
                url = sqs.create_queue(QueueName=name)["QueueUrl"]
                sqs.send_message_batch(
                    QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(3)]
                )
                got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
                assert {m["Body"] for m in got} <= {"m0", "m1", "m2"} and got
                sqs.delete_message_batch(
                    QueueUrl=url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(got)
                    ],
                )
                s3.create_bucket(Bucket=name)
                s3.put_object(Bucket=name, Key="a/b c.txt", Body=b"x" * 100_000)
                assert s3.get_object(Bucket=name, Key="a/b c.txt")["Body"].read() == b"x" * 100_000
            rep_q, rep_s = pq.report(), ps.report()
            assert rep_q["requests"] >= 4 and rep_s["requests"] >= 3
            assert 8.0 <= rep_q["added_ms"]["p50"] <= 30.0
            assert 18.0 <= rep_s["added_ms"]["p50"] <= 40.0
    assert mq.pid is None and s3p.pid is None
    assert all(port_free(p) for p in ports)


def test_dlq_redrive_with_a_state_store_resets_what_it_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ElasticMQ runs StartMessageMoveTask (moto and MiniStack do not), as AWS does. A
    move made by SQS cannot set the objects back from dead, and the worker would ack
    their redriven messages without work: with a store, redrive moves each message
    itself and resets its objects; without one, it leaves the move to SQS."""
    env = client_env()
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, env[k])
    with ElasticMQ() as mq:
        sqs, _ = _clients(mq.url, mq.url)
        name = f"rd{int(time.time() * 1000)}"
        dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        src_url = sqs.create_queue(
            QueueName=name,
            Attributes={
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})
            },
        )["QueueUrl"]
        settings = load_settings(
            None,
            {
                "aws": {"endpoint_url": mq.url, "region": "us-east-1"},
                "pipelines": [
                    {
                        "name": "p",
                        "processor": "line-count",
                        "bucket": "b",
                        "queue": name,
                        "output": "s3://o/res/",
                    }
                ],
                "state": {"url": f"sqlite:{tmp_path}/state.db"},
            },
        )
        p = settings.pipelines[0]

        def to_dlq(key: str) -> None:
            body = {"Records": [s3_event("b", key)]}
            sqs.send_message(QueueUrl=dlq_url, MessageBody=json.dumps(body))

        async def with_store() -> tuple[Any, FileStatus | None]:
            async with open_store(settings) as store:
                assert store is not None
                # The upload the DLQ message names (eTag "x", sequencer "0A1B"): a redrive
                # resets that record only.
                oid = ObjectId("b", "dead.txt", "x@0A1B")
                claim = await store.claim(oid, pipeline="p", owner="w", ttl_s=60)
                await store.fail(
                    oid, token=claim.token, status=FileStatus.DEAD, error_class="X", error="x"
                )
                report = await redrive(settings, p, store=store, lease_s=2)
                rec = await store.get(oid)
                return report, rec.status if rec else None

        to_dlq("dead.txt")
        report, status = asyncio.run(with_store())
        assert report.method == "receive-send-delete" and report.moved == 1
        assert status is FileStatus.RECEIVED
        # The endpoint can move messages itself: the store is why redrive did not ask it.
        to_dlq("other.txt")
        report = asyncio.run(redrive(settings, p, store=None))
        assert report.method == "message-move-task"
        got: list[str] = []
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            for m in sqs.receive_message(QueueUrl=src_url, MaxNumberOfMessages=10).get(
                "Messages", []
            ):
                got.append(json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"])
        assert sorted(got) == ["dead.txt", "other.txt"]
