"""AWS client factory: endpoints, retries, credentials, connection pools.

Endpoints resolve, most specific first: ``aws.endpoint_url_<svc>`` setting,
``aws.endpoint_url`` setting, ``AWS_ENDPOINT_URL_<SVC>`` env var,
``AWS_ENDPOINT_URL`` env var, then the SDK's default (real AWS). Credentials
come from the standard chain (env, profile, instance role).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session

from s3flow.settings import AwsSettings


def endpoint_for(service: str, aws: AwsSettings) -> str | None:
    """Resolve the endpoint URL for ``service`` ('s3', 'sqs', 'dynamodb')."""
    specific = getattr(aws, f"endpoint_url_{service}", None)
    if specific:
        return str(specific)
    if aws.endpoint_url:
        return aws.endpoint_url
    env = os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get(
        "AWS_ENDPOINT_URL"
    )
    return env or None


def client_config(aws: AwsSettings, service: str, pool: int) -> AioConfig:
    """Botocore config: standard retries, timeouts, pool size, S3 addressing."""
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
    return AioConfig(**kwargs)


@dataclass
class AwsClients:
    """The async clients one worker process shares. Use :func:`open_clients`."""

    s3: Any
    sqs: Any


def _session(aws: AwsSettings) -> AioSession:
    session = get_session()
    if aws.profile:
        session.set_config_variable("profile", aws.profile)
    return session


@asynccontextmanager
async def open_clients(aws: AwsSettings, *, pool: int = 10) -> AsyncIterator[AwsClients]:
    """Open S3 and SQS clients for the lifetime of the ``async with`` block."""
    session = _session(aws)
    async with AsyncExitStack() as stack:
        clients = {}
        for service in ("s3", "sqs"):
            clients[service] = await stack.enter_async_context(
                session.create_client(
                    service,
                    region_name=aws.region,
                    endpoint_url=endpoint_for(service, aws),
                    config=client_config(aws, service, pool),
                )
            )
        yield AwsClients(s3=clients["s3"], sqs=clients["sqs"])
