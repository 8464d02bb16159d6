"""AWS client factory: endpoints, retries, credentials, connection pools.

Endpoints resolve, most specific first: ``aws.endpoint_url_<svc>`` setting,
``aws.endpoint_url`` setting, ``AWS_ENDPOINT_URL_<SVC>`` env var,
``AWS_ENDPOINT_URL`` env var, then the SDK's default (real AWS). Credentials
come from the standard chain (env, profile, instance role).

One translation of :class:`AwsSettings` into SDK arguments (``_config_kwargs``,
``_create_args``, ``_configure``) serves both factories: :func:`open_clients`
(aiobotocore, on the worker's event loop) and :func:`sync_client` (boto3, for
synchronous code such as the compaction's worker processes, which resolve
credentials themselves).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions
import botocore.session
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.config import Config

from s3flow.errors import (
    AwsError,
    ConfigError,
    S3flowError,
    aws_error_code,
    translate_aws_error,
)
from s3flow.fastpath import Connection, Credentials, FastClient, FastS3Client, FastSqsClient
from s3flow.settings import AwsSettings
from s3flow.settings.base import endpoint_url_problem

log = logging.getLogger("s3flow.aws")


def endpoint_for(service: str, aws: AwsSettings) -> str | None:
    """Resolve the endpoint URL for ``service`` ('s3', 'sqs', 'dynamodb')."""
    specific = getattr(aws, f"endpoint_url_{service}", None)
    if specific:
        return str(specific)
    if aws.endpoint_url:
        return aws.endpoint_url
    for var in (f"AWS_ENDPOINT_URL_{service.upper()}", "AWS_ENDPOINT_URL"):
        env = os.environ.get(var)
        if env:
            return _checked_env_endpoint(var, env)
    return None


def _checked_env_endpoint(var: str, value: str) -> str:
    """``value`` of the environment variable ``var``; ConfigError if it is no endpoint URL
    (the SDK would fail every client with a bare ``ValueError: Invalid endpoint``)."""
    problem = endpoint_url_problem(value)
    if problem is not None:
        raise ConfigError(
            f"environment variable {var}={value!r} is not an endpoint URL: {problem}; "
            f"correct it, or unset it to reach AWS itself"
        )
    return value


def pin_endpoints(aws: AwsSettings) -> AwsSettings:
    """``aws`` with the S3 and SQS endpoints this process resolves written in.

    Another process (whose environment may differ) then reaches the same
    endpoints with the same addressing style.
    """
    return aws.model_copy(
        update={
            "endpoint_url_s3": endpoint_for("s3", aws),
            "endpoint_url_sqs": endpoint_for("sqs", aws),
        }
    )


def _config_kwargs(aws: AwsSettings, service: str, pool: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "region_name": aws.region,
        "retries": {"max_attempts": aws.max_attempts, "mode": "standard"},
        "connect_timeout": aws.connect_timeout_s,
        "read_timeout": aws.read_timeout_s,
        "max_pool_connections": max(pool, 10),
    }
    if service == "s3":
        style = aws.s3_addressing_style
        if style == "auto" and endpoint_for("s3", aws):
            style = "path"  # custom endpoints rarely resolve bucket subdomains
        kwargs["s3"] = {"addressing_style": style}
    return kwargs


def client_config(aws: AwsSettings, service: str, pool: int) -> AioConfig:
    """Botocore config: standard retries, timeouts, pool size, S3 addressing."""
    return AioConfig(**_config_kwargs(aws, service, pool))


def sync_client_config(aws: AwsSettings, service: str, pool: int) -> Config:
    """The same config as :func:`client_config`, for a synchronous botocore/boto3 client."""
    return Config(**_config_kwargs(aws, service, pool))


def _create_args(aws: AwsSettings, service: str, config: Config) -> dict[str, Any]:
    """The arguments of ``session.create_client(service, ...)`` (both factories)."""
    endpoint = endpoint_for(service, aws)
    args: dict[str, Any] = {"region_name": aws.region, "endpoint_url": endpoint, "config": config}
    if _no_tls(endpoint):
        args["verify"] = False
    return args


def _no_tls(endpoint: str | None) -> bool:
    """Whether a client of ``endpoint`` makes no TLS connection at all: a plain
    ``http://`` endpoint (a local emulator) reached without a proxy (whose own TLS
    would be verified with the client's settings).

    Such a client has nothing to verify, so it is built with ``verify=False``: the SDK
    then skips loading the CA bundle into a TLS context it would never use (about
    50 ms of CPU per client, measured), which counts where clients are short-lived.
    """
    if endpoint is None:
        return False
    parts = urlsplit(endpoint)
    return parts.scheme.lower() == "http" and not _proxied("http", parts.hostname or "")


#: What the SDK raises about its own configuration (profile, region, config files).
_SDK_CONFIG_ERRORS = (
    botocore.exceptions.ProfileNotFound,
    botocore.exceptions.ConfigNotFound,
    botocore.exceptions.ConfigParseError,
    botocore.exceptions.InvalidRegionError,
    botocore.exceptions.NoRegionError,
    botocore.exceptions.InvalidConfigError,
)


def _configure(session: botocore.session.Session, aws: AwsSettings) -> None:
    """Apply the session-level settings (the profile) to a botocore/aiobotocore session,
    and give it the process's shared data loader (:func:`_share_loader`)."""
    if aws.profile:
        session.set_config_variable("profile", aws.profile)
    _share_loader(session)


#: One botocore data loader per data path (``AWS_DATA_PATH``) for every session this
#: process makes. A new session's own loader parses the service models again (S3's,
#: SQS's and the endpoint rules: ~150 ms of CPU per S3 + SQS client pair, measured);
#: the loader only caches read-only model data, so sharing it changes nothing else.
#: Credentials, region and profile stay each session's own.
_LOADERS: dict[str | None, Any] = {}
_LOADERS_LOCK = threading.Lock()


def _share_loader(session: botocore.session.Session) -> None:
    try:
        path = session.get_config_variable("data_path")
    except _SDK_CONFIG_ERRORS:
        return  # (a profile that does not exist) named where the client is made
    with _LOADERS_LOCK:
        loader = _LOADERS.get(path)
        if loader is None:
            _LOADERS[path] = session.get_component("data_loader")
        else:
            session.register_component("data_loader", loader)


def _session(aws: AwsSettings) -> AioSession:
    session = get_session()
    _configure(session, aws)
    return session


@contextmanager
def sdk_config_errors(aws: AwsSettings) -> Iterator[None]:
    """The SDK's configuration errors (a profile that does not exist...) as ConfigError,
    saying which setting to fix: they are no bug, and no retry mends them."""
    try:
        yield
    except botocore.exceptions.ProfileNotFound as exc:
        profile = exc.kwargs.get("profile", aws.profile)
        raise ConfigError(
            f"AWS profile {profile!r} not found in ~/.aws/config or ~/.aws/credentials "
            "(AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE): set [aws] profile (or "
            "AWS_PROFILE) to a profile that exists, or leave it out for the default "
            "credential chain"
        ) from exc
    except _SDK_CONFIG_ERRORS as exc:
        raise ConfigError(
            f"the AWS SDK cannot be configured: {exc}. Check [aws] region and profile, "
            "AWS_REGION / AWS_PROFILE, and ~/.aws/config"
        ) from exc


@asynccontextmanager
async def async_client(
    aws: AwsSettings, service: str, *, pool: int = 10, session: AioSession | None = None
) -> AsyncIterator[Any]:
    """An aiobotocore client for ``service`` (``async with``), configured as
    :func:`open_clients` does; for the clients it does not open (DynamoDB).

    The SDK's configuration errors are raised as ConfigError (:func:`sdk_config_errors`).
    """
    async with AsyncExitStack() as stack:
        with sdk_config_errors(aws):
            client = await stack.enter_async_context(
                (session or _session(aws)).create_client(
                    service, **_create_args(aws, service, client_config(aws, service, pool))
                )
            )
        yield client


def sync_client(aws: AwsSettings, service: str, *, pool: int = 10) -> Any:
    """A boto3 client for ``service``, configured exactly as :func:`open_clients` does.

    For synchronous code (the compaction's worker processes): the same
    endpoint, region, profile, retries, timeouts and S3 addressing as the
    async clients. Credentials come from the standard chain in the calling
    process (env, ``aws.profile``, container/instance role); the SDK refreshes
    temporary ones. The client is thread-safe: build it once and reuse it.
    """
    import boto3.session

    core = botocore.session.get_session()
    _configure(core, aws)
    with sdk_config_errors(aws):
        session = boto3.session.Session(botocore_session=core)
        return session.client(
            service, **_create_args(aws, service, sync_client_config(aws, service, pool))
        )


@dataclass
class AwsClients:
    """The async clients one worker process shares. Use :func:`open_clients`."""

    s3: Any
    sqs: Any
    aws: AwsSettings  # what they were built from (processors hand it on, see sync_client)


#: What a HeadBucket of a bucket that does not exist answers (it has no body: "404").
_NO_BUCKET = frozenset({"404", "NotFound", "NoSuchBucket"})


async def bucket_exists(s3: Any, bucket: str) -> bool:
    """Whether ``bucket`` exists at ``s3``'s endpoint (a HeadBucket).

    False when the answer is 404 / NoSuchBucket; any other failure (access denied,
    the endpoint unreachable...) raises, translated by
    :func:`~s3flow.errors.translate_aws_error`.
    """
    try:
        await s3.head_bucket(Bucket=bucket)
    except Exception as exc:
        if aws_error_code(exc) in _NO_BUCKET:
            return False
        raise translate_aws_error(exc, f"HeadBucket {bucket}") from exc
    return True


async def bucket_surely_missing(s3: Any, bucket: str) -> bool:
    """True only when a HeadBucket says ``bucket`` does not exist (404); False when it
    exists or the HeadBucket cannot tell (access denied...): the error at hand stands."""
    try:
        return not await bucket_exists(s3, bucket)
    except S3flowError:
        return False


def missing_bucket_error(bucket: str, aws: AwsSettings, what: str = "bucket") -> ConfigError:
    """The error for a ``bucket`` that does not exist: it names the bucket and the
    endpoint asked (the region, on AWS itself), and says what to do."""
    where = endpoint_for("s3", aws) or f"AWS S3 in {aws.region}"
    return ConfigError(
        f"{what} {bucket!r} does not exist at {where}: check the name (and the endpoint "
        "and region), or create it with `s3flow provision`"
    )


@dataclass(frozen=True, slots=True)
class QueueDepths:
    """A queue's approximate message counts, as GetQueueAttributes gives them."""

    visible: int
    in_flight: int  # received, not yet deleted (ApproximateNumberOfMessagesNotVisible)
    delayed: int

    @property
    def total(self) -> int:
        """Every message the queue still holds."""
        return self.visible + self.in_flight + self.delayed


_DEPTH_ATTRIBUTES = {
    "visible": "ApproximateNumberOfMessages",
    "in_flight": "ApproximateNumberOfMessagesNotVisible",
    "delayed": "ApproximateNumberOfMessagesDelayed",
}


async def queue_depths(sqs: Any, url: str) -> QueueDepths:
    """The message counts of the queue at ``url``; the SDK's error as it is raised."""
    resp = await sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=list(_DEPTH_ATTRIBUTES.values())
    )
    attrs = resp.get("Attributes", {})
    return QueueDepths(**{k: int(attrs.get(a, 0)) for k, a in _DEPTH_ATTRIBUTES.items()})


def session_credentials(session: AioSession) -> Callable[[], Awaitable[Credentials | None]]:
    """The session's current credentials, frozen (temporary ones refresh as the SDK's do)."""
    resolved: list[Any] = []
    last: list[tuple[Any, Credentials]] = []
    first = asyncio.Lock()  # the chain is resolved once, not by every early caller

    async def current() -> Credentials | None:
        if not resolved:
            async with first:
                if not resolved:
                    resolved.append(await session.get_credentials())
        if resolved[0] is None:
            return None
        frozen = await resolved[0].get_frozen_credentials()
        if not last or last[0][0] is not frozen:
            last[:] = [(frozen, Credentials(frozen.access_key, frozen.secret_key, frozen.token))]
        return last[0][1]

    return current


def _proxied(scheme: str, host: str) -> bool:
    """Whether the environment (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) sends requests for
    ``scheme://host`` through a proxy, as the SDK does."""
    return bool(urllib.request.getproxies().get(scheme)) and not urllib.request.proxy_bypass(host)


def sdk_only_reason(sdk: Any, session: AioSession) -> str | None:
    """Why ``sdk``'s calls must all go through the SDK, if they must: the fast path does
    not speak through proxies nor with client certificates or a custom CA bundle."""
    meta = sdk.meta
    endpoint = urlsplit(meta.endpoint_url)
    host, scheme = endpoint.hostname or "", endpoint.scheme
    if meta.config.proxies or _proxied(scheme, host):
        return "an HTTP proxy is configured"
    if meta.config.client_cert:
        return "a client certificate is configured"
    if scheme == "https" and (
        os.environ.get("AWS_CA_BUNDLE") or session.get_config_variable("ca_bundle")
    ):
        return "a custom CA bundle is configured"
    return None


def fast_client(sdk: Any, session: AioSession, aws: AwsSettings, *, pool: int) -> Any:
    """The fast-path client (:mod:`s3flow.fastpath`) around the aiobotocore client ``sdk``,
    or ``sdk`` itself where the fast path cannot serve it (:func:`sdk_only_reason`)."""
    meta = sdk.meta
    why = sdk_only_reason(sdk, session)
    if why:
        log.info("%s: every call through the SDK (%s)", meta.service_model.service_name, why)
        return sdk
    conn = Connection(
        endpoint_url=meta.endpoint_url,
        region=meta.region_name,
        max_attempts=aws.max_attempts,
        connect_timeout_s=aws.connect_timeout_s,
        read_timeout_s=aws.read_timeout_s,
        pool=pool,
    )
    credentials = session_credentials(session)
    if meta.service_model.service_name == "sqs":
        return FastSqsClient(sdk, credentials, conn)
    return FastS3Client(
        sdk,
        credentials,
        conn,
        path_style=(meta.config.s3 or {}).get("addressing_style") == "path",
        checksum_crc32=meta.config.request_checksum_calculation == "when_supported",
    )


#: What to check when a custom endpoint does not answer (see :func:`check_reachable`).
ENDPOINT_HINT = (
    "nothing answers at that address: is the endpoint running (e.g. `s3flow local`), and "
    "is its setting right ([aws] endpoint_url / endpoint_url_s3 / endpoint_url_sqs, or "
    "AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL_SQS)?"
)

#: Between two tries of an endpoint that refused a connection (it may be starting).
_RETRY_REFUSED_S = 0.2


async def check_reachable(aws: AwsSettings) -> None:
    """Raise :class:`AwsError` when a custom S3 or SQS endpoint accepts no TCP connection
    within ``connect_timeout_s`` (one that refuses is tried again until then: it may be
    starting, as `s3flow local &` is).

    The SDK retries a refused connection with back-off (15-20 s with the default
    ``max_attempts``) before it reports the same error. AWS itself (no custom endpoint)
    and an endpoint reached through an HTTP proxy (the proxy connects, not s3flow) are
    not checked.
    """
    services: dict[tuple[str, int], list[str]] = {}
    urls: dict[tuple[str, int], str] = {}
    for service in ("s3", "sqs"):
        url = endpoint_for(service, aws)
        if not url:
            continue
        parts = urlsplit(url)
        host = parts.hostname or ""
        if _proxied(parts.scheme, host):
            continue
        address = (host, parts.port or (443 if parts.scheme == "https" else 80))
        services.setdefault(address, []).append(service.upper())
        urls.setdefault(address, url)
    for address, names in services.items():
        problem = await _connect_problem(address, aws.connect_timeout_s)
        if problem is not None:
            raise AwsError(
                f"cannot reach the {' and '.join(names)} endpoint {urls[address]}: "
                f"{problem} ({ENDPOINT_HINT})",
                operation="connect",
            )


async def _connect_problem(address: tuple[str, int], timeout_s: float) -> str | None:
    """Why no TCP connection to ``address`` was made within ``timeout_s``, or None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(*address), max(0.01, deadline - loop.time())
            )
        except ConnectionRefusedError as exc:
            if loop.time() + _RETRY_REFUSED_S >= deadline:
                return f"{exc} (for {timeout_s:g} s, aws.connect_timeout_s)"
            await asyncio.sleep(_RETRY_REFUSED_S)
            continue
        except TimeoutError:
            return f"no connection within {timeout_s:g} s (aws.connect_timeout_s)"
        except OSError as exc:  # a name that does not resolve, no route: not worth waiting
            return str(exc)
        writer.close()
        return None


@asynccontextmanager
async def open_clients(
    aws: AwsSettings, *, pool: int = 10, check_endpoints: bool = True
) -> AsyncIterator[AwsClients]:
    """Open S3 and SQS clients for the lifetime of the ``async with`` block.

    With ``aws.fast_path`` (the default) each is a fast-path client
    (:mod:`s3flow.fastpath`) around the SDK's. A custom endpoint nothing answers at
    fails at once (:func:`check_reachable`), unless ``check_endpoints`` is False.
    """
    session = _session(aws)
    async with AsyncExitStack() as stack:
        clients = {}
        for service in ("s3", "sqs"):
            clients[service] = await stack.enter_async_context(
                async_client(aws, service, pool=pool, session=session)
            )
        if aws.fast_path:
            for service, sdk in list(clients.items()):
                fast = fast_client(sdk, session, aws, pool=pool)
                if isinstance(fast, FastClient):
                    clients[service] = await stack.enter_async_context(fast)
        if check_endpoints:  # after the clients: a settings error (a profile) is named first
            await check_reachable(aws)
        yield AwsClients(s3=clients["s3"], sqs=clients["sqs"], aws=aws)
