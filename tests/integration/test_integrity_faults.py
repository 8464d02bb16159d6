"""The worker behind a fault-injecting proxy: 5% of its S3/SQS requests fail or stall.

The worker (``s3flow worker --burst`` as a subprocess) reaches moto only
through :class:`fault_proxy.FaultProxy` (``AWS_ENDPOINT_URL``); the uploads and
the checks go to moto directly. Every fault is transient (HTTP 500, HTTP 503,
a reset connection, a 2 s stall), so a user expects the same outcome as
without faults: every result present and right, empty queues and DLQ, every
state record ``completed``. ``[aws] max_attempts`` stays at its default.

The first tests check the proxy itself, lightly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError
from fault_proxy import Fault, FaultProxy
from integrity_support import attempts_histogram, integrity_problems, upload_corpus
from itest_support import Harness, spawn_worker

from s3flow.local.endpoint import LocalEndpoint

pytestmark = [pytest.mark.integration, pytest.mark.many_pollers]

SEED = 5150
OBJECTS = 300


def _clients(url: str, attempts: int = 1) -> tuple[Any, Any]:
    cfg = Config(retries={"total_max_attempts": attempts, "mode": "standard"})
    kw: dict[str, Any] = {"endpoint_url": url, "region_name": "us-east-1", "config": cfg}
    return boto3.client("s3", **kw), boto3.client("sqs", **kw)


@pytest.fixture()
def proxy(endpoint: LocalEndpoint) -> Iterator[FaultProxy]:
    with FaultProxy(endpoint.url, fault_rate=0.0, seed=1, stall_s=0.3) as p:
        yield p


# --- the proxy --------------------------------------------------------------------------


def test_proxy_forwards_s3_and_sqs_with_keep_alive(proxy: FaultProxy, harness: Harness) -> None:
    harness.configure()
    s3, sqs = _clients(proxy.url)
    body = b"x\n" * 200_000  # large enough for Expect: 100-continue
    s3.put_object(Bucket=harness.bucket, Key="big.txt", Body=body)
    assert s3.get_object(Bucket=harness.bucket, Key="big.txt")["Body"].read() == body
    assert s3.head_object(Bucket=harness.bucket, Key="big.txt")["ContentLength"] == len(body)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=harness.bucket)["Contents"]]
    assert keys == ["big.txt"]
    url = sqs.get_queue_url(QueueName=harness.queue)["QueueUrl"]
    msgs = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
    assert "big.txt" in msgs[0]["Body"]  # moto's notification of the put above
    sqs.delete_message(QueueUrl=url, ReceiptHandle=msgs[0]["ReceiptHandle"])
    c = proxy.counts
    assert c["requests"] == 7 and proxy.injected == 0
    assert c["connections"] < c["requests"]  # connections are reused


@pytest.mark.parametrize("kind", list(Fault))
def test_proxy_injects_each_fault(proxy: FaultProxy, harness: Harness, kind: Fault) -> None:
    harness.configure()
    s3, sqs = _clients(proxy.url)
    proxy.kinds, proxy.fault_rate = (kind,), 1.0
    calls: dict[str, Callable[[], Any]] = {
        "sqs": lambda: sqs.get_queue_url(QueueName=harness.queue),
        "s3": lambda: s3.list_objects_v2(Bucket=harness.bucket),
    }
    for service, call in calls.items():
        t0 = time.monotonic()
        if kind is Fault.STALL:
            call()
            assert time.monotonic() - t0 >= proxy.stall_s
        elif kind is Fault.RESET:
            with pytest.raises(ConnectionClosedError):
                call()
        else:
            with pytest.raises(ClientError) as info:
                call()
            err = info.value.response
            status = 500 if kind is Fault.ERROR_500 else 503
            code = {500: "InternalError", 503: "ServiceUnavailable"}[status]
            if service == "s3" and status == 503:
                code = "SlowDown"
            assert err["ResponseMetadata"]["HTTPStatusCode"] == status
            assert err["Error"]["Code"] == code
    assert proxy.counts[kind.value] == 2


def test_proxy_faults_are_seeded(endpoint: LocalEndpoint, harness: Harness) -> None:
    harness.configure()

    def pattern() -> list[bool]:
        with FaultProxy(endpoint.url, fault_rate=0.3, seed=42, kinds=[Fault.ERROR_500]) as p:
            _, sqs = _clients(p.url)
            out = []
            for _ in range(30):
                try:
                    sqs.get_queue_url(QueueName=harness.queue)
                    out.append(True)
                except ClientError:
                    out.append(False)
            return out

    first = pattern()
    assert first == pattern()
    assert 0 < first.count(False) < 30


# --- the worker behind the proxy ---------------------------------------------------------


@pytest.mark.timeout(240)
def test_transient_faults_lose_nothing(
    endpoint: LocalEndpoint, harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.configure(concurrency=16, visibility_timeout_s=30, max_receive_count=3, retry_base_s=1)
    config = harness.write_config()
    corpus = upload_corpus(harness, OBJECTS)
    log = tmp_path / "worker.log"
    with FaultProxy(endpoint.url, fault_rate=0.05, seed=SEED, stall_s=2.0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # the worker's only endpoint
        t0 = time.monotonic()
        proc = spawn_worker(config, log, "--burst")
        try:
            rc: int | None = proc.wait(timeout=150)
        except Exception:
            proc.kill()
            proc.wait(timeout=10)
            rc = None
        elapsed = time.monotonic() - t0
        summary = proxy.summary()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-4:])
    print(f"worker: exit {rc} after {elapsed:.1f}s\n{summary}\n{tail}")

    problems = []
    if rc != 0:
        problems.append(f"burst worker: exit code {rc} after {elapsed:.0f}s (150 s limit)")
    problems += integrity_problems(harness, corpus)
    assert not problems, (
        "with 5% transient faults:\n  - {}\n{}\nattempts histogram: {}\nworker log tail:\n{}"
    ).format("\n  - ".join(problems), summary, attempts_histogram(harness), tail)
