"""S3's three hot calls as s3flow's own signed HTTP requests: :class:`FastS3Client`.

The worker makes a GetObject, a PutObject and a HeadObject (output verification)
for every object. Through botocore each costs about 1 ms of CPU in event hooks,
parameter validation, serialisation and response parsing; as a Signature V4
signed request it cost about 0.15 ms through aiohttp (measured against S3Proxy
on the 2-core development VM: 3.0–3.5 ms for the three calls through
aiobotocore, 0.35–0.6 ms here), and less again on s3flow's own HTTP client
(:mod:`s3flow.fastpath.http`). :class:`FastS3Client` wraps the SDK client and serves those
three calls itself when their parameters are among the few it handles; every
other call, and any call with another parameter, goes to the SDK client
unchanged. Responses have botocore's shape (the same keys, a streaming ``Body``
with aiobotocore's async body API: :class:`FastStreamingBody`) and failures raise
the SDK client's own exception classes, so callers cannot tell the two paths apart.

What the SDK does that this module does too: credentials from the same chain
(refreshed when temporary), retries in botocore's "standard" mode (connection
errors, 5xx, throttling; ``max_attempts`` retries after the first try, jittered
exponential back-off), path- or virtual-hosted addressing as configured, the
body hashed into the signature as botocore does, and a CRC32 checksum when
``request_checksum_calculation`` is ``when_supported`` (sent as a header where
botocore streams a trailer; S3 takes both). What it leaves to the SDK:
redirects to another region (the call is made again through the SDK, and that
bucket stays with the SDK), directory and access-point buckets, keys the URL
layer could normalise (``//``, ``.`` and ``..`` segments), non-ASCII metadata
or header values, bodies that are not bytes.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

from aiobotocore.response import AioReadTimeoutError, AioStreamingBodyBase
from botocore.response import ResponseStreamingError
from botocore.utils import parse_timestamp

from s3flow.fastpath.http import BodyStream, HttpDisconnected, HttpReadTimeout
from s3flow.fastpath.signing import EMPTY_SHA256, UNSIGNED_PAYLOAD, Credentials
from s3flow.fastpath.transport import (
    Answer,
    Connection,
    FastClient,
    Request,
    metadata,
    status_phrase,
)

# The parameters each fast call handles; a call with any other goes to the SDK.
GET_PARAMS = frozenset({"Bucket", "Key", "VersionId", "Range", "IfMatch"})
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

_META_PREFIX = "x-amz-meta-"
OPERATIONS = ("GetObject", "HeadObject", "PutObject")

_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class HeaderFields:
    """One operation's output headers as botocore parses them, read from the SDK's model:
    header name -> (output key, type), and the metadata map's prefix."""

    def __init__(self, output_shape: Any) -> None:
        self.fields: dict[str, tuple[str, str]] = {}
        self.meta_key: str | None = None
        for key, member in output_shape.members.items():
            where = member.serialization.get("location")
            name = str(member.serialization.get("name", key)).lower()
            if where == "header":
                self.fields[name] = (key, member.type_name)
            elif where == "headers" and name == _META_PREFIX:
                self.meta_key = key

    def parse(self, headers: Mapping[str, str]) -> dict[str, Any]:
        """botocore's output keys of a response's headers."""
        out: dict[str, Any] = {}
        meta: dict[str, str] = {}
        for raw_name, value in headers.items():
            name = raw_name.lower()
            if name.startswith(_META_PREFIX):
                meta[name[len(_META_PREFIX) :]] = value
                continue
            field = self.fields.get(name)
            if field is None:
                continue
            key, kind = field
            if kind in ("integer", "long"):
                out[key] = int(value)
            elif kind == "boolean":
                out[key] = value.lower() == "true"
            elif kind == "timestamp":
                if key == "Expires":  # botocore keeps the raw text too (it may not parse)
                    out["ExpiresString"] = value
                try:
                    out[key] = _timestamp(value)
                except (ValueError, TypeError):
                    if key != "Expires":
                        raise
            else:
                out[key] = value
        if self.meta_key is not None:
            out[self.meta_key] = meta
        return out


def _timestamp(value: str) -> datetime:
    """A header date, tz-aware in UTC as botocore gives it."""
    try:
        return parsedate_to_datetime(value).astimezone(UTC)
    except (ValueError, TypeError):
        parsed: datetime = parse_timestamp(value)
        return parsed


def header_fields(sdk: Any) -> dict[str, HeaderFields]:
    """:class:`HeaderFields` of each fast operation, from the S3 client's service model."""
    model = sdk.meta.service_model
    return {op: HeaderFields(model.operation_model(op).output_shape) for op in OPERATIONS}


def error_code(status: int, headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
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
    return str(status), status_phrase(status)


def read_error(status: int, headers: Mapping[str, str], body: bytes) -> tuple[dict[str, str], str]:
    """botocore's ``Error`` of an S3 error response, and the code naming its class."""
    code, message = error_code(status, headers, body)
    return {"Code": code, "Message": message}, code


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


class FastStreamingBody(AioStreamingBodyBase):  # type: ignore[misc]
    """GetObject's ``Body`` on the fast path: aiobotocore's async body API (``read``,
    ``iter_chunks``, ``iter_lines``, ``async with``, the Content-Length check) over a
    :class:`~s3flow.fastpath.http.BodyStream`, or over the bytes of an answer that
    came whole. Read errors are botocore's, as aiobotocore raises them."""

    def __init__(
        self, stream: BodyStream | None, data: bytes, endpoint: str, content_length: int | None
    ) -> None:
        super().__init__(stream, content_length)
        self._stream = stream
        self._data = memoryview(data)
        self._endpoint = endpoint

    def readable(self) -> bool:
        """Bytes are left to read."""
        return bool(self._data) if self._stream is None else not self._stream.at_eof

    async def read(self, amt: int | None = None) -> bytes:
        """At most ``amt`` bytes (all that is left when None); ``b""`` at the end."""
        if self._stream is None:
            n = len(self._data) if amt is None or amt < 0 else amt
            chunk = bytes(self._data[:n])
            self._data = self._data[n:]
        else:
            try:
                chunk = await self._stream.read(-1 if amt is None else amt)
            except HttpReadTimeout as exc:
                raise AioReadTimeoutError(endpoint_url=self._endpoint, error=exc) from exc
            except HttpDisconnected as exc:
                raise ResponseStreamingError(error=exc) from exc
        self._amount_read += len(chunk)
        if amt is None or (not chunk and amt > 0):
            self._verify_content_length()
        return chunk

    async def readinto(self, b: bytearray) -> int:
        """Read into ``b``; how many bytes were read."""
        chunk = await self.read(len(b))
        b[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        """Stop reading (an unread rest drops the connection)."""
        if self._stream is not None:
            self._stream.close()

    async def aclose(self) -> None:
        """:meth:`close`."""
        self.close()


class FastS3Client(FastClient):
    """An S3 client: GetObject / PutObject / HeadObject served by s3flow's signed requests,
    everything else by the wrapped SDK client (see the module docstring).

    ``credentials`` returns the current frozen credentials (the SDK session's chain);
    ``None`` makes every call go through the SDK (anonymous access).
    """

    service = "s3"
    read_error = staticmethod(read_error)

    def __init__(
        self,
        sdk: Any,
        credentials: Callable[[], Awaitable[Credentials | None]],
        conn: Connection,
        *,
        path_style: bool,
        checksum_crc32: bool = False,
    ) -> None:
        super().__init__(sdk, credentials, conn)
        self._path_style = path_style
        self._fields = header_fields(sdk)
        # Like botocore: a PUT body is hashed into the signature unless HTTPS carries
        # it and a checksum header protects it.
        self._unsigned_put = self._http.scheme == "https" and checksum_crc32
        self._checksum = checksum_crc32
        self._sdk_buckets: set[str] = set()  # redirected to another region: the SDK's

    async def get_object(self, **params: Any) -> dict[str, Any]:
        """GetObject; ``Body`` streams (aiobotocore's async body API)."""
        req = None
        if (
            self._handles(params, GET_PARAMS)
            and str(params.get("Range", "")).isascii()
            and str(params.get("IfMatch", "")).isascii()
        ):
            headers = {"range": params["Range"]} if "Range" in params else {}
            if "IfMatch" in params:  # a 412 raises the SDK's error for PreconditionFailed
                headers["if-match"] = params["IfMatch"]
            req = self._request("GET", "GetObject", params, headers, b"")
        got = await self._serve("get_object", params, req)
        if isinstance(got, dict):
            return got
        resp = got.response
        try:
            out = self._output("GetObject", got)
            out["Body"] = FastStreamingBody(
                resp.stream,
                got.body or b"",
                f"{self._http.scheme}://{self._http.host}",
                out.get("ContentLength"),
            )
        except BaseException:
            if resp.stream is not None:
                resp.stream.close()
            raise
        return out

    async def head_object(self, **params: Any) -> dict[str, Any]:
        """HeadObject."""
        req = None
        if self._handles(params, HEAD_PARAMS):
            req = self._request("HEAD", "HeadObject", params, {}, b"")
        got = await self._serve("head_object", params, req, read=True)
        return got if isinstance(got, dict) else self._output("HeadObject", got)

    async def put_object(self, **params: Any) -> dict[str, Any]:
        """PutObject of a bytes-like ``Body``."""
        body = params.get("Body", b"")
        meta = params.get("Metadata") or {}
        req = None
        if (
            self._handles(params, PUT_PARAMS)
            and isinstance(body, bytes | bytearray | memoryview)
            and all(f"{k}{v}".isascii() for k, v in meta.items())
            and all(str(params[name]).isascii() for name in _PUT_HEADERS if name in params)
        ):
            data = bytes(body)
            headers = {h: params[name] for name, h in _PUT_HEADERS.items() if name in params}
            headers.update({f"{_META_PREFIX}{k}": v for k, v in meta.items()})
            if self._checksum:
                crc = zlib.crc32(data).to_bytes(4, "big")
                headers["x-amz-checksum-crc32"] = base64.b64encode(crc).decode()
                headers["x-amz-sdk-checksum-algorithm"] = "CRC32"
            req = self._request("PUT", "PutObject", params, headers, data)
        got = await self._serve("put_object", params, req, read=True)
        return got if isinstance(got, dict) else self._output("PutObject", got)

    def _handles(self, params: Mapping[str, Any], allowed: frozenset[str]) -> bool:
        bucket = params.get("Bucket")
        key = params.get("Key")
        return (
            params.keys() <= allowed
            and isinstance(bucket, str)
            and isinstance(key, str)
            and _plain_key(key)
            and bucket not in self._sdk_buckets
            and not bucket.startswith("arn:")
            and not bucket.endswith(("--x-s3", "--ol-s3", "--op-s3"))
        )

    def _redirected(self, params: Mapping[str, Any]) -> None:
        self._sdk_buckets.add(params["Bucket"])

    def _output(self, operation: str, got: Answer) -> dict[str, Any]:
        out = self._fields[operation].parse(got.response.headers)
        out["ResponseMetadata"] = metadata(got.response, got.attempts)
        return out

    def _request(
        self,
        method: str,
        operation: str,
        params: Mapping[str, Any],
        headers: dict[str, str],
        body: bytes,
    ) -> Request:
        host, path = object_location(
            self._http.host, params["Bucket"], params["Key"], path_style=self._path_style
        )
        if method != "PUT":
            payload = EMPTY_SHA256
        elif self._unsigned_put:
            payload = UNSIGNED_PAYLOAD
        else:
            payload = hashlib.sha256(body).hexdigest()
        query = {"versionId": params["VersionId"]} if params.get("VersionId") else {}
        return Request(operation, method, host, path, query, headers, body, payload)
