"""What the web app holds while it runs: AWS clients, the state store, the hub, the consumer.

:func:`open_runtime` opens them in order and closes them in reverse: the S3
and SQS clients, the state store (``[state] url``; the web app keeps nothing
of its own, so any number of instances can share one store), the
:class:`~s3flow.web.hub.EventHub`, and — when ``[jobs]`` is set — the
progress consumer, which moves events from the progress FIFO queue into the
store and tells the hub.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from s3flow.app import check_templates, open_store, queue_url
from s3flow.aws import open_clients
from s3flow.errors import ConfigError
from s3flow.jobs.progress import ProgressConsumer
from s3flow.settings import Settings
from s3flow.state.jobs import JobEvent, JobStore
from s3flow.web.hub import EventHub

__all__ = ["WebRuntime", "open_runtime", "warn_if_page_cannot_upload"]

log = logging.getLogger("s3flow.web")


@dataclass
class WebRuntime:
    """The open resources the routes use."""

    settings: Settings
    s3: Any
    sqs: Any
    store: JobStore
    hub: EventHub
    consumer: ProgressConsumer | None = None


async def warn_if_page_cannot_upload(s3: Any, settings: Settings) -> list[str]:
    """Warn (and return the warning) when the uploads bucket's CORS rules allow none of
    the origins this server's page is served at: browsers could not send files, each
    upload failing with a vague network error while its job waits for files. The usual
    cause is another port than the one `s3flow provision` was run with (``--port``).
    Rules that cannot be read (no permission) are not judged."""
    assert settings.jobs is not None
    bucket = settings.jobs.bucket
    try:
        rules = (await s3.get_bucket_cors(Bucket=bucket)).get("CORSRules") or []
    except Exception as exc:
        code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
        if code != "NoSuchCORSConfiguration":
            log.debug("CORS rules of %s not checked: %s", bucket, exc)
            return []
        rules = []
    allowed = {
        origin
        for rule in rules
        if "POST" in (rule.get("AllowedMethods") or [])
        for origin in rule.get("AllowedOrigins") or []
    }
    # [jobs] cors_origins: where people open the page (a proxy's address, say); unset,
    # this server's own origins at its [web] port and url.
    page = settings.jobs.origins()
    # S3 rules may hold one "*" wildcard in an origin ("https://*.example.com").
    if any(fnmatch.fnmatchcase(o, rule) for o in page for rule in allowed):
        return []
    said = (
        f"the uploads bucket {bucket!r} lets browsers POST from "
        + (", ".join(sorted(allowed)) if allowed else "no origin")
        + f", not from this page ({', '.join(page)}): the page cannot upload files. Run "
        "`s3flow provision` with this [web] port / url (or list the origin in [jobs] "
        "cors_origins), or serve the page where the bucket allows"
    )
    log.warning("%s", said)
    return [said]


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    store: JobStore | None = None,
    s3: Any = None,
    sqs: Any = None,
    consume_progress: bool = True,
    poll_s: float = 0.25,
) -> AsyncIterator[WebRuntime]:
    """Open everything the web app needs for the ``async with`` block.

    ``store``, ``s3`` and ``sqs`` may be given (already open; not closed
    here) instead of being opened from ``settings``. ``consume_progress``:
    run the progress consumer (only with ``[jobs]``); turn it off when the
    consumer runs elsewhere. Raises :class:`ConfigError` for a missing store
    or progress queue before anything is served.
    """
    check_templates(settings)  # a job of a template that cannot run is refused now
    async with AsyncExitStack() as stack:
        if s3 is None or (sqs is None and settings.jobs is not None and consume_progress):
            clients = await stack.enter_async_context(open_clients(settings.aws))
            s3 = s3 if s3 is not None else clients.s3
            sqs = sqs if sqs is not None else clients.sqs
        if store is None:
            opened = await stack.enter_async_context(open_store(settings, check="jobs"))
            if opened is None:
                raise ConfigError(
                    "the web app keeps jobs in the state store, but [state] url is 'none': "
                    "set it to 'sqlite:PATH' or 'dynamodb://PREFIX'"
                )
            store = opened
        if settings.jobs is not None:
            await warn_if_page_cannot_upload(s3, settings)
        hub = await stack.enter_async_context(
            EventHub(store, poll_s=poll_s, heartbeat_s=settings.web.heartbeat_s)
        )
        consumer = None
        if settings.jobs is not None and consume_progress:
            name = settings.jobs.resource("progress.fifo")
            url = await queue_url(sqs, name, what="progress")

            def on_event(event: JobEvent) -> None:
                hub.notify(event.job_id)

            consumer = await stack.enter_async_context(
                ProgressConsumer(sqs=sqs, queue_url=url, store=store, on_event=on_event)
            )
        yield WebRuntime(settings=settings, s3=s3, sqs=sqs, store=store, hub=hub, consumer=consumer)
