"""Running the server: URLs, binding, and access logs that never show a token."""

from __future__ import annotations

import inspect
import logging
import socket

import pytest
from starlette.types import Message, Receive, Scope, Send

from s3flow.errors import ConfigError
from s3flow.web.server import ForwardedHeaders, bind_socket, web_url


def test_web_url_brackets_ipv6() -> None:
    assert web_url("127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert web_url("::1", 80) == "http://[::1]:80"
    assert web_url("[::1]", 80) == "http://[::1]:80"
    assert web_url("localhost", 1) == "http://localhost:1"


def test_bind_socket_binds_a_free_port_and_explains_a_busy_one() -> None:
    sock = bind_socket("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port > 0
        sock.listen()
        with pytest.raises(ConfigError, match="another server is using the port"):
            bind_socket("127.0.0.1", port)
    finally:
        sock.close()
    with pytest.raises(ConfigError, match="cannot listen on"):
        bind_socket("192.0.2.1", 0)  # TEST-NET: not an address of this machine


def test_the_access_log_never_shows_a_token(caplog: pytest.LogCaptureFixture) -> None:
    import s3flow.web.server  # noqa: F401  (installs the filter)

    access = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:5000",
            "GET",
            "/api/jobs/j1/events?last_event_id=3&token=s3cret&x=1",
            "1.1",
            200,
        )
        access.info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/api/jobs?token=t", "1.1", 401
        )
        # The server decodes parameter names: %74oken is token to it, so to the filter.
        access.info(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:5000",
            "GET",
            "/api/jobs/j1/events?%74oken=hidden1&tok%65n=hidden2&notatoken=shown",
            "1.1",
            200,
        )
    text = caplog.text
    assert "s3cret" not in text and "token=t " not in text
    assert "/api/jobs/j1/events?last_event_id=3&token=***&x=1" in text
    assert "/api/jobs?token=*** " in text
    assert "hidden" not in text
    assert "?%74oken=***&tok%65n=***&notatoken=shown" in text


def test_sockets_are_ipv6_capable_when_the_host_is() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sock = bind_socket("::1", 0)
    except ConfigError:
        pytest.skip("::1 is not configured here")
    with sock:
        assert sock.family == socket.AF_INET6


async def test_forwarded_headers_are_uvicorns_and_leave_no_frame_under_the_app() -> None:
    seen: list[tuple[object, object]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope["client"], scope["scheme"]))

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    wrapped = ForwardedHeaders(app, "127.0.0.1")

    def scope(client: str) -> Scope:
        headers = [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")]
        return {"type": "http", "client": (client, 5000), "scheme": "http", "headers": headers}

    answer = wrapped(scope("127.0.0.1"), receive, send)
    # The app's own coroutine, not a middleware's awaiting it (whose frame an open stream keeps).
    assert inspect.iscoroutine(answer) and answer.cr_code is app.__code__
    await answer
    await wrapped(scope("198.51.100.1"), receive, send)  # not a trusted proxy: as it came
    assert seen == [(("203.0.113.7", 0), "https"), (("198.51.100.1", 5000), "http")]
