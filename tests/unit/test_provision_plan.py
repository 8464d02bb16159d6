"""The provision plan's checks that need no endpoint: notifications S3 would refuse."""

from __future__ import annotations

from typing import Any

import pytest

from s3flow.errors import ConfigError
from s3flow.provisioning import (
    _check_foreign,
    check_notifications,
    notification_overlaps,
)
from s3flow.settings import Settings, load_settings

BASE = {"processor": "line-count", "output": "s3://out/r/"}


def settings(*pipelines: dict[str, Any], **top: Any) -> Settings:
    """Settings of ``pipelines`` (each: name, bucket and filters; its own queue)."""
    return load_settings(
        None,
        {**top, "pipelines": [{**BASE, "queue": f"q-{p['name']}", **p} for p in pipelines]},
    )


def test_pipelines_kept_apart_by_key_regex_alone_are_refused_naming_both() -> None:
    """Accepted by the settings (the state store trusts two key_regex), refused by the
    provision plan: both notifications would be s3:ObjectCreated:* with overlapping
    prefix and suffix, which S3 refuses. Every pair is named, with its filters."""
    s = settings(
        {"name": "orders", "bucket": "in", "prefix": "csv/", "key_regex": "orders"},
        {"name": "refunds", "bucket": "in", "prefix": "csv/", "key_regex": "refunds"},
        {"name": "all", "bucket": "in", "suffix": ".gz", "key_regex": "."},
        {"name": "elsewhere", "bucket": "other", "prefix": "csv/"},
    )
    pairs = [(p.name, q.name) for p, q in notification_overlaps(s)]
    assert pairs == [("orders", "refunds"), ("orders", "all"), ("refunds", "all")]
    with pytest.raises(ConfigError) as refused:
        check_notifications(s)
    text = str(refused.value)
    assert "'orders' and 'refunds' on bucket 'in'" in text
    assert "'refunds' and 'all' on bucket 'in'" in text and "elsewhere" not in text
    assert "'orders' prefix 'csv/' suffix '' key_regex 'orders'" in text
    assert "prefix and suffix only" in text and '"Configurations overlap"' in text
    assert "nothing was created" in text
    assert "disjoint" in text and "[[pipelines.routes]]" in text and "docs/routing.md" in text


def test_a_stateless_overlap_is_refused_too() -> None:
    """Without a state store the settings accept any overlap; S3 still refuses it."""
    s = settings(
        {"name": "a", "bucket": "in"}, {"name": "b", "bucket": "in"}, state={"url": "none"}
    )
    with pytest.raises(ConfigError, match="'a' and 'b' on bucket 'in'"):
        check_notifications(s)


def test_a_pipeline_overlapping_the_jobs_intake_is_refused() -> None:
    """[jobs] brings the jobs-intake pipeline (uploads/ of its bucket): a pipeline on all of
    that bucket would overlap its notification (here without a state store, which would
    refuse it already)."""
    # The branch given: found from git, it is the checkout's (not "main" on a branch).
    jobs = {"jobs": {"project": "acme", "branch": "main"}, "state": {"url": "none"}}
    s = settings({"name": "a", "bucket": "acme-main-uploads"}, **jobs)
    assert [p.name for p in s.pipelines] == ["a", "jobs-intake"]
    with pytest.raises(ConfigError, match="'a' and 'jobs-intake' on bucket 'acme-main-uploads'"):
        check_notifications(s)
    check_notifications(
        settings({"name": "a", "bucket": "acme-main-uploads", "prefix": "in/"}, **jobs)
    )


def test_disjoint_filters_pass() -> None:
    s = settings(
        {"name": "a", "bucket": "in", "prefix": "in/", "suffix": ".csv"},
        {"name": "b", "bucket": "in", "prefix": "in/", "suffix": ".json"},
        {"name": "c", "bucket": "in", "prefix": "logs/"},
    )
    assert notification_overlaps(s) == []
    check_notifications(s)


def _config(id_: str, events: list[str], prefix: str = "", suffix: str = "") -> dict[str, Any]:
    rules = [{"Name": n, "Value": v} for n, v in (("Prefix", prefix), ("Suffix", suffix)) if v]
    return {"Id": id_, "Events": events, "Filter": {"Key": {"FilterRules": rules}}}


@pytest.mark.parametrize(
    ("theirs", "refused"),
    [
        (_config("ops", ["s3:ObjectCreated:Put"], suffix=".csv"), True),
        (_config("ops", ["s3:ObjectCreated:*"]), True),  # no filter: overlaps every one
        (_config("ops", ["s3:ObjectRemoved:*"], prefix="in/"), False),  # another event type
        (_config("ops", ["s3:ObjectCreated:*"], prefix="logs/"), False),
        (_config("ops", ["s3:ObjectCreated:Copy"], suffix=".json"), False),
    ],
)
def test_a_configuration_s3flow_does_not_own_is_checked_by_event_and_filters(
    theirs: dict[str, Any], refused: bool
) -> None:
    ours = [_config("s3flow-p", ["s3:ObjectCreated:*"], prefix="in/", suffix=".csv")]
    if not refused:
        _check_foreign("b", ours, [theirs])
        return
    with pytest.raises(ConfigError) as info:
        _check_foreign("b", ours, [theirs])
    text = str(info.value)
    assert "bucket 'b'" in text and "'s3flow-p'" in text and "'ops'" in text
    assert "Nothing was changed on the bucket's notifications" in text
