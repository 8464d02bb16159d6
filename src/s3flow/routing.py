"""Filters that decide whether a pipeline acts on an object event."""

from __future__ import annotations

import re
from dataclasses import dataclass

from s3flow.events import ObjectEvent
from s3flow.settings import PipelineSettings


@dataclass(frozen=True)
class Route:
    """Bucket + key filters of one pipeline (prefix, suffix, regex)."""

    bucket: str
    prefix: str = ""
    suffix: str = ""
    key_regex: re.Pattern[str] | None = None

    @classmethod
    def from_settings(cls, p: PipelineSettings) -> Route:
        """Build the route of a pipeline."""
        return cls(
            bucket=p.bucket,
            prefix=p.prefix,
            suffix=p.suffix,
            key_regex=re.compile(p.key_regex) if p.key_regex else None,
        )

    def rejects(self, event: ObjectEvent) -> str | None:
        """Why this route does not take ``event``, or None when it does."""
        if event.bucket != self.bucket:
            return f"bucket {event.bucket!r} is not {self.bucket!r}"
        if self.prefix and not event.key.startswith(self.prefix):
            return f"key does not start with {self.prefix!r}"
        if self.suffix and not event.key.endswith(self.suffix):
            return f"key does not end with {self.suffix!r}"
        if self.key_regex is not None and not self.key_regex.search(event.key):
            return f"key does not match {self.key_regex.pattern!r}"
        return None
