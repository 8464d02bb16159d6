"""The FastAPI application of ``s3flow web``: :func:`create_app`.

Its lifespan opens (or is given) a :class:`~s3flow.web.runtime.WebRuntime`:
AWS clients, the state store, the event hub and the progress consumer. The
API's routes are in :mod:`s3flow.web.api`, the event stream in
:mod:`s3flow.web.events`, the browser pages and their static files in
:mod:`s3flow.web.pages`, the no-JavaScript ``POST /upload`` in
:mod:`s3flow.web.form`; ``/healthz`` answers without a token. FastAPI's
own documentation pages are off (they load scripts from a CDN); the OpenAPI
schema is at ``/api/openapi.json``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from s3flow import __version__
from s3flow.settings import Settings
from s3flow.state.jobs import JobStore
from s3flow.web.api import router
from s3flow.web.auth import (
    TokenAuthMiddleware,
    TokenChecker,
    loopback_refusal,
    request_token,
    send_forbidden,
    send_unauthorized,
)
from s3flow.web.errors import install_error_handlers
from s3flow.web.events import match_events, serve_events
from s3flow.web.form import router as form_router
from s3flow.web.metrics import PROMETHEUS_TYPE, web_metrics
from s3flow.web.pages import install_pages
from s3flow.web.responses import SafeJSONResponse
from s3flow.web.runtime import WebRuntime, open_runtime
from s3flow.web.sse import DisconnectPoller

__all__ = ["WebApp", "create_app"]


class WebApp(FastAPI):
    """FastAPI, with ``GET /api/jobs/{job_id}/events`` served ahead of its middleware stack.

    Event streams stay open for the life of a job; taking them before
    FastAPI's stack keeps each one small (see :mod:`s3flow.web.events`). The
    token check is the same as for every other ``/api`` route.
    """

    checker: TokenChecker = TokenChecker([])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Ends the event streams whose clients left (one task for all of them).
        self.disconnects = DisconnectPoller()

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Coroutine[Any, Any, None]:
        """Serve an event stream directly; everything else goes through FastAPI.

        Without tokens, a request not addressed to a loopback name, or a change from
        a page that is not on one, is refused first (:func:`loopback_refusal`).

        Not a coroutine itself: it returns the one that answers, so an open
        stream does not keep a frame of this method too.
        """
        if scope["type"] == "http" and not self.checker.enabled:
            refused = loopback_refusal(scope)
            if refused is not None:
                return send_forbidden(send, refused)
        job_id = match_events(scope)
        if job_id is None:
            return super().__call__(scope, receive, send)
        if self.checker.enabled:
            token = request_token(scope)
            if not self.checker.check(token):
                return send_unauthorized(send, token)
        return serve_events(self.state.runtime, self.disconnects, job_id, scope, receive, send)


def create_app(
    settings: Settings,
    *,
    runtime: WebRuntime | None = None,
    store: JobStore | None = None,
    s3: Any = None,
    sqs: Any = None,
    consume_progress: bool = True,
    poll_s: float = 0.25,
) -> WebApp:
    """The HTTP API for ``settings``.

    With ``runtime`` the app uses it as is (its owner opens and closes it);
    otherwise the lifespan opens one with :func:`~s3flow.web.runtime.open_runtime`
    (``store``, ``s3``, ``sqs``, ``consume_progress`` and ``poll_s`` are
    passed on). With ``[web] tokens`` every ``/api`` request needs a token.
    """
    checker = TokenChecker(settings.web.tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            yield
            return
        async with open_runtime(
            settings,
            store=store,
            s3=s3,
            sqs=sqs,
            consume_progress=consume_progress,
            poll_s=poll_s,
        ) as opened:
            app.state.runtime = opened
            yield

    app = WebApp(
        title="s3flow",
        version=__version__,
        summary="Upload jobs: presigned uploads, job status and live progress (SSE).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
        default_response_class=SafeJSONResponse,
    )
    app.checker = checker
    if runtime is not None:
        app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(TokenAuthMiddleware, checker=checker)
    app.include_router(router)
    app.include_router(form_router)
    install_pages(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> SafeJSONResponse:
        """Liveness: the process answers (no token needed)."""
        return SafeJSONResponse({"status": "ok"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus text: SSE subscribers, jobs streamed, progress events consumed."""
        opened = getattr(app.state, "runtime", None)
        return Response(web_metrics(opened), media_type=PROMETHEUS_TYPE)

    return app
