"""The S3 fast path's parts: Signature V4 (against AWS's published example and
botocore's own signer), response fields, error bodies, what goes to the SDK, retries
(against a local aiohttp server on a real socket)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from aiohttp import web
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from s3flow.fastpath.s3 import FastS3Client, error_code, header_fields, object_location
from s3flow.fastpath.signing import EMPTY_SHA256, Credentials, SigV4Signer
from s3flow.fastpath.transport import Connection, RetryQuota, host_header

# AWS's example: https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html
DOC_CREDS = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
DOC_TIME = datetime(2013, 5, 24, tzinfo=UTC)


def test_signature_matches_the_aws_documentation_example() -> None:
    headers = SigV4Signer("us-east-1", "s3").sign(
        "GET",
        "examplebucket.s3.amazonaws.com",
        "/test.txt",
        {},
        {"Range": "bytes=0-9"},
        EMPTY_SHA256,
        DOC_CREDS,
        DOC_TIME,
    )
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
    assert headers["x-amz-date"] == "20130524T000000Z"
    assert "host" not in headers


def _s3_client(endpoint: str | None, region: str) -> Any:
    return boto3.client(
        "s3",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=DOC_CREDS.access_key,
        aws_secret_access_key=DOC_CREDS.secret_key,
        aws_session_token="the-token",
        config=Config(
            s3={"addressing_style": "path" if endpoint else "virtual"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


@pytest.mark.parametrize(
    ("method", "call", "params", "extra"),
    [
        (
            "GET",
            lambda c: c.get_object(Bucket="in-bucket", Key="a dir/ü+x=1.txt", Range="bytes=0-9"),
            {"Bucket": "in-bucket", "Key": "a dir/ü+x=1.txt"},
            {"Range": "bytes=0-9"},
        ),
        (
            "GET",
            lambda c: c.get_object(Bucket="in-bucket", Key="k", IfMatch='"e1-2"', Range="bytes=3-"),
            {"Bucket": "in-bucket", "Key": "k"},
            {"Range": "bytes=3-", "If-Match": '"e1-2"'},
        ),
        (
            "HEAD",
            lambda c: c.head_object(Bucket="in-bucket", Key="k~1", VersionId="v/1+2"),
            {"Bucket": "in-bucket", "Key": "k~1", "VersionId": "v/1+2"},
            {},
        ),
        (
            "PUT",
            lambda c: c.put_object(
                Bucket="out-bucket",
                Key="x/y.pdf",
                Body=b"%PDF-1.4 ...",
                ContentType="application/pdf",
                Metadata={"route": "pool", "Source": "s3://b/k"},
            ),
            {"Bucket": "out-bucket", "Key": "x/y.pdf"},
            {
                "Content-Type": "application/pdf",
                "x-amz-meta-route": "pool",
                "x-amz-meta-Source": "s3://b/k",
            },
        ),
    ],
    ids=["get", "get-if-match", "head", "put"],
)
@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:9000"], ids=["aws", "local"])
def test_url_and_signature_equal_botocores(
    method: str,
    call: Callable[[Any], Any],
    params: dict[str, str],
    extra: dict[str, str],
    endpoint: str | None,
    botocore_request: Callable[..., Any],
) -> None:
    sent, botocore_headers, when = botocore_request(_s3_client(endpoint, "eu-west-1"), call)
    base = endpoint or "https://s3.eu-west-1.amazonaws.com"
    scheme, endpoint_host = base.split("://")
    host, path = object_location(
        endpoint_host, params["Bucket"], params["Key"], path_style=endpoint is not None
    )
    query = {"versionId": params["VersionId"]} if "VersionId" in params else {}
    assert sent.url.split("?")[0] == f"{scheme}://{host}{path}"
    payload = botocore_headers["x-amz-content-sha256"]
    creds = Credentials(DOC_CREDS.access_key, DOC_CREDS.secret_key, "the-token")
    ours = SigV4Signer("eu-west-1", "s3").sign(
        method, host, path, query, extra, payload, creds, when
    )
    signed_by_botocore = botocore_headers["authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert ours["authorization"].split("SignedHeaders=")[1].split(",")[0] == signed_by_botocore
    assert ours["authorization"] == botocore_headers["authorization"]


async def _no_credentials() -> Credentials | None:
    return None


def test_header_fields_come_from_the_sdks_model() -> None:
    fields = header_fields(boto3.client("s3", region_name="us-east-1"))
    got = fields["HeadObject"].parse(
        {
            "Content-Length": "12",
            "Content-Type": "text/plain",
            "ETag": '"abc"',
            "Last-Modified": "Mon, 30 Nov 2026 15:24:01 GMT",
            "x-amz-version-id": "v1",
            "x-amz-meta-route": "pool",
            "X-Amz-Meta-Owner": "me",
            "x-amz-delete-marker": "false",
            "x-amz-tagging-count": "2",
            "x-amz-server-side-encryption-bucket-key-enabled": "true",
            "x-amz-checksum-type": "FULL_OBJECT",
            "Expires": "not a date",
            "Server": "ignored",
        }
    )
    assert got == {
        "ContentLength": 12,
        "ContentType": "text/plain",
        "ETag": '"abc"',
        "LastModified": datetime(2026, 11, 30, 15, 24, 1, tzinfo=UTC),
        "VersionId": "v1",
        "Metadata": {"route": "pool", "owner": "me"},
        "DeleteMarker": False,
        "TagCount": 2,
        "BucketKeyEnabled": True,
        "ChecksumType": "FULL_OBJECT",
        "ExpiresString": "not a date",
    }
    put = fields["PutObject"].parse({"ETag": '"e"', "x-amz-object-size": "5"})
    assert put == {"ETag": '"e"', "Size": 5}  # PutObject has no Metadata / ContentLength


def test_error_code_reads_the_xml_body_or_names_the_status() -> None:
    body = b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code><Message>gone</Message></Error>"
    assert error_code(404, {}, body) == ("NoSuchKey", "gone")
    assert error_code(404, {}, b"") == ("404", "Not Found")
    assert error_code(503, {}, b"<html>busy</html") == ("503", "Service Unavailable")


class _RecordingSdk:
    """Stands in for the SDK client: records the calls that reach it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        client = boto3.client("s3", region_name="us-east-1")
        self.exceptions = client.exceptions
        self.meta = client.meta

    def __getattr__(self, name: str) -> Callable[..., Awaitable[dict[str, Any]]]:
        async def call(**params: Any) -> dict[str, Any]:
            self.calls.append((name, params))
            return {"via": "sdk"}

        return call


class Server:
    """A local HTTP server on 127.0.0.1 standing in for S3's failure modes, by bucket:
    ``flaky`` 503 twice then 200, ``down`` 503 always, ``denied`` 403, ``moved`` 301
    (400 to a HEAD), ``drop`` a 200 whose connection dies mid-body the first time,
    else 200 "hello"."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(f"{request.method} {request.raw_path}")
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        await request.read()
        bucket = request.path.split("/")[1]
        if bucket == "flaky" and len(self.seen) <= 2:
            return web.Response(status=503, body=b"<Error><Code>SlowDown</Code></Error>")
        if bucket == "down":
            return web.Response(status=503, body=b"<Error><Code>SlowDown</Code></Error>")
        if bucket == "denied":
            return web.Response(status=403, body=b"<Error><Code>AccessDenied</Code></Error>")
        if bucket == "moved":
            if request.method == "HEAD":
                return web.Response(status=400)
            body = b"<Error><Code>PermanentRedirect</Code></Error>"
            return web.Response(status=301, body=body)
        if bucket == "drop" and len(self.seen) == 1:
            resp = web.StreamResponse(headers={"Content-Length": "100"})
            await resp.prepare(request)
            await resp.write(b"0123456789")
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(body=b"hello", headers={"ETag": '"e"', "Content-Type": "text/plain"})


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.url = f"http://127.0.0.1:{port}"
    try:
        yield srv
    finally:
        await runner.cleanup()


async def _creds() -> Credentials | None:
    return Credentials("AK", "SK")


def _conn(url: str, retries: int = 3) -> Connection:
    return Connection(url, "us-east-1", retries, 2, 2, 4, backoff_base_s=0.001)


def _client(sdk: Any, url: str, *, retries: int = 3) -> FastS3Client:
    return FastS3Client(sdk, _creds, _conn(url, retries), path_style=True)


async def test_throttling_and_5xx_are_retried(server: Server) -> None:
    reads = 0

    async def counted() -> Credentials | None:
        nonlocal reads
        reads += 1
        return Credentials("AK", "SK")

    s3 = FastS3Client(_RecordingSdk(), counted, _conn(server.url), path_style=True)
    async with s3:
        resp = await s3.get_object(Bucket="flaky", Key="k")
        assert await resp["Body"].read() == b"hello"
        assert resp["ResponseMetadata"]["RetryAttempts"] == 2
    assert server.seen == ["GET /flaky/k"] * 3
    assert reads == 3  # credentials read again for every attempt (they may have rotated)
    assert all(h["accept-encoding"] == "identity" for h in server.headers)
    assert all(h["user-agent"].startswith("s3flow") for h in server.headers)


async def test_a_permanent_error_raises_the_sdks_class_at_once(server: Server) -> None:
    async with _client(_RecordingSdk(), server.url) as s3:
        with pytest.raises(ClientError) as info:
            await s3.put_object(Bucket="denied", Key="k", Body=b"x")
    assert info.value.response["Error"]["Code"] == "AccessDenied"
    assert "MaxAttemptsReached" not in info.value.response["ResponseMetadata"]
    assert info.value.operation_name == "PutObject"
    assert server.seen == ["PUT /denied/k"]


async def test_retries_give_up_after_max_attempts(server: Server) -> None:
    async with _client(_RecordingSdk(), server.url, retries=1) as s3:
        with pytest.raises(ClientError) as info:
            await s3.head_object(Bucket="flaky", Key="k")
    assert info.value.response["Error"]["Code"] == "503"
    assert info.value.response["ResponseMetadata"]["RetryAttempts"] == 1
    assert info.value.response["ResponseMetadata"]["MaxAttemptsReached"] is True
    assert len(server.seen) == 2


async def test_in_an_outage_retries_stop_when_the_retry_quota_is_spent(server: Server) -> None:
    async with _client(_RecordingSdk(), server.url, retries=3) as s3:
        quota = s3._http.quota
        for _ in range(40):
            with pytest.raises(ClientError):
                await s3.head_object(Bucket="down", Key="k")
        # 500 tokens, 5 per retry: 100 retries in all, not 3 for each of the 40 calls
        assert len(server.seen) == 40 + 100
        assert quota.available == 0
        with pytest.raises(ClientError) as info:
            await s3.get_object(Bucket="down", Key="k")
        assert len(server.seen) == 141  # no retry left: one request, the error at once
        meta = info.value.response["ResponseMetadata"]
        assert meta["RetryAttempts"] == 0
        assert "MaxAttemptsReached" not in meta  # as botocore: the quota, not max_attempts
        # Calls answered give tokens back (one each): retries come back with them.
        for _ in range(5):
            await s3.head_object(Bucket="ok", Key="k")
        assert quota.available == 5
        server.seen.clear()
        with pytest.raises(ClientError):
            await s3.head_object(Bucket="down", Key="k")
        assert len(server.seen) == 2


def test_the_retry_quota_charges_timeouts_double_and_refunds_a_retried_success() -> None:
    quota = RetryQuota(capacity=20)
    assert quota.acquire(timeout=True) == 10
    assert quota.acquire(timeout=False) == 5
    assert quota.acquire(timeout=False) == 5
    assert quota.available == 0
    assert quota.acquire(timeout=False) == 0  # nothing left: no retry
    quota.release(10)  # a call answered after a retry that cost 10
    assert quota.available == 10
    quota.release(0)  # a call answered at once
    assert quota.available == 11
    for _ in range(20):
        quota.release(5)
    assert quota.available == 20  # never above the capacity


async def test_an_unreachable_endpoint_raises_endpoint_connection_error() -> None:
    async with _client(_RecordingSdk(), "http://127.0.0.1:9", retries=1) as s3:
        with pytest.raises(EndpointConnectionError):
            await s3.head_object(Bucket="b", Key="k")


@pytest.mark.parametrize(
    ("op", "params"),
    [
        ("get_object", {"Bucket": "b", "Key": "k", "IfNoneMatch": '"e"'}),
        ("get_object", {"Bucket": "b", "Key": "k", "IfMatch": '"é"'}),
        ("get_object", {"Bucket": "b", "Key": "a//b"}),
        ("head_object", {"Bucket": "b", "Key": "a/../b"}),
        ("head_object", {"Bucket": "arn:aws:s3:us-east-1:1:accesspoint/ap", "Key": "k"}),
        ("put_object", {"Bucket": "b", "Key": "k", "Body": open(__file__, "rb")}),  # noqa: SIM115
        ("put_object", {"Bucket": "b", "Key": "k", "Body": b"x", "Metadata": {"n": "é"}}),
        ("put_object", {"Bucket": "b", "Key": "k", "Body": b"x", "Tagging": "a=b"}),
        ("put_object", {"Bucket": "b", "Key": "k", "Body": b"x", "ContentType": "text/é"}),
        ("get_object", {"Bucket": "b", "Key": "k", "Range": "bytes=0-é"}),
        ("list_objects_v2", {"Bucket": "b"}),
    ],
    ids=[
        "if-none-match",
        "utf8-if-match",
        "double-slash",
        "dot-dot",
        "access-point",
        "file-body",
        "utf8-meta",
        "tag",
        "utf8-content-type",
        "utf8-range",
        "list",
    ],
)
async def test_what_the_fast_path_does_not_handle_goes_to_the_sdk(
    server: Server, op: str, params: dict[str, Any]
) -> None:
    sdk = _RecordingSdk()
    async with _client(sdk, server.url) as s3:
        assert await getattr(s3, op)(**params) == {"via": "sdk"}
    assert sdk.calls == [(op, params)] and server.seen == []
    if hasattr(params.get("Body"), "close"):
        params["Body"].close()


async def test_without_credentials_every_call_goes_to_the_sdk(server: Server) -> None:
    sdk = _RecordingSdk()
    s3 = FastS3Client(sdk, _no_credentials, _conn(server.url), path_style=True)
    async with s3:
        assert await s3.get_object(Bucket="b", Key="k") == {"via": "sdk"}
    assert server.seen == [] and s3.fast_calls == 0


async def test_a_region_redirect_sends_the_bucket_to_the_sdk_for_good(server: Server) -> None:
    sdk = _RecordingSdk()
    async with _client(sdk, server.url) as s3:
        assert await s3.head_object(Bucket="moved", Key="k") == {"via": "sdk"}
        assert await s3.get_object(Bucket="moved", Key="k") == {"via": "sdk"}
    assert server.seen == ["HEAD /moved/k"]  # asked once; the SDK follows redirects
    assert [name for name, _ in sdk.calls] == ["head_object", "get_object"]


async def test_a_connection_dropped_mid_answer_is_retried(server: Server) -> None:
    async with _client(_RecordingSdk(), server.url) as s3:
        out = await s3.put_object(Bucket="drop", Key="k", Body=b"x")
    assert out["ETag"] == '"e"' and out["ResponseMetadata"]["RetryAttempts"] == 1
    assert server.seen == ["PUT /drop/k"] * 2


async def test_no_connection_stays_checked_out(server: Server) -> None:
    async with _client(_RecordingSdk(), server.url) as s3:
        partly = await s3.get_object(Bucket="b", Key="k")
        await partly["Body"].read(2)
        partly["Body"].close()
        await s3.head_object(Bucket="b", Key="k")
        await s3.put_object(Bucket="b", Key="k", Body=b"x")
        with pytest.raises(ClientError):
            await s3.get_object(Bucket="denied", Key="k")
        whole = await s3.get_object(Bucket="b", Key="k")
        assert await whole["Body"].read() == b"hello"
        assert s3._http.connections_in_use == 0


def test_the_signed_host_is_the_one_sent() -> None:
    assert host_header("https://S3.Example.com:443/") == "s3.example.com"
    assert host_header("http://127.0.0.1:9000") == "127.0.0.1:9000"
    assert host_header("http://host:80") == "host"


@pytest.mark.parametrize(
    ("checksum", "calculation"), [(False, "when_required"), (True, "when_supported")]
)
async def test_an_https_put_body_is_signed_as_botocore_signs_it(
    checksum: bool, calculation: str, botocore_request: Callable[..., Any]
) -> None:
    client = boto3.client(
        "s3",
        region_name="eu-west-1",
        aws_access_key_id="AK",
        aws_secret_access_key="SK",
        config=Config(request_checksum_calculation=calculation),
    )
    _, headers, _ = botocore_request(
        client, lambda c: c.put_object(Bucket="b", Key="k", Body=b"data")
    )
    conn = Connection("https://s3.eu-west-1.amazonaws.com", "eu-west-1", 0, 1, 1, 1)
    async with FastS3Client(
        _RecordingSdk(), _creds, conn, path_style=False, checksum_crc32=checksum
    ) as fast:
        ours = fast._request("PUT", "PutObject", {"Bucket": "b", "Key": "k"}, {}, b"data")
    if checksum:  # botocore streams a trailer checksum; the fast path sends it as a header
        assert ours.payload_sha256 == "UNSIGNED-PAYLOAD"
        assert headers["x-amz-content-sha256"].startswith("STREAMING-UNSIGNED-PAYLOAD")
    else:
        assert ours.payload_sha256 == headers["x-amz-content-sha256"]
