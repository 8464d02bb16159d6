"""Quarantine by tagging: the object stays where it is, marked with the reason.

s3flow tags a quarantined object ``s3flow-status=quarantined`` and
``s3flow-reason=<reason>`` (and records it in the state store). Tagging was
chosen over copy + delete: nothing is moved, so nothing can be lost halfway,
no second notification is triggered, and release is just removing the tags.
Downstream readers can exclude quarantined objects by tag.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from s3flow.errors import translate_aws_error

STATUS_TAG = "s3flow-status"
REASON_TAG = "s3flow-reason"
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9 _.:/=+\-@]")
#: S3 allows at most this many tags per object.
MAX_TAGS = 10

log = logging.getLogger("s3flow.quarantine")


def tag_value(text: str) -> str:
    """Make ``text`` a valid S3 tag value (allowed characters, at most 256)."""
    return _TAG_UNSAFE.sub("_", text)[:256] or "-"


async def _tags(s3: Any, bucket: str, key: str, version_id: str | None) -> list[dict[str, str]]:
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version_id:
        kwargs["VersionId"] = version_id
    resp = await s3.get_object_tagging(**kwargs)
    return list(resp.get("TagSet") or [])


async def _put(s3: Any, bucket: str, key: str, version_id: str | None, tags: list[Any]) -> None:
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Tagging": {"TagSet": tags}}
    if version_id:
        kwargs["VersionId"] = version_id
    await s3.put_object_tagging(**kwargs)


async def tag_quarantined(
    s3: Any, bucket: str, key: str, reason: str, version_id: str | None = None
) -> int:
    """Add the quarantine tags, keeping the object's own tags; return how many were set.

    The object's tags come first: with 9 of them only the status tag fits (the reason
    is in the state store), with 10 none does (logged; the state store still records
    the quarantine). Dropping a user's tag to make room would lose their data.
    """
    try:
        tags = [
            t
            for t in await _tags(s3, bucket, key, version_id)
            if t["Key"] not in (STATUS_TAG, REASON_TAG)
        ]
        marks = [
            {"Key": STATUS_TAG, "Value": "quarantined"},
            {"Key": REASON_TAG, "Value": tag_value(reason)},
        ][: max(0, MAX_TAGS - len(tags))]
        if len(marks) < 2:
            log.warning(
                "s3://%s/%s has %d tags of its own (S3 allows %d): %s; the state store "
                "records the quarantine and its reason",
                bucket,
                key,
                len(tags),
                MAX_TAGS,
                "only s3flow-status is set" if marks else "no quarantine tag is set",
            )
        if marks:
            await _put(s3, bucket, key, version_id, tags + marks)
        return len(marks)
    except Exception as exc:
        raise translate_aws_error(exc, f"tagging s3://{bucket}/{key} as quarantined") from exc


async def untag(s3: Any, bucket: str, key: str, version_id: str | None = None) -> None:
    """Remove the quarantine tags."""
    try:
        tags = [
            t
            for t in await _tags(s3, bucket, key, version_id)
            if t["Key"] not in (STATUS_TAG, REASON_TAG)
        ]
        if tags:
            await _put(s3, bucket, key, version_id, tags)
        else:  # some endpoints reject an empty TagSet
            kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
            if version_id:
                kwargs["VersionId"] = version_id
            await s3.delete_object_tagging(**kwargs)
    except Exception as exc:
        raise translate_aws_error(exc, f"untagging s3://{bucket}/{key}") from exc


async def quarantine_tags(
    s3: Any, bucket: str, key: str, version_id: str | None = None
) -> dict[str, str]:
    """The object's quarantine tags (empty when not quarantined)."""
    try:
        return {
            t["Key"]: t["Value"]
            for t in await _tags(s3, bucket, key, version_id)
            if t["Key"] in (STATUS_TAG, REASON_TAG)
        }
    except Exception as exc:
        raise translate_aws_error(exc, f"reading tags of s3://{bucket}/{key}") from exc
