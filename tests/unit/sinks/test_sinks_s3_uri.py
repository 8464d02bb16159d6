"""parse_s3_uri: the strict s3://bucket/key parser of the CLIs."""

from __future__ import annotations

import pytest

from s3flow.errors import ConfigError
from s3flow.sinks.s3 import parse_s3_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/key.csv", ("bucket", "key.csv")),
        ("s3://b/deep/path/to/x.csv.gz", ("b", "deep/path/to/x.csv.gz")),
        ("s3://b/dir/", ("b", "dir/")),
        ("s3://b//double", ("b", "/double")),
    ],
)
def test_parse_s3_uri(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "missing"),
    [
        ("bucket/key.csv", "not an S3 URI"),
        ("S3://bucket/key", "not an S3 URI"),
        ("s3:/bucket/key", "not an S3 URI"),
        ("https://bucket/key", "not an S3 URI"),
        ("", "not an S3 URI"),
        ("s3://", "without a bucket"),
        ("s3:///key", "without a bucket"),
        ("s3://bucket", "without a key"),
        ("s3://bucket/", "without a key"),
    ],
)
def test_parse_s3_uri_refuses_incomplete_uris(uri: str, missing: str) -> None:
    with pytest.raises(ConfigError, match=missing) as err:
        parse_s3_uri(uri)
    assert repr(uri) in str(err.value)
    assert "expected s3://bucket/key" in str(err.value)
