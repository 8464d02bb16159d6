"""`s3flow run`'s object: from s3://bucket/key or $SOURCE_BUCKET + $OBJECT_KEY, the bucket
checked like a configured one."""

from __future__ import annotations

import pytest

from s3flow.cli.run import _source
from s3flow.errors import ConfigError


def test_an_s3_uri_and_the_environment_name_the_object(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _source("s3://in-bucket/a/b.txt") == ("in-bucket", "a/b.txt")
    monkeypatch.setenv("SOURCE_BUCKET", "in-bucket")
    monkeypatch.setenv("OBJECT_KEY", "a/b.txt")
    assert _source(None) == ("in-bucket", "a/b.txt")


def test_a_url_in_source_bucket_says_to_write_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_BUCKET", "s3://in-bucket/")
    monkeypatch.setenv("OBJECT_KEY", "a.txt")
    with pytest.raises(ConfigError) as info:
        _source(None)
    assert str(info.value) == (
        "in $SOURCE_BUCKET: 's3://in-bucket/' is not a bucket name: write the name alone, "
        "'in-bucket'"
    )


def test_a_bucket_no_store_takes_is_refused_in_a_uri() -> None:
    with pytest.raises(ConfigError, match=r"in 's3://my bucket/k': 'my bucket' is not a bucket"):
        _source("s3://my bucket/k")
