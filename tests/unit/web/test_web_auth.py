"""Tokens (hashing, constant-time checks), the middleware, and the loopback rule."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from s3flow.errors import ConfigError
from s3flow.web.auth import (
    TokenAuthMiddleware,
    TokenChecker,
    check_bind,
    generate_token,
    hash_token,
    is_loopback,
)


def test_hash_token_is_sha256_hex_with_the_prefix() -> None:
    assert hash_token("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert hash_token("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()


def test_generated_tokens_are_long_random_and_url_safe() -> None:
    tokens = {generate_token() for _ in range(20)}
    assert len(tokens) == 20
    assert all(len(t) >= 40 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)


def test_the_checker_accepts_only_configured_tokens() -> None:
    checker = TokenChecker([hash_token("one"), hash_token("two")])
    assert checker.enabled
    assert checker.check("one") and checker.check("two")
    for bad in ("three", "", None, "one ", hash_token("one"), "sha256:one"):
        assert not checker.check(bad)
    assert not TokenChecker([]).enabled
    assert not TokenChecker([]).check("anything")


@pytest.mark.parametrize("bad", ["md5:abc", "sha256:xyz", "sha256:abcd", "plain-token"])
def test_a_malformed_hash_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="web token"):
        TokenChecker([bad])


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("192.168.1.2", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("128.0.0.1", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_without_tokens_only_loopback_may_be_bound() -> None:
    check_bind("127.0.0.1", [])
    check_bind("::1", [])
    check_bind("0.0.0.0", [hash_token("t")])
    with pytest.raises(ConfigError) as info:
        check_bind("0.0.0.0", [])
    message = str(info.value)
    assert "'0.0.0.0'" in message and "loopback" in message
    assert "s3flow web hash-token" in message and "[web] tokens" in message


def _app(checker: TokenChecker) -> TokenAuthMiddleware:
    async def ok(_: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    inner = Starlette(
        routes=[
            Route("/api/config", ok),
            Route("/api/jobs/{job_id}/events", ok),
            Route("/healthz", ok),
        ]
    )
    return TokenAuthMiddleware(inner, checker)


async def test_the_middleware_asks_every_api_request_for_a_token() -> None:
    app = _app(TokenChecker([hash_token("s3cret")]))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/api/config")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in r.json()["error"]
        r = await client.get("/api/config", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "not accepted" in r.json()["error"]
        r = await client.get("/api/config", headers={"Authorization": "Basic czNjcmV0"})
        assert r.status_code == 401
        r = await client.get("/api/config", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.text == "ok"
        r = await client.get("/api/config", headers={"Authorization": "bearer  s3cret "})
        assert r.status_code == 200
        # ?token= is for EventSource, which cannot send headers: the events route only.
        assert (await client.get("/api/config?token=s3cret")).status_code == 401
        assert (await client.get("/api/jobs/j1/events?token=s3cret")).status_code == 200
        assert (await client.get("/api/jobs/j1/events?token=nope")).status_code == 401
        assert (await client.get("/api/nothing-here")).status_code == 401
        assert (await client.get("/healthz")).status_code == 200


async def test_without_tokens_the_middleware_lets_everything_through() -> None:
    transport = httpx.ASGITransport(app=_app(TokenChecker([])))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/api/config")).status_code == 200
