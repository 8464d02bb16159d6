"""Signed requests with botocore's "standard" retries: :class:`SignedTransport`.

One per fast client: the credentials, a Signature V4 signer, the retry loop, and
a pool of keep-alive connections per host (:mod:`s3flow.fastpath.http`, s3flow's
own HTTP/1.1 client: about a sixth of aiohttp's CPU per call). Failures become the
SDK client's own exception classes (``sdk.exceptions.from_code``), with botocore's
``response`` shape.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    SSLError,
)
from botocore.httpsession import get_cert_path
from yarl import URL

from s3flow.closing import AsyncClosing
from s3flow.errors import RETRYABLE_CODES
from s3flow.fastpath.http import (
    HttpConnectError,
    HttpConnectTimeout,
    HttpDisconnected,
    HttpError,
    HttpPool,
    HttpResponse,
    HttpTlsError,
)
from s3flow.fastpath.signing import Credentials, SigV4Signer

#: ``(status, headers, body) -> (botocore's "Error" dict, the code naming the exception
#: class)`` of an error response.
ErrorReader = Callable[[int, Mapping[str, str], bytes], tuple[dict[str, str], str]]

# botocore's standard retry mode: what is retried besides connection errors.
RETRY_STATUSES = frozenset({500, 502, 503, 504, 429})
# Answers that mean "ask again elsewhere": the SDK follows them (region redirects; a
# HEAD signed for the wrong region gets a bodiless 400).
REDIRECT_STATUSES = frozenset({301, 302, 307})
REDIRECT_CODES = frozenset(
    {"AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException"}
)
_USER_AGENT = "s3flow-fastpath/1"

log = logging.getLogger("s3flow.fastpath")


class RetryQuota:
    """botocore's standard-mode retry quota, one per client (``RetryQuotaChecker``).

    A retry spends :attr:`RETRY_COST` tokens (:attr:`TIMEOUT_COST` after a timeout); an
    answered call gives back what its last retry spent, or one token when it needed
    none. With too few tokens left an error is raised at once instead of retried: in
    an outage the client stops after about a hundred retries in all, instead of every
    call retrying ``max_attempts`` times, and it recovers as calls succeed again.
    """

    CAPACITY = 500
    RETRY_COST = 5
    TIMEOUT_COST = 10
    NO_RETRY_INCREMENT = 1

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.available = capacity

    def acquire(self, *, timeout: bool) -> int:
        """Take the cost of one retry: the tokens taken, or 0 when too few are left."""
        cost = self.TIMEOUT_COST if timeout else self.RETRY_COST
        if cost > self.available:
            return 0
        self.available -= cost
        return cost

    def release(self, spent: int) -> None:
        """A call was answered: give back ``spent`` (its last retry's cost; 0: none)."""
        self.available = min(self.capacity, self.available + (spent or self.NO_RETRY_INCREMENT))


class UseSdk(Exception):
    """The SDK must make this call: no credentials, or the service redirected it."""

    def __init__(self, *, redirect: bool) -> None:
        super().__init__("redirect" if redirect else "no credentials")
        self.redirect = redirect


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


@dataclass(frozen=True, slots=True)
class Answer:
    """A 2xx response: the body already read when asked for (else unread), and the
    retries it took."""

    response: HttpResponse
    body: bytes | None
    attempts: int


def host_header(endpoint_url: str) -> str:
    """The Host an endpoint URL is reached at (lower-case, no default port), as signed."""
    return URL(endpoint_url).host_port_subcomponent or ""


class SignedTransport(AsyncClosing):
    """Sends :class:`Request` s signed for one service, retried as botocore's standard mode.

    ``credentials`` returns the current frozen credentials (read again for each
    attempt); ``None`` means the SDK must make the call (:class:`UseSdk`), as
    must region redirects.
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
        self.host = host_header(conn.endpoint_url)
        self.path = parts.path or "/"
        self._retries = conn.max_attempts
        self.quota = RetryQuota()
        self._backoff_base_s = conn.backoff_base_s
        self._conn = conn
        self._pools: dict[str, HttpPool] = {}  # Host header -> its connections
        self._ssl: ssl.SSLContext | None = None
        self.calls: dict[str, int] = {}  # operation -> calls answered with 2xx

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()

    @property
    def connections_in_use(self) -> int:
        """Connections a request or an unread GetObject body holds now."""
        return sum(pool.in_use for pool in self._pools.values())

    def _tls(self) -> ssl.SSLContext | None:
        """HTTPS: the CA bundle botocore itself verifies with (certifi's, else its own)."""
        if self.scheme != "https":
            return None
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=get_cert_path(True))
        return self._ssl

    def _pool(self, host: str) -> HttpPool:
        pool = self._pools.get(host)
        if pool is None:
            url = URL(f"{self.scheme}://{host}")
            pool = HttpPool(
                self.scheme,
                url.host or host,
                url.port or (443 if self.scheme == "https" else 80),
                limit=max(self._conn.pool, 10),
                connect_timeout_s=self._conn.connect_timeout_s,
                read_timeout_s=self._conn.read_timeout_s,
                ssl_context=self._tls(),
            )
            self._pools[host] = pool
        return pool

    async def send(self, req: Request, *, read: bool = False) -> Answer:
        """The 2xx answer (with its body when ``read``); raises :class:`UseSdk` where the
        SDK must make the call, else the SDK's exception after the retries."""
        query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(req.query.items())
        )
        url = URL(
            f"{self.scheme}://{req.host}{req.path}" + (f"?{query}" if query else ""), encoded=True
        )
        attempt = spent = 0
        while True:
            creds = await self._credentials()
            if creds is None:
                raise UseSdk(redirect=False)
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
            # Not signed (botocore signs neither): no compressed answers, who is calling.
            signed["accept-encoding"] = "identity"
            signed["user-agent"] = _USER_AGENT
            try:
                answer = await self._attempt(req, url, signed, attempt, read=read)
            except (HttpError, TimeoutError) as exc:
                timeout = isinstance(exc, TimeoutError)  # connect or read timeout
                spent = self.quota.acquire(timeout=timeout) if attempt < self._retries else 0
                if not spent:
                    raise transport_error(exc, url) from exc
            else:
                if isinstance(answer, Answer):
                    self.quota.release(spent)
                    return answer
                spent = answer
            attempt += 1
            delay = self._backoff_base_s * 2 ** (attempt - 1)
            await asyncio.sleep(random.random() * min(20.0, delay))

    async def _attempt(
        self, req: Request, url: URL, headers: dict[str, str], attempt: int, *, read: bool
    ) -> Answer | int:
        """One try: the answer (its body read, or streaming when not ``read``), the
        retry quota taken to try again, or the error to raise."""
        headers["host"] = req.host
        resp = await self._pool(req.host).request(
            req.method, url.raw_path_qs, headers, req.body, stream=not read
        )
        if 200 <= resp.status < 300:
            self.calls[req.operation] = self.calls.get(req.operation, 0) + 1
            return Answer(resp, None if resp.stream else resp.body, attempt)
        return self._refused(req, resp, resp.body, attempt)

    def _refused(
        self,
        req: Request,
        resp: HttpResponse,
        body: bytes,
        attempt: int,
    ) -> int:
        """A non-2xx answer: the retry quota taken to try again; raises UseSdk or the
        SDK's error."""
        error, class_code = self._read_error(resp.status, resp.headers, body)
        codes = {error["Code"], class_code}
        if (
            resp.status in REDIRECT_STATUSES
            or codes & REDIRECT_CODES
            or (req.method == "HEAD" and resp.status == 400)
        ):
            raise UseSdk(redirect=True)
        retryable = resp.status in RETRY_STATUSES or bool(codes & RETRYABLE_CODES)
        if retryable and attempt < self._retries:
            spent = self.quota.acquire(timeout=False)
            if spent:
                return spent
            log.debug("%s: a retry is needed but the retry quota is used up", req.operation)
            retryable = False  # botocore does not mark a quota stop MaxAttemptsReached
        raise self._client_error(resp, error, class_code, req.operation, attempt, retryable)

    def _client_error(
        self,
        resp: HttpResponse,
        error: dict[str, str],
        class_code: str,
        operation: str,
        attempts: int,
        exhausted: bool,
    ) -> Exception:
        meta = metadata(resp, attempts)
        if exhausted:  # a retryable error that used up every attempt, as botocore marks it
            meta["MaxAttemptsReached"] = True
        response = {"Error": error, "ResponseMetadata": meta}
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

    async def _serve(
        self, method: str, params: dict[str, Any], req: Request | None, *, read: bool = False
    ) -> Answer | dict[str, Any]:
        """The fast answer to ``req``, or the SDK's answer to ``method(**params)`` when
        ``req`` is ``None`` (not handled here) or the SDK must make the call."""
        if req is not None:
            try:
                return await self._http.send(req, read=read)
            except UseSdk as why:
                if why.redirect:
                    self._redirected(params)
        return dict(await getattr(self._sdk, method)(**params))

    def _redirected(self, params: Mapping[str, Any]) -> None:
        """The service sent ``params``' call elsewhere (subclasses remember where)."""


def status_phrase(status: int) -> str:
    """The HTTP reason phrase of ``status`` ("Not Found"), or "" for an unknown one."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def metadata(resp: HttpResponse, attempts: int = 0) -> dict[str, Any]:
    """botocore's ``ResponseMetadata`` of a response (ids only where the service sent them)."""
    headers = resp.headers
    meta: dict[str, Any] = {}
    request_id = headers.get("x-amz-request-id") or headers.get("x-amzn-requestid")
    if request_id:
        meta["RequestId"] = request_id
    if "x-amz-id-2" in headers:
        meta["HostId"] = headers["x-amz-id-2"]
    meta["HTTPStatusCode"] = resp.status
    meta["HTTPHeaders"] = {k.lower(): v for k, v in headers.items()}
    meta["RetryAttempts"] = attempts
    return meta


def transport_error(exc: BaseException, url: URL) -> Exception:
    """botocore's exception for a request that got no (whole) answer, as aiobotocore maps
    aiohttp's: a connect timeout, a refused connection, a read timeout, a dropped
    connection, any other."""
    endpoint = str(url.with_query(None))
    error: Exception
    if isinstance(exc, HttpConnectTimeout):
        error = ConnectTimeoutError(endpoint_url=endpoint, error=exc)
    elif isinstance(exc, HttpTlsError):
        error = SSLError(endpoint_url=endpoint, error=exc)
    elif isinstance(exc, HttpConnectError):  # refused, unreachable, DNS
        error = EndpointConnectionError(endpoint_url=endpoint, error=exc)
    elif isinstance(exc, TimeoutError):
        error = ReadTimeoutError(endpoint_url=endpoint, error=exc)
    elif isinstance(exc, HttpDisconnected):
        error = ConnectionClosedError(endpoint_url=endpoint, error=exc)
    else:
        error = HTTPClientError(error=exc)
    return error
