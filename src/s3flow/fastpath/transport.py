"""Signed requests with botocore's "standard" retries: :class:`SignedTransport`.

One per fast client: an aiohttp session, the credentials, a Signature V4
signer, and the retry loop. Failures become the SDK client's own exception
classes (``sdk.exceptions.from_code``), with botocore's ``response`` shape.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import aiohttp
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
from yarl import URL

from s3flow.closing import AsyncClosing
from s3flow.errors import RETRYABLE_CODES
from s3flow.fastpath.signing import Credentials, SigV4Signer

#: ``(status, headers, body) -> (botocore's "Error" dict, the code naming the exception
#: class)`` of an error response.
ErrorReader = Callable[[int, Mapping[str, str], bytes], tuple[dict[str, str], str]]

# botocore's standard retry mode: what is retried besides connection errors.
RETRY_STATUSES = frozenset({500, 502, 503, 504, 429})
# Answers that mean "ask again elsewhere": the SDK follows them (region redirects).
REDIRECT_STATUSES = frozenset({301, 307})
REDIRECT_CODES = frozenset({"AuthorizationHeaderMalformed", "PermanentRedirect"})


@dataclass(frozen=True, slots=True)
class Connection:
    """Where and how a fast client talks: endpoint, region, retries, timeouts, pool size."""

    endpoint_url: str
    region: str
    max_attempts: int  # retries after the first try, as botocore's retries.max_attempts
    connect_timeout_s: float
    read_timeout_s: float
    pool: int
    backoff_base_s: float = 1.0  # botocore's standard back-off base


@dataclass(frozen=True, slots=True)
class Request:
    """One signed call: where it goes and what it carries."""

    operation: str  # the API name, for errors ("GetObject")
    method: str
    host: str
    path: str  # URI-encoded, exactly as sent
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    payload_sha256: str


class SignedTransport(AsyncClosing):
    """Sends :class:`Request` s signed for one service, retried as botocore's standard mode.

    ``credentials`` returns the current frozen credentials; ``None`` means the SDK
    must make the call (``send`` returns ``None``), as do region redirects.
    """

    def __init__(
        self,
        sdk: Any,
        credentials: Callable[[], Awaitable[Credentials | None]],
        read_error: ErrorReader,
        conn: Connection,
        *,
        service: str,
    ) -> None:
        self._sdk = sdk
        self._credentials = credentials
        self._read_error = read_error
        self._signer = SigV4Signer(conn.region, service)
        parts = urlsplit(conn.endpoint_url)
        self.scheme = parts.scheme or "https"
        self.host = parts.netloc
        self.path = parts.path or "/"
        self._retries = conn.max_attempts
        self._backoff_base_s = conn.backoff_base_s
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(conn.pool, 10)),
            timeout=aiohttp.ClientTimeout(
                connect=conn.connect_timeout_s, sock_read=conn.read_timeout_s
            ),
            auto_decompress=False,  # Content-Encoding belongs to the object, not the transfer
            skip_auto_headers=("User-Agent", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),  # AWS sets no cookies worth keeping
        )
        self.calls: dict[str, int] = {}  # operation -> calls answered with 2xx

    async def close(self) -> None:
        await self._session.close()

    async def send(self, req: Request) -> aiohttp.ClientResponse | None:
        """The 2xx response (its body unread), or ``None`` where the SDK must make the
        call; other failures raise the SDK's exception after the retries."""
        creds = await self._credentials()
        if creds is None:
            return None
        query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(req.query.items())
        )
        url = URL(
            f"{self.scheme}://{req.host}{req.path}" + (f"?{query}" if query else ""), encoded=True
        )
        data = req.body if req.body or req.method in ("PUT", "POST") else None
        attempt = 0
        while True:
            signed = self._signer.sign(
                req.method,
                req.host,
                req.path,
                req.query,
                req.headers,
                req.payload_sha256,
                creds,
                datetime.now(UTC),
            )
            try:
                resp = await self._session.request(req.method, url, headers=signed, data=data)
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                if attempt >= self._retries:
                    raise _connection_error(exc, url) from exc
            else:
                if 200 <= resp.status < 300:
                    self.calls[req.operation] = self.calls.get(req.operation, 0) + 1
                    return resp
                body = b"" if req.method == "HEAD" else await resp.read()
                resp.release()
                error, class_code = self._read_error(resp.status, resp.headers, body)
                codes = {error["Code"], class_code}
                if resp.status in REDIRECT_STATUSES or codes & REDIRECT_CODES:
                    return None
                retryable = resp.status in RETRY_STATUSES or bool(codes & RETRYABLE_CODES)
                if not retryable or attempt >= self._retries:
                    raise self._client_error(resp, error, class_code, req.operation, attempt)
            attempt += 1
            await asyncio.sleep(random.random() * min(20.0, self._backoff_base_s * 2**attempt))

    def _client_error(
        self,
        resp: aiohttp.ClientResponse,
        error: dict[str, str],
        class_code: str,
        operation: str,
        attempts: int,
    ) -> Exception:
        response = {"Error": error, "ResponseMetadata": metadata(resp, attempts)}
        error_class = self._sdk.exceptions.from_code(class_code)
        exc: Exception = error_class(response, operation)
        return exc


class FastClient(AsyncClosing):
    """A fast-path client: wraps an SDK client and serves a few of its calls itself.

    Anything not defined on the subclass is the SDK client's (``__getattr__``),
    so callers use it as they would the SDK client.
    """

    service: ClassVar[str]

    @staticmethod
    def read_error(
        status: int, headers: Mapping[str, str], body: bytes
    ) -> tuple[dict[str, str], str]:
        """botocore's ``Error`` dict of an error response, and the code naming its class."""
        raise NotImplementedError

    def __init__(
        self,
        sdk: Any,
        credentials: Callable[[], Awaitable[Credentials | None]],
        conn: Connection,
    ) -> None:
        self._sdk = sdk
        self._http = SignedTransport(sdk, credentials, self.read_error, conn, service=self.service)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sdk, name)

    @property
    def sdk(self) -> Any:
        """The wrapped SDK client."""
        return self._sdk

    @property
    def fast_calls(self) -> int:
        """Calls served here (not by the SDK)."""
        return sum(self._http.calls.values())

    @property
    def fast_calls_by_operation(self) -> dict[str, int]:
        """Calls served here, by operation name (``{"GetObject": 12}``)."""
        return dict(self._http.calls)

    async def close(self) -> None:
        await self._http.close()


def metadata(resp: aiohttp.ClientResponse, attempts: int = 0) -> dict[str, Any]:
    """botocore's ``ResponseMetadata`` of a response."""
    headers = resp.headers
    return {
        "RequestId": headers.get("x-amz-request-id") or headers.get("x-amzn-requestid", ""),
        "HostId": headers.get("x-amz-id-2", ""),
        "HTTPStatusCode": resp.status,
        "HTTPHeaders": {k.lower(): v for k, v in headers.items()},
        "RetryAttempts": attempts,
    }


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
