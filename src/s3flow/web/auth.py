"""API tokens: hashing, checking, and the rule that an open API stays on loopback.

``[web] tokens`` holds ``sha256:<hex>`` hashes, never tokens. With tokens,
every ``/api`` request needs ``Authorization: Bearer <token>``; the events
route also takes ``?token=`` because a browser's EventSource cannot send
headers. A wrong or missing token is a 401 with ``WWW-Authenticate: Bearer``
and a JSON ``{"error": ...}``. Without tokens the server must not listen
beyond loopback (:func:`check_bind`), and it answers only requests addressed to a
loopback name from a loopback page (:func:`loopback_refusal`): a web page elsewhere
cannot reach it by DNS rebinding, nor post to it from the user's browser.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from s3flow.errors import ConfigError

__all__ = [
    "EVENTS_PATH",
    "TokenAuthMiddleware",
    "TokenChecker",
    "check_bind",
    "generate_token",
    "hash_token",
    "is_loopback",
    "loopback_refusal",
    "request_token",
    "send_error",
    "send_forbidden",
    "send_unauthorized",
]

_PREFIX = "sha256:"
#: The path of a job's event stream: the one route that also accepts ``?token=``
#: (EventSource sends no headers); ``job_id`` is one path segment.
EVENTS_PATH = re.compile(r"^/api/jobs/(?P<job_id>[^/]+)/events/?$")


def hash_token(token: str) -> str:
    """``sha256:<hex>`` of ``token``: what ``[web] tokens`` stores."""
    return _PREFIX + hashlib.sha256(token.encode()).hexdigest()


def generate_token() -> str:
    """A new random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


class TokenChecker:
    """Checks presented tokens against ``sha256:<hex>`` hashes in constant time."""

    def __init__(self, hashes: Sequence[str]) -> None:
        digests = []
        for h in hashes:
            if not h.startswith(_PREFIX):
                raise ConfigError(f"web token {h[:12]!r}…: expected 'sha256:<64 hex digits>'")
            try:
                digest = bytes.fromhex(h[len(_PREFIX) :])
            except ValueError as exc:
                raise ConfigError(f"web token {h[:12]!r}…: not hex after 'sha256:'") from exc
            if len(digest) != hashlib.sha256().digest_size:
                raise ConfigError(f"web token {h[:12]!r}…: a SHA-256 is 64 hex digits")
            digests.append(digest)
        self._digests = tuple(digests)

    @property
    def enabled(self) -> bool:
        """True when any token is configured (auth is required)."""
        return bool(self._digests)

    def check(self, token: str | None) -> bool:
        """True if ``token`` hashes to one of the configured hashes.

        Every hash is compared (``hmac.compare_digest``), so the time taken
        does not say which one matched or how much of it.
        """
        if not token:
            return False
        digest = hashlib.sha256(token.encode()).digest()
        ok = False
        for expected in self._digests:
            ok |= hmac.compare_digest(digest, expected)
        return ok


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (also written ``[::1]``)."""
    name = host.strip().strip("[]").lower()
    if name in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_bind(host: str, tokens: Sequence[str]) -> None:
    """Refuse to serve an API without tokens on anything but loopback (ConfigError says why)."""
    if tokens or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to listen on {host!r} without API tokens: anyone who can reach it could "
        "upload files and read every job. Either listen on loopback (--host 127.0.0.1) or "
        "configure tokens: run `s3flow web hash-token --generate`, put the hash in "
        '[web] tokens = ["sha256:…"] and give the token to clients '
        "(Authorization: Bearer <token>)"
    )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _host_name(authority: str) -> str:
    """The host of ``host[:port]`` (``[::1]:8000`` → ``::1``)."""
    try:
        return urlsplit(f"//{authority}").hostname or ""
    except ValueError:
        return ""


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def loopback_refusal(scope: Scope) -> str | None:
    """Why a request to a server without tokens is refused (None: it is served).

    Such a server listens on loopback only, yet a browser on the same machine can
    still be made to reach it: a page whose name resolves to 127.0.0.1 (DNS rebinding)
    sends its own name as ``Host``, and a page elsewhere may POST to it (a form or a
    ``text/plain`` fetch needs no CORS preflight) with its own ``Origin``. So the
    ``Host`` must be a loopback name, and a state-changing request that carries an
    ``Origin`` must come from a loopback page.
    """
    host = _header(scope, b"host")
    if host is not None and not is_loopback(_host_name(host)):
        return (
            f"this server has no API tokens, so it answers only requests to a loopback "
            f"name (localhost, 127.0.0.1, [::1]), not to {host!r}; to serve it under "
            "another name, configure [web] tokens (`s3flow web hash-token --generate`)"
        )
    origin = _header(scope, b"origin")
    changes = scope.get("method", "GET") not in _SAFE_METHODS
    if changes and origin is not None and not is_loopback(_host_name(origin.partition("://")[2])):
        return (
            f"this server has no API tokens, so it takes changes only from its own "
            f"pages on a loopback name, not from {origin!r}; configure [web] tokens "
            "to take requests from other pages"
        )
    return None


async def send_forbidden(send: Send, message: str) -> None:
    """Answer 403 with a JSON ``{"error": message}``."""
    await send_error(send, 403, message)


async def send_error(
    send: Send, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Answer ``status`` with a JSON ``{"error": message}`` (and ``headers``)."""
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer":
                return credentials.strip() or None
            return None
    return None


def _query_token(scope: Scope) -> str | None:
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "token":
            return value or None
    return None


def _is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def request_token(scope: Scope) -> str | None:
    """The token a request presents: the Bearer header, or ``?token=`` on the events route."""
    token = _bearer(scope)
    if token is None and EVENTS_PATH.match(scope["path"]):
        token = _query_token(scope)
    return token


async def send_unauthorized(send: Send, token: str | None) -> None:
    """Answer 401 with ``WWW-Authenticate: Bearer`` and an error saying what to send."""
    if token is None:
        message = (
            "this API needs a token: send the header 'Authorization: Bearer <token>'"
            " (the events stream also takes ?token=<token>)"
        )
    else:
        message = "the API token was not accepted: check the token you were given"
    await send_error(send, 401, message, [(b"www-authenticate", b'Bearer realm="s3flow"')])


class TokenAuthMiddleware:
    """ASGI middleware: with tokens configured, every ``/api`` request must present one.

    Runs before routing and validation, so an unauthenticated client learns
    nothing about the API but that it needs a token.
    """

    def __init__(self, app: ASGIApp, checker: TokenChecker) -> None:
        self.app = app
        self.checker = checker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass authorised (and non-API) requests on; answer 401 to the rest."""
        if scope["type"] != "http" or not self.checker.enabled or not _is_api(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = request_token(scope)
        if self.checker.check(token):
            await self.app(scope, receive, send)
            return
        await send_unauthorized(send, token)
