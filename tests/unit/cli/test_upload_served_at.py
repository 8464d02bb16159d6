"""`s3flow upload` without --url reaches `s3flow web` where its settings serve it."""

from __future__ import annotations

import pytest

from s3flow.cli.upload import _served_at
from s3flow.settings import WebSettings


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8080"),  # a wildcard bind is reached on loopback
        ("::", "http://[::1]:8080"),
        ("127.0.0.1", "http://127.0.0.1:8080"),
        ("::1", "http://[::1]:8080"),
        ("web.internal", "http://web.internal:8080"),
    ],
)
def test_the_api_is_reached_on_a_host_that_can_be_connected_to(host: str, url: str) -> None:
    assert _served_at(WebSettings(host=host, port=8080)) == url


def test_the_configured_url_wins() -> None:
    web = WebSettings(host="0.0.0.0", port=8080, url="https://jobs.example.com")
    assert _served_at(web) == "https://jobs.example.com"
