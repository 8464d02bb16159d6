"""Per-pipeline validation rules applied before an object is processed."""

from __future__ import annotations

import re

from s3flow.settings import ValidationSettings


def validate(
    rules: ValidationSettings, key: str, size: int | None, content_type: str | None
) -> str | None:
    """Return why the object fails ``rules`` (a sentence for a person), or None."""
    if size is not None:
        if size < rules.min_bytes:
            return f"size {size} bytes is below the minimum of {rules.min_bytes} bytes"
        if rules.max_bytes is not None and size > rules.max_bytes:
            return f"size {size} bytes is above the maximum of {rules.max_bytes} bytes"
    if rules.suffixes and not key.endswith(tuple(rules.suffixes)):
        return f"key suffix not allowed (allowed: {', '.join(rules.suffixes)})"
    if rules.content_types:
        base = (content_type or "").split(";", 1)[0].strip().lower()
        allowed = [c.lower() for c in rules.content_types]
        if base not in allowed:
            got = content_type or "unknown"
            return f"content type {got!r} not allowed (allowed: {', '.join(allowed)})"
    if rules.key_pattern and not re.search(rules.key_pattern, key):
        return f"key does not match the required pattern {rules.key_pattern!r}"
    return None
