"""routing.Route: bucket, prefix, suffix and regex filters."""

from __future__ import annotations

import re

import pytest

from s3flow.events import ObjectEvent
from s3flow.routing import Route
from s3flow.settings import PipelineSettings


def ev(key: str, bucket: str = "incoming") -> ObjectEvent:
    return ObjectEvent(bucket=bucket, key=key)


def test_bare_route_takes_every_key_of_its_bucket() -> None:
    route = Route(bucket="incoming")
    assert route.rejects(ev("anything")) is None
    assert route.rejects(ev("a/b/c.gz")) is None


def test_other_bucket_is_rejected() -> None:
    reason = Route(bucket="incoming").rejects(ev("logs/a.txt", bucket="elsewhere"))
    assert reason is not None
    assert "'elsewhere'" in reason and "'incoming'" in reason


@pytest.mark.parametrize(
    ("key", "taken"),
    [("logs/a.txt", True), ("logs/", True), ("log/a.txt", False), ("x/logs/a.txt", False)],
)
def test_prefix(key: str, taken: bool) -> None:
    reason = Route(bucket="incoming", prefix="logs/").rejects(ev(key))
    assert (reason is None) is taken
    if not taken:
        assert reason is not None and "'logs/'" in reason


@pytest.mark.parametrize(
    ("key", "taken"), [("a.json", True), ("x/.json", True), ("a.json.gz", False), ("json", False)]
)
def test_suffix(key: str, taken: bool) -> None:
    reason = Route(bucket="incoming", suffix=".json").rejects(ev(key))
    assert (reason is None) is taken
    if not taken:
        assert reason is not None and "'.json'" in reason


@pytest.mark.parametrize(
    ("key", "taken"),
    [("2024/05/01/a.csv", True), ("in/2024/05/01/a.csv", True), ("2024-05-01.csv", False)],
)
def test_regex_uses_search(key: str, taken: bool) -> None:
    route = Route(bucket="incoming", key_regex=re.compile(r"\d{4}/\d{2}/\d{2}/"))
    reason = route.rejects(ev(key))
    assert (reason is None) is taken
    if not taken:
        assert reason is not None and "does not match" in reason


def test_all_filters_must_pass() -> None:
    route = Route(
        bucket="incoming", prefix="logs/", suffix=".gz", key_regex=re.compile(r"/app-\d+/")
    )
    assert route.rejects(ev("logs/app-1/x.gz")) is None
    assert route.rejects(ev("logs/app-1/x.txt")) is not None
    assert route.rejects(ev("other/app-1/x.gz")) is not None
    assert route.rejects(ev("logs/web-1/x.gz")) is not None
    assert route.rejects(ev("logs/app-1/x.gz", bucket="b2")) is not None


def test_from_settings() -> None:
    p = PipelineSettings(
        name="p",
        bucket="incoming",
        prefix="logs/",
        suffix=".gz",
        key_regex=r"^logs/\d+/",
        queue="q",
        output="s3://out/",
    )
    route = Route.from_settings(p)
    assert route.bucket == "incoming"
    assert route.prefix == "logs/" and route.suffix == ".gz"
    assert route.key_regex is not None and route.key_regex.pattern == r"^logs/\d+/"
    assert route.rejects(ev("logs/12/a.gz")) is None
    assert route.rejects(ev("logs/ab/a.gz")) is not None


def test_from_settings_without_regex() -> None:
    p = PipelineSettings(name="p", bucket="b", queue="q", output="/tmp/out")
    route = Route.from_settings(p)
    assert route.key_regex is None
    assert route.rejects(ev("x", bucket="b")) is None
