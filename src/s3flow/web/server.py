"""Running the web app: bind, serve with uvicorn, stop cleanly on SIGTERM/SIGINT.

:func:`serve` checks the bind rule (no tokens: loopback only), opens the
runtime first (a missing store or queue is a clean :class:`ConfigError`, not
a traceback from inside uvicorn), binds the socket itself (so ``--port 0``
knows its port and a port in use is a plain error), and runs a
:class:`WebServer`: a ``uvicorn.Server`` that ends every SSE stream before
draining connections (they would otherwise hold shutdown open forever) and
that, after a signal, returns instead of re-raising it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, cast
from urllib.parse import unquote_plus

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from s3flow.errors import ConfigError
from s3flow.local.endpoint import connect_host
from s3flow.settings import Settings
from s3flow.web.app import create_app
from s3flow.web.auth import check_bind
from s3flow.web.runtime import WebRuntime, open_runtime

__all__ = ["ForwardedHeaders", "WebServer", "bind_socket", "serve", "web_url"]

log = logging.getLogger("s3flow.web")
#: Seconds connections get to finish after a stop, before uvicorn cancels them.
GRACEFUL_S = 10.0
#: One query parameter: its name and value, as sent (still percent-encoded).
_QUERY_PARAM = re.compile(r"(?<=[?&])(?P<name>[^=&\s]*)=(?P<value>[^&\s]*)")


def _redacted(text: str) -> str:
    """``text`` with the value of every ``token`` query parameter as ``***``, however its
    name is spelled (``%74oken`` is ``token`` to the server too)."""

    def one(m: re.Match[str]) -> str:
        if unquote_plus(m["name"]) != "token":
            return m[0]
        return f"{m['name']}=***"

    return _QUERY_PARAM.sub(one, text) if "=" in text else text


def web_url(host: str, port: int) -> str:
    """``http://host:port`` (IPv6 literals in brackets)."""
    name = host.strip("[]")
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening); ConfigError if impossible."""
    name = host.strip("[]")
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host!r}: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = (
            ": another server is using the port; choose another with --port"
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise ConfigError(f"cannot listen on {web_url(host, port)}: {exc.strerror}{hint}") from exc
    return sock


class _RedactTokens(logging.Filter):
    """Access-log lines never show a ``?token=`` (the events route accepts one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(a) if isinstance(a, str) else a for a in record.args)
        return True


_access_log = logging.getLogger("uvicorn.access")
if not any(isinstance(f, _RedactTokens) for f in _access_log.filters):
    _access_log.addFilter(_RedactTokens())


_ASGICall = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]


async def _answered(scope: Scope, receive: Receive, send: Send) -> None:
    """The app of :class:`ForwardedHeaders`' rewrite: nothing to do."""


class ForwardedHeaders:
    """uvicorn's ``X-Forwarded-For``/``-Proto`` handling, without a frame under every request.

    uvicorn wraps the app in its ``ProxyHeadersMiddleware``, a coroutine that
    awaits the app: an open event stream keeps that frame (~320 bytes) for
    its whole life. This runs the same middleware (same trusted hosts,
    ``forwarded_allow_ips``) on a no-op app, which rewrites the scope and
    finishes without waiting, then returns the app's own coroutine.
    """

    __slots__ = ("_app", "_middleware", "_rewrite")

    def __init__(self, app: ASGIApp, trusted_hosts: list[str] | str) -> None:
        self._app = app
        # uvicorn types ASGI messages more narrowly than Starlette: the same callables.
        self._rewrite: _ASGICall = cast(
            Any, ProxyHeadersMiddleware(cast(Any, _answered), trusted_hosts=trusted_hosts)
        )
        self._middleware: _ASGICall = cast(
            Any, ProxyHeadersMiddleware(cast(Any, app), trusted_hosts=trusted_hosts)
        )

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        rewrite = self._rewrite(scope, receive, send)
        try:
            rewrite.send(None)
        except StopIteration:
            return self._app(scope, receive, send)
        # A middleware that waits before calling the app (not uvicorn's so far): use it as is.
        rewrite.close()
        return self._middleware(scope, receive, send)


class WebServer(uvicorn.Server):
    """``uvicorn.Server`` for the web app.

    :meth:`stop` (any thread) or SIGTERM/SIGINT end it: the hub closes every
    SSE stream (clients reconnect elsewhere with their ``Last-Event-ID``),
    connections drain, the lifespan closes. ``on_started(server)`` is
    called once it accepts connections; :attr:`url` says where.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        app: FastAPI,
        url: str,
        on_started: Callable[[WebServer], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.app = app
        self.url = url
        self._on_started = on_started

    def stop(self) -> None:
        """Ask the server to shut down (thread-safe: uvicorn checks the flag every 0.1 s)."""
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """SIGTERM/SIGINT stop the server; unlike uvicorn's, the signal is not re-raised after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving, then call ``on_started``."""
        await super().startup(sockets=sockets)
        if self.started and self._on_started is not None:
            self._on_started(self)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """End the SSE streams first, then uvicorn's graceful shutdown."""
        runtime: WebRuntime | None = getattr(self.app.state, "runtime", None)
        if runtime is not None:
            runtime.hub.close()
        await super().shutdown(sockets=sockets)


async def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    consume_progress: bool = True,
    on_started: Callable[[WebServer], None] | None = None,
) -> None:
    """Serve the web app until stopped (signal or :meth:`WebServer.stop`).

    ``host``/``port`` default to ``[web]``. Raises :class:`ConfigError`
    before serving anything when the bind is refused or impossible, or the
    store or progress queue is missing.
    """
    host = host if host is not None else settings.web.host
    port = port if port is not None else settings.web.port
    check_bind(host, settings.web.tokens)
    async with open_runtime(settings, consume_progress=consume_progress) as runtime:
        sock = bind_socket(host, port)
        try:
            url = web_url(connect_host(host), sock.getsockname()[1])
            app = create_app(settings, runtime=runtime)
            config = uvicorn.Config(
                app,
                interface="asgi3",  # WebApp.__call__ returns its coroutine: no guessing
                lifespan="on",
                log_config=None,
                access_log=True,
                server_header=False,
                timeout_graceful_shutdown=int(GRACEFUL_S),
                proxy_headers=False,  # ForwardedHeaders does it, with the same trusted hosts
            )
            config.app = ForwardedHeaders(app, config.forwarded_allow_ips)
            server = WebServer(config, app=app, url=url, on_started=on_started)
            await server.serve(sockets=[sock])
        finally:
            sock.close()
