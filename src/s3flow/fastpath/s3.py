"""S3's three hot calls as s3flow's own signed HTTP requests: :class:`FastS3Client`.

The worker makes a GetObject, a PutObject and a HeadObject (output verification)
for every object. Through botocore each costs about 1 ms of CPU in event hooks,
parameter validation, serialisation and response parsing; as a Signature V4
signed aiohttp request it costs about 0.15 ms (measured against S3Proxy on the
2-core development VM: 3.0–3.5 ms for the three calls through aiobotocore,
0.35–0.6 ms here). :class:`FastS3Client` wraps the SDK client and serves those
three calls itself when their parameters are among the few it handles; every
other call, and any call with another parameter, goes to the SDK client
unchanged. Responses have botocore's shape (the same keys, a streaming
``Body`` of aiobotocore's own class) and failures raise the SDK client's own
exception classes, so callers cannot tell the two paths apart.

What the SDK does that this module does too: credentials from the same chain
(refreshed when temporary), retries in botocore's "standard" mode (connection
errors, 5xx, throttling; ``max_attempts`` retries after the first try, jittered
exponential back-off), path- or virtual-hosted addressing as configured, and the
request checksum botocore sends when ``request_checksum_calculation`` is
``when_supported`` (CRC32). What it leaves to the SDK: redirects to another
region (the call is made again through the SDK), directory and access-point
buckets, keys the URL layer could normalise (``//``, ``.`` and ``..`` segments),
non-ASCII metadata, bodies that are not bytes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import re
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import aiohttp
from aiobotocore.response import AioStreamingBody
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from yarl import URL

from s3flow.closing import AsyncClosing

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

# The parameters each fast call handles; a call with any other goes to the SDK.
GET_PARAMS = frozenset({"Bucket", "Key", "VersionId", "Range"})
HEAD_PARAMS = frozenset({"Bucket", "Key", "VersionId"})
PUT_PARAMS = frozenset(
    {
        "Bucket",
        "Key",
        "Body",
        "ContentType",
        "ContentEncoding",
        "Metadata",
        "ServerSideEncryption",
        "SSEKMSKeyId",
    }
)
_PUT_HEADERS = {
    "ContentType": "content-type",
    "ContentEncoding": "content-encoding",
    "ServerSideEncryption": "x-amz-server-side-encryption",
    "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
}

# Response headers -> botocore's keys (GetObject / HeadObject / PutObject outputs).
_TEXT_FIELDS = {
    "accept-ranges": "AcceptRanges",
    "cache-control": "CacheControl",
    "content-disposition": "ContentDisposition",
    "content-encoding": "ContentEncoding",
    "content-language": "ContentLanguage",
    "content-range": "ContentRange",
    "content-type": "ContentType",
    "etag": "ETag",
    "expires": "ExpiresString",
    "x-amz-expiration": "Expiration",
    "x-amz-restore": "Restore",
    "x-amz-replication-status": "ReplicationStatus",
    "x-amz-server-side-encryption": "ServerSideEncryption",
    "x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId",
    "x-amz-storage-class": "StorageClass",
    "x-amz-version-id": "VersionId",
    "x-amz-website-redirect-location": "WebsiteRedirectLocation",
    "x-amz-checksum-crc32": "ChecksumCRC32",
}
_INT_FIELDS = {
    "content-length": "ContentLength",
    "x-amz-mp-parts-count": "PartsCount",
    "x-amz-tagging-count": "TagCount",
}
_BOOL_FIELDS = {
    "x-amz-delete-marker": "DeleteMarker",
    "x-amz-bucket-key-enabled": "BucketKeyEnabled",
}
_META_PREFIX = "x-amz-meta-"

# botocore's standard retry mode: what is retried besides connection errors.
_RETRY_STATUSES = frozenset({500, 502, 503, 504, 429})
_RETRY_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
    }
)
# Answers that mean "ask again elsewhere": the SDK follows them (region redirects).
_REDIRECT_STATUSES = frozenset({301, 307})
_REDIRECT_CODES = frozenset({"AuthorizationHeaderMalformed", "PermanentRedirect"})
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


@dataclass(frozen=True, slots=True)
class Credentials:
    """One frozen set of credentials."""

    access_key: str
    secret_key: str
    token: str | None = None


class SigV4Signer:
    """AWS Signature Version 4 for one region and service, signing keys cached per day."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._keys: dict[tuple[str, str], bytes] = {}

    def _signing_key(self, secret: str, day: str) -> bytes:
        key = self._keys.get((secret, day))
        if key is None:
            key = hmac.new(f"AWS4{secret}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, day): key}  # one day's key at a time
        return key

    def sign(
        self,
        method: str,
        host: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        payload_sha256: str,
        creds: Credentials,
        now: datetime,
    ) -> dict[str, str]:
        """The request's headers with ``authorization`` and the ``x-amz-*`` it signs.

        ``path`` is the URI-encoded path exactly as sent; every header given is
        signed (names are lower-cased). ``host`` is signed but not returned.
        """
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        signed = {name.lower(): value for name, value in headers.items()}
        signed["host"] = host
        signed["x-amz-content-sha256"] = payload_sha256
        signed["x-amz-date"] = amz_date
        if creds.token:
            signed["x-amz-security-token"] = creds.token
        names = sorted(signed)
        canonical_query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
        )
        canonical = "\n".join(
            (
                method,
                path,
                canonical_query,
                "".join(f"{name}:{' '.join(signed[name].split())}\n" for name in names),
                ";".join(names),
                payload_sha256,
            )
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = (
            f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
            f"{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        signature = hmac.new(
            self._signing_key(creds.secret_key, day), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        del signed["host"]
        signed["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        return signed


def response_fields(headers: Mapping[str, str]) -> dict[str, Any]:
    """botocore's output keys from an S3 object response's headers."""
    out: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for raw_name, value in headers.items():
        name = raw_name.lower()
        if name.startswith(_META_PREFIX):
            metadata[name[len(_META_PREFIX) :]] = value
        elif name in _TEXT_FIELDS:
            out[_TEXT_FIELDS[name]] = value
        elif name in _INT_FIELDS:
            out[_INT_FIELDS[name]] = int(value)
        elif name in _BOOL_FIELDS:
            out[_BOOL_FIELDS[name]] = value.lower() == "true"
        elif name == "last-modified":
            out["LastModified"] = parsedate_to_datetime(value).astimezone(UTC)
    out["Metadata"] = metadata
    return out


def error_code(status: int, body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 error response; a bodiless one (HEAD) gives botocore's
    ``("404", "Not Found")`` form."""
    if body:
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            pass
        else:
            code = root.findtext("Code") or ""
            if code:
                return code, root.findtext("Message") or ""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return str(status), phrase


def _plain_key(key: str) -> bool:
    """Whether a key reaches S3 through a URL unchanged (no segment a URL layer folds)."""
    return bool(key) and "//" not in key and not any(part in (".", "..") for part in key.split("/"))


def object_location(host: str, bucket: str, key: str, *, path_style: bool) -> tuple[str, str]:
    """(host, URI-encoded path) of an object: virtual-hosted unless ``path_style`` or the
    bucket name cannot be a host name label."""
    path = quote(key, safe="/~")
    if not path_style and _DNS_BUCKET.match(bucket) and "." not in bucket:
        return f"{bucket}.{host}", f"/{path}"
    return host, f"/{quote(bucket, safe='~')}/{path}"


class FastS3Client(AsyncClosing):
    """An S3 client: GetObject / PutObject / HeadObject served by signed aiohttp requests,
    everything else by the wrapped SDK client (see the module docstring).

    ``credentials`` returns the current frozen credentials (the SDK session's chain);
    ``None`` makes every call go through the SDK (anonymous access).
    """

    def __init__(
        self,
        sdk: Any,
        credentials: Callable[[], Awaitable[Credentials | None]],
        *,
        region: str,
        endpoint_url: str,
        path_style: bool,
        max_attempts: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        pool: int,
        checksum_crc32: bool = False,
        backoff_base_s: float = 1.0,
    ) -> None:
        self._sdk = sdk
        self._credentials = credentials
        self._signer = SigV4Signer(region)
        parts = urlsplit(endpoint_url)
        self._scheme = parts.scheme or "https"
        self._host = parts.netloc
        self._path_style = path_style
        self._payload_hash = self._scheme != "https"  # over plain HTTP, sign the body
        self._retries = max_attempts
        self._backoff_base_s = backoff_base_s
        self._checksum = checksum_crc32
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(pool, 10)),
            timeout=aiohttp.ClientTimeout(connect=connect_timeout_s, sock_read=read_timeout_s),
            auto_decompress=False,  # Content-Encoding belongs to the object, not the transfer
            skip_auto_headers=("User-Agent", "Content-Type"),
        )
        self.fast_calls = 0  # calls served here (not by the SDK)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sdk, name)

    @property
    def sdk(self) -> Any:
        """The wrapped SDK client."""
        return self._sdk

    async def close(self) -> None:
        await self._session.close()

    async def get_object(self, **params: Any) -> dict[str, Any]:
        """GetObject; ``Body`` streams (aiobotocore's body class)."""
        if not self._handles(params, GET_PARAMS):
            return dict(await self._sdk.get_object(**params))
        headers = {"range": params["Range"]} if "Range" in params else {}
        resp = await self._send("GET", "GetObject", params, headers, b"")
        if resp is None:
            return dict(await self._sdk.get_object(**params))
        out = self._output(resp)
        out["Body"] = AioStreamingBody(resp, out.get("ContentLength"))
        return out

    async def head_object(self, **params: Any) -> dict[str, Any]:
        """HeadObject."""
        if not self._handles(params, HEAD_PARAMS):
            return dict(await self._sdk.head_object(**params))
        resp = await self._send("HEAD", "HeadObject", params, {}, b"")
        if resp is None:
            return dict(await self._sdk.head_object(**params))
        resp.release()
        return self._output(resp)

    async def put_object(self, **params: Any) -> dict[str, Any]:
        """PutObject of a bytes-like ``Body``."""
        body = params.get("Body", b"")
        metadata = params.get("Metadata") or {}
        if (
            not self._handles(params, PUT_PARAMS)
            or not isinstance(body, bytes | bytearray | memoryview)
            or not all(f"{k}{v}".isascii() for k, v in metadata.items())
        ):
            return dict(await self._sdk.put_object(**params))
        data = bytes(body)
        headers = {header: params[name] for name, header in _PUT_HEADERS.items() if name in params}
        headers.update({f"{_META_PREFIX}{k}": v for k, v in metadata.items()})
        if self._checksum:
            crc = zlib.crc32(data).to_bytes(4, "big")
            headers["x-amz-checksum-crc32"] = base64.b64encode(crc).decode()
            headers["x-amz-sdk-checksum-algorithm"] = "CRC32"
        resp = await self._send("PUT", "PutObject", params, headers, data)
        if resp is None:
            return dict(await self._sdk.put_object(**params))
        resp.release()
        out = self._output(resp)
        for name in ("ContentLength", "ContentType", "Metadata", "LastModified"):
            out.pop(name, None)
        return out

    def _handles(self, params: Mapping[str, Any], allowed: frozenset[str]) -> bool:
        bucket = params.get("Bucket")
        key = params.get("Key")
        return (
            params.keys() <= allowed
            and isinstance(bucket, str)
            and isinstance(key, str)
            and _plain_key(key)
            and not bucket.startswith("arn:")
            and not bucket.endswith(("--x-s3", "--ol-s3", "--op-s3"))
        )

    def _output(self, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        out = response_fields(resp.headers)
        out["ResponseMetadata"] = {
            "RequestId": resp.headers.get("x-amz-request-id", ""),
            "HostId": resp.headers.get("x-amz-id-2", ""),
            "HTTPStatusCode": resp.status,
            "HTTPHeaders": {k.lower(): v for k, v in resp.headers.items()},
            "RetryAttempts": 0,
        }
        return out

    async def _send(
        self,
        method: str,
        operation: str,
        params: Mapping[str, Any],
        headers: dict[str, str],
        body: bytes,
    ) -> aiohttp.ClientResponse | None:
        """The 2xx response, or ``None`` where the SDK must make the call (redirects,
        no credentials); other failures raise the SDK's exception after retries."""
        creds = await self._credentials()
        if creds is None:
            return None
        host, path = object_location(
            self._host, params["Bucket"], params["Key"], path_style=self._path_style
        )
        query = {"versionId": params["VersionId"]} if params.get("VersionId") else {}
        url = URL(
            f"{self._scheme}://{host}{path}"
            + (f"?versionId={quote(query['versionId'], safe='-_.~')}" if query else ""),
            encoded=True,
        )
        if method != "PUT":
            payload = EMPTY_SHA256
        elif self._payload_hash:
            payload = hashlib.sha256(body).hexdigest()
        else:
            payload = UNSIGNED_PAYLOAD
        attempt = 0
        while True:
            signed = self._signer.sign(
                method, host, path, query, headers, payload, creds, datetime.now(UTC)
            )
            try:
                resp = await self._session.request(
                    method, url, headers=signed, data=body if method == "PUT" else None
                )
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                if attempt >= self._retries:
                    raise _connection_error(exc, url) from exc
            else:
                if 200 <= resp.status < 300:
                    self.fast_calls += 1
                    return resp
                data = b"" if method == "HEAD" else await resp.read()
                resp.release()
                code, message = error_code(resp.status, data)
                if resp.status in _REDIRECT_STATUSES or code in _REDIRECT_CODES:
                    return None
                retryable = resp.status in _RETRY_STATUSES or code in _RETRY_CODES
                if not retryable or attempt >= self._retries:
                    raise self._client_error(resp, code, message, operation, attempt)
            attempt += 1
            await asyncio.sleep(random.random() * min(20.0, self._backoff_base_s * 2**attempt))

    def _client_error(
        self,
        resp: aiohttp.ClientResponse,
        code: str,
        message: str,
        operation: str,
        attempts: int,
    ) -> Exception:
        response = {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {
                "RequestId": resp.headers.get("x-amz-request-id", ""),
                "HTTPStatusCode": resp.status,
                "HTTPHeaders": {k.lower(): v for k, v in resp.headers.items()},
                "RetryAttempts": attempts,
            },
        }
        error_class = self._sdk.exceptions.from_code(code)
        exc: Exception = error_class(response, operation)
        return exc


def _connection_error(exc: BaseException, url: URL) -> Exception:
    """botocore's exception for a request that never got an answer."""
    endpoint = str(url.with_query(None))
    error: Exception
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        error = ConnectTimeoutError(endpoint_url=endpoint, error=exc)
    elif isinstance(exc, TimeoutError):
        error = ReadTimeoutError(endpoint_url=endpoint, error=exc)
    else:
        error = EndpointConnectionError(endpoint_url=endpoint, error=exc)
    return error
