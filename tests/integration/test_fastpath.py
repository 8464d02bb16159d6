"""The fast path against real emulators — S3: moto, S3Proxy (which checks signatures),
MiniStack; SQS: moto, ElasticMQ, MiniStack — every answer equals the SDK's."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from itest_support import ministack_or_skip

from s3flow.aws import AwsClients, open_clients
from s3flow.errors import (
    ObjectChangedError,
    ObjectMissingError,
    OutputUnavailableError,
    aws_errors,
)
from s3flow.fastpath import FastS3Client, FastSqsClient
from s3flow.local.aws.server import ElasticMQ, S3Proxy, client_env
from s3flow.local.endpoint import LocalEndpoint
from s3flow.local.kafka.install import java_available, maven_available
from s3flow.objects import open_object
from s3flow.settings import AwsSettings

KEYS = ["plain.txt", "dir/with space+plus=eq&amp%25~tilde.txt", "ünï/cödé €.txt", "a/b/c/d"]
COMPARED = ("ETag", "ContentLength", "ContentType", "Metadata", "VersionId", "LastModified")


def _need_java() -> None:
    if not (java_available() and maven_available()):
        if os.environ.get("CI"):
            pytest.fail("ElasticMQ and S3Proxy need Java 17+ and Maven (scripts/install)")
        pytest.skip("needs Java 17+ and Maven")


@contextlib.contextmanager
def _emulator(
    kind: str, endpoint: LocalEndpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The URL of a running ``kind`` emulator, with the environment its clients need."""
    if kind == "moto":
        yield endpoint.url
    elif kind == "ministack":
        with ministack_or_skip(tmp_path_factory.mktemp(kind)) as url:
            yield url
    else:
        _need_java()
        server = S3Proxy() if kind == "s3proxy" else ElasticMQ()
        with server, pytest.MonkeyPatch.context() as mp:
            for name, value in client_env().items():
                mp.setenv(name, value)
            yield server.url


@pytest.fixture(scope="module")
def emulator_url(
    request: pytest.FixtureRequest,
    endpoint: LocalEndpoint,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The URL of the emulator a test is parametrized with (``S3_EMULATORS``, ...)."""
    with _emulator(request.param, endpoint, tmp_path_factory) as url:
        yield url


S3_EMULATORS = pytest.mark.parametrize(
    "emulator_url", ["moto", "s3proxy", "ministack"], indirect=True
)
SQS_EMULATORS = pytest.mark.parametrize(
    "emulator_url", ["moto", "elasticmq", "ministack"], indirect=True
)


@contextlib.asynccontextmanager
async def _on_and_off(url: str) -> AsyncIterator[tuple[AwsClients, AwsClients]]:
    """(fast path on, fast path off) clients of the same endpoint."""
    fast = AwsSettings(endpoint_url_s3=url, endpoint_url_sqs=url)
    slow = fast.model_copy(update={"fast_path": False})
    async with open_clients(fast) as on, open_clients(slow) as off:
        yield on, off


@pytest.fixture
async def clients(emulator_url: str) -> AsyncIterator[tuple[AwsClients, AwsClients]]:
    """S3 with the fast path on and off."""
    async with _on_and_off(emulator_url) as (on, off):
        assert isinstance(on.s3, FastS3Client) and not isinstance(off.s3, FastS3Client)
        yield on, off


@pytest.fixture
async def queues(emulator_url: str) -> AsyncIterator[tuple[AwsClients, AwsClients]]:
    """SQS with the fast path on and off."""
    async with _on_and_off(emulator_url) as (on, off):
        assert isinstance(on.sqs, FastSqsClient) and not isinstance(off.sqs, FastSqsClient)
        yield on, off


def _same(resp: dict[str, Any]) -> dict[str, Any]:
    return {k: resp.get(k) for k in COMPARED}


@S3_EMULATORS
async def test_put_head_get_answer_as_the_sdk_does(clients: tuple[AwsClients, AwsClients]) -> None:
    on, off = clients
    bucket = f"fast-{uuid.uuid4().hex[:12]}"
    await off.s3.create_bucket(Bucket=bucket)
    for i, key in enumerate(KEYS):
        body = f"line {i}\n".encode() * (100 + i)
        meta = {"route": "pool", "source": f"s3://x/{i}"}
        put = await on.s3.put_object(
            Bucket=bucket, Key=key, Body=body, ContentType="text/plain", Metadata=meta
        )
        assert put["ETag"] and put["ResponseMetadata"]["HTTPStatusCode"] == 200
        fast_head = await on.s3.head_object(Bucket=bucket, Key=key)
        sdk_head = await off.s3.head_object(Bucket=bucket, Key=key)
        assert _same(fast_head) == _same(sdk_head)
        assert fast_head["Metadata"] == meta and fast_head["ContentLength"] == len(body)
        assert fast_head["ETag"] == put["ETag"]
        got = await on.s3.get_object(Bucket=bucket, Key=key)
        sdk_got = await off.s3.get_object(Bucket=bucket, Key=key)
        assert _same(got) == _same(sdk_got)
        async with got["Body"] as stream:
            assert await stream.read() == body
        async with sdk_got["Body"] as stream:
            await stream.read()
        part = await on.s3.get_object(Bucket=bucket, Key=key, Range="bytes=2-9")
        assert await part["Body"].read() == body[2:10]
        assert part["ContentRange"] == f"bytes 2-9/{len(body)}"
        # what the SDK wrote, the fast path reads
        await off.s3.put_object(Bucket=bucket, Key=f"{key}.sdk", Body=body)
        assert await (await on.s3.get_object(Bucket=bucket, Key=f"{key}.sdk"))["Body"].read() == (
            body
        )
    assert on.s3.fast_calls == len(KEYS) * 5
    n = len(KEYS)
    assert on.s3.fast_calls_by_operation == {"PutObject": n, "HeadObject": n, "GetObject": 3 * n}


@S3_EMULATORS
async def test_failures_translate_as_the_sdks_do(clients: tuple[AwsClients, AwsClients]) -> None:
    on, off = clients
    bucket = f"fast-{uuid.uuid4().hex[:12]}"
    await off.s3.create_bucket(Bucket=bucket)
    for client in (on.s3, off.s3):
        with pytest.raises(ObjectMissingError), aws_errors("GetObject"):
            await client.get_object(Bucket=bucket, Key="missing")
        with pytest.raises(ObjectMissingError), aws_errors("HeadObject"):
            await client.head_object(Bucket=bucket, Key="missing")
        with pytest.raises(OutputUnavailableError), aws_errors("PutObject"):
            await client.put_object(Bucket=f"{bucket}-none", Key="k", Body=b"x")
    fast_error = await _error(on.s3.get_object(Bucket=bucket, Key="missing"))
    sdk_error = await _error(off.s3.get_object(Bucket=bucket, Key="missing"))
    assert type(fast_error).__name__ == type(sdk_error).__name__ == "NoSuchKey"
    assert isinstance(fast_error, on.s3.exceptions.NoSuchKey)
    assert fast_error.response["Error"]["Code"] == sdk_error.response["Error"]["Code"]  # type: ignore[attr-defined]


# Not on S3Proxy: its transient store keeps no versions.
@pytest.mark.parametrize("emulator_url", ["moto", "ministack"], indirect=True)
async def test_versions_are_read_by_id(
    clients: tuple[AwsClients, AwsClients],
) -> None:
    on, off = clients
    bucket = f"fast-{uuid.uuid4().hex[:12]}"
    await off.s3.create_bucket(Bucket=bucket)
    await off.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first = await on.s3.put_object(Bucket=bucket, Key="k", Body=b"one")
    await on.s3.put_object(Bucket=bucket, Key="k", Body=b"two")
    old = await on.s3.get_object(Bucket=bucket, Key="k", VersionId=first["VersionId"])
    assert await old["Body"].read() == b"one" and old["VersionId"] == first["VersionId"]
    head = await on.s3.head_object(Bucket=bucket, Key="k", VersionId=first["VersionId"])
    assert head["ContentLength"] == 3


# S3Proxy left out: only the emulators whose events carry a sequencer (and moto).
@pytest.mark.parametrize("emulator_url", ["moto", "ministack"], indirect=True)
async def test_a_read_of_one_upload_is_refused_once_it_was_overwritten(
    clients: tuple[AwsClients, AwsClients],
) -> None:
    """``If-Match`` on the fast path as through the SDK: the upload named is read (whole or
    a range), another is refused (412) and translated to ObjectChangedError."""
    on, off = clients
    bucket = f"fast-{uuid.uuid4().hex[:12]}"
    await off.s3.create_bucket(Bucket=bucket)
    first = (await on.s3.put_object(Bucket=bucket, Key="k", Body=b"one\n"))["ETag"].strip('"')
    now = (await on.s3.put_object(Bucket=bucket, Key="k", Body=b"two\n"))["ETag"].strip('"')
    for client in (on.s3, off.s3):
        for byte_range in (None, (0, 2)):
            reader = await open_object(client, bucket, "k", if_match=now, byte_range=byte_range)
            data = b"".join([chunk async for chunk in reader])
            reader.close()
            assert data == (b"two\n" if byte_range is None else b"tw")
            with pytest.raises(ObjectChangedError, match=f"upload eTag {first} is not"):
                await open_object(client, bucket, "k", if_match=first, byte_range=byte_range)
    fast_error = await _error(on.s3.get_object(Bucket=bucket, Key="k", IfMatch=f'"{first}"'))
    sdk_error = await _error(off.s3.get_object(Bucket=bucket, Key="k", IfMatch=f'"{first}"'))
    assert type(fast_error).__name__ == type(sdk_error).__name__
    assert fast_error.response["Error"]["Code"] == sdk_error.response["Error"]["Code"]  # type: ignore[attr-defined]


async def _error(call: Any) -> Exception:
    try:
        await call
    except Exception as exc:
        return exc
    raise AssertionError("the call did not fail")


@SQS_EMULATORS
async def test_receive_delete_and_visibility_answer_as_the_sdk_does(
    queues: tuple[AwsClients, AwsClients],
) -> None:
    on, off = queues
    url = (await off.sqs.create_queue(QueueName=f"fast-{uuid.uuid4().hex[:12]}"))["QueueUrl"]
    sent = {}
    for i in range(5):
        body = f"body {i} ünï"
        await off.sqs.send_message(
            QueueUrl=url,
            MessageBody=body,
            MessageAttributes={
                "text": {"DataType": "String", "StringValue": f"t{i}"},
                "blob": {"DataType": "Binary", "BinaryValue": bytes([0, i, 255])},
            },
        )
        sent[body] = i
    got: dict[str, Any] = {}
    for _ in range(20):
        resp = await on.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            MessageAttributeNames=["All"],
        )
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
        got.update({m["Body"]: m for m in resp.get("Messages") or []})
        if len(got) == len(sent):
            break
    assert set(got) == set(sent)
    for body, m in got.items():
        i = sent[body]
        assert m["MessageAttributes"]["text"]["StringValue"] == f"t{i}"
        assert m["MessageAttributes"]["blob"]["BinaryValue"] == bytes([0, i, 255])
        assert m["Attributes"]["ApproximateReceiveCount"] == "1"
        assert m["MD5OfBody"] and m["ReceiptHandle"] and m["MessageId"]
    messages = list(got.values())
    back = await on.sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "r0", "ReceiptHandle": messages[0]["ReceiptHandle"], "VisibilityTimeout": 0}
        ],
    )
    assert [e["Id"] for e in back.get("Successful") or []] == ["r0"]
    done = await on.sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[
            *(
                {"Id": f"d{k}", "ReceiptHandle": m["ReceiptHandle"]}
                for k, m in enumerate(messages[1:])
            ),
            {"Id": "bogus", "ReceiptHandle": "not-a-receipt-handle"},
        ],
    )
    assert sorted(e["Id"] for e in done.get("Successful") or []) == ["d0", "d1", "d2", "d3"]
    failed = done.get("Failed") or []
    assert [f["Id"] for f in failed] == ["bogus"] and failed[0]["Code"]
    again = await on.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2)
    assert [m["Body"] for m in again.get("Messages") or []] == [messages[0]["Body"]]
    assert on.sqs.fast_calls >= 4


@SQS_EMULATORS
async def test_a_missing_queue_fails_with_the_sdks_code(
    queues: tuple[AwsClients, AwsClients],
) -> None:
    on, off = queues
    real = (await off.sqs.create_queue(QueueName=f"fast-{uuid.uuid4().hex[:12]}"))["QueueUrl"]
    url = real.rsplit("/", 1)[0] + "/no-such-queue-" + uuid.uuid4().hex[:8]
    fast_error = await _error(on.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0))
    sdk_error = await _error(off.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0))
    assert type(fast_error).__name__ == type(sdk_error).__name__
    fast_detail = fast_error.response["Error"]  # type: ignore[attr-defined]
    assert fast_detail == sdk_error.response["Error"]  # type: ignore[attr-defined]
