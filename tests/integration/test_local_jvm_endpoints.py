"""ElasticMQ + S3Proxy from Maven Central, and the latency proxy in front of them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from s3flow.local.aws.server import ElasticMQ, S3Proxy, client_env
from s3flow.local.kafka.host import port_free
from s3flow.local.kafka.install import java_available, maven_available
from s3flow.local.latency import LatencyProxy, run_in_thread

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
