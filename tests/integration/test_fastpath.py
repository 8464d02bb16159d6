"""The S3 fast path against three real S3 emulators (moto, S3Proxy — which checks
signatures — and MiniStack): every answer equals the SDK's for the same call."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from itest_support import ministack_or_skip

from s3flow.aws import AwsClients, open_clients
from s3flow.errors import ObjectMissingError, OutputUnavailableError, aws_errors
from s3flow.local.aws.server import S3Proxy, client_env
from s3flow.local.endpoint import LocalEndpoint
from s3flow.local.kafka.install import java_available, maven_available
from s3flow.s3fast import FastS3Client
from s3flow.settings import AwsSettings

KEYS = ["plain.txt", "dir/with space+plus=eq&amp%25~tilde.txt", "ünï/cödé €.txt", "a/b/c/d"]
COMPARED = ("ETag", "ContentLength", "ContentType", "Metadata", "VersionId", "LastModified")


def _env(values: dict[str, str]) -> Iterator[str]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield values["AWS_ENDPOINT_URL_S3"]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module", params=["moto", "s3proxy", "ministack"])
def s3_url(
    request: pytest.FixtureRequest,
    endpoint: LocalEndpoint,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """An S3 endpoint URL, with the environment its clients need."""
    if request.param == "moto":
        yield endpoint.url
    elif request.param == "s3proxy":
        if not (java_available() and maven_available()):
            if os.environ.get("CI"):
                pytest.fail("S3Proxy needs Java 17+ and Maven (scripts/install)")
            pytest.skip("needs Java 17+ and Maven")
        with S3Proxy() as server:
            yield from _env(client_env(s3_url=server.url))
    else:
        with ministack_or_skip(tmp_path_factory.mktemp("ministack")) as url:
            yield url


@pytest.fixture
async def clients(s3_url: str) -> AsyncIterator[tuple[AwsClients, AwsClients]]:
    """(fast path on, fast path off) on the same endpoint."""
    fast = AwsSettings(endpoint_url_s3=s3_url, endpoint_url_sqs=s3_url)
    slow = fast.model_copy(update={"s3_fast_path": False})
    async with open_clients(fast) as on, open_clients(slow) as off:
        assert isinstance(on.s3, FastS3Client) and not isinstance(off.s3, FastS3Client)
        yield on, off


def _same(resp: dict[str, Any]) -> dict[str, Any]:
    return {k: resp.get(k) for k in COMPARED}


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


async def test_versions_are_read_by_id(
    request: pytest.FixtureRequest, clients: tuple[AwsClients, AwsClients]
) -> None:
    if request.node.callspec.params["s3_url"] == "s3proxy":
        pytest.skip("S3Proxy's transient store keeps no versions")
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


async def _error(call: Any) -> Exception:
    try:
        await call
    except Exception as exc:
        return exc
    raise AssertionError("the call did not fail")
