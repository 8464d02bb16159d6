"""Which events a pipeline takes, and where each object goes.

:class:`Route` is a pipeline's filter (bucket, prefix, suffix, key regex): an event it
rejects is skipped. :class:`RoutingTable` holds the pipeline's ``[[pipelines.routes]]``
rules (metadata, key glob or regex, size range, content type, tags -> processor +
executor + options), tried in order, first match wins; without routes it holds one
default rule, the pipeline's own processor. Pure: the worker looks up what a table
:meth:`~RoutingTable.needs` (a HEAD, the tags) once per object and passes it in.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from s3flow.events import ObjectEvent
from s3flow.settings import PipelineSettings
from s3flow.settings.pipelines import metadata_name


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


# --- routing rules: which processor and executor an object goes to ------------------------


def _glob_match(pattern: str, value: str) -> bool:
    """``value`` equals ``pattern``, or matches it as a glob when it has * ? or [...]."""
    if not any(c in pattern for c in "*?["):
        return value == pattern
    return fnmatch.fnmatchcase(value, pattern)


def _media_type(content_type: str) -> str:
    """``Text/Plain; charset=utf-8`` -> ``text/plain``."""
    return content_type.split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class ObjectFacts:
    """What routing may need to know about an object beyond its event.

    ``None`` fields were not looked up (or are unknown): the object's HEAD gives size,
    content type and metadata; tags need a GetObjectTagging.
    """

    size: int | None = None
    content_type: str | None = None
    metadata: Mapping[str, str] | None = None
    tags: Mapping[str, str] | None = None

    @classmethod
    def from_head(
        cls, head: Mapping[str, Any] | None, tags: Mapping[str, str] | None = None
    ) -> ObjectFacts:
        """Facts from a HeadObject response (and the tags, when fetched)."""
        if head is None:
            return cls(tags=tags)
        meta = {metadata_name(str(k)): str(v) for k, v in (head.get("Metadata") or {}).items()}
        length = head.get("ContentLength")
        return cls(
            size=int(length) if length is not None else None,
            content_type=head.get("ContentType"),
            metadata=meta,
            tags=tags,
        )


@dataclass(frozen=True)
class Needs:
    """Which lookups deciding a route takes: a HEAD, a GetObjectTagging."""

    head: bool = False
    tags: bool = False


@dataclass(frozen=True)
class RouteRule:
    """One rule: match keys (all must hold) and where a matching object goes.

    ``executor`` is resolved (never None): the route's, else the pipeline's, else the
    processor's default (pool for CPU-bound processors, else inline).
    """

    name: str
    processor: str
    executor: str
    options: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    key_glob: str | None = None
    key_regex: re.Pattern[str] | None = None
    min_bytes: int | None = None
    max_bytes: int | None = None
    content_type: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def needs(self, event: ObjectEvent) -> Needs:
        """The lookups this rule needs for ``event`` (size comes from the event when known)."""
        sized = self.min_bytes is not None or self.max_bytes is not None
        return Needs(
            head=bool(self.metadata or self.content_type or (sized and event.size is None)),
            tags=bool(self.tags),
        )

    def key_mismatch(self, event: ObjectEvent) -> str | None:
        """Why the key (and a known size) rule this out, without any lookup; None if not."""
        if self.key_glob is not None and not fnmatch.fnmatchcase(event.key, self.key_glob):
            return f"key does not match glob {self.key_glob!r}"
        if self.key_regex is not None and not self.key_regex.search(event.key):
            return f"key does not match {self.key_regex.pattern!r}"
        if event.size is not None:
            return self._size_mismatch(event.size)
        return None

    def _size_mismatch(self, size: int) -> str | None:
        if self.min_bytes is not None and size < self.min_bytes:
            return f"size {size} < min_bytes {self.min_bytes}"
        if self.max_bytes is not None and size > self.max_bytes:
            return f"size {size} > max_bytes {self.max_bytes}"
        return None

    def mismatch(self, event: ObjectEvent, facts: ObjectFacts) -> str | None:
        """Why this rule does not take the object, or None when it does.

        Raises :class:`ValueError` when a fact it needs was not looked up (a caller bug:
        look up what :meth:`needs` says first).
        """
        reason = self.key_mismatch(event)
        if reason is not None:
            return reason
        needs = self.needs(event)
        if needs.head and facts.metadata is None:
            raise ValueError(f"route {self.name!r} needs the object's HEAD")
        if needs.tags and facts.tags is None:
            raise ValueError(f"route {self.name!r} needs the object's tags")
        if event.size is None and (self.min_bytes is not None or self.max_bytes is not None):
            if facts.size is None:
                return "size unknown"
            reason = self._size_mismatch(facts.size)
            if reason is not None:
                return reason
        if self.content_type is not None:
            got = _media_type(facts.content_type or "")
            if not fnmatch.fnmatchcase(got, _media_type(self.content_type)):
                return f"content type {got or 'none'!r} does not match {self.content_type!r}"
        for name, want in self.metadata.items():
            got_meta = (facts.metadata or {}).get(metadata_name(name))
            if got_meta is None:
                return f"no metadata {metadata_name(name)!r}"
            if not _glob_match(want, got_meta):
                return f"metadata {metadata_name(name)!r} is {got_meta!r}, not {want!r}"
        for name, want in self.tags.items():
            got_tag = (facts.tags or {}).get(name)
            if got_tag is None:
                return f"no tag {name!r}"
            if not _glob_match(want, got_tag):
                return f"tag {name!r} is {got_tag!r}, not {want!r}"
        return None

    def describe(self) -> str:
        """``route 'heavy': processor text-to-pdf on batch`` (for histories and logs)."""
        return f"route {self.name!r}: processor {self.processor} on {self.executor}"


@dataclass(frozen=True)
class NoRoute:
    """No rule takes the object: ``reason`` lists why each rule did not."""

    reason: str


@dataclass(frozen=True)
class RoutingTable:
    """A pipeline's routing rules, tried in order; the first match wins."""

    rules: tuple[RouteRule, ...]

    @classmethod
    def from_settings(
        cls,
        p: PipelineSettings,
        default_executor: Callable[[str], str] = lambda processor: "inline",
    ) -> RoutingTable:
        """The rules of pipeline ``p`` (one default rule when it has no routes).

        ``default_executor(processor)`` gives a processor's executor when neither the
        route nor the pipeline sets one (the registry knows which processors are CPU-bound).
        """

        def executor(route_executor: str | None, processor: str) -> str:
            return route_executor or p.executor or default_executor(processor)

        if not p.routes:
            return cls(
                (
                    RouteRule(
                        name="default",
                        processor=p.processor,
                        executor=executor(None, p.processor),
                        options=dict(p.options),
                    ),
                )
            )
        rules = []
        for i, r in enumerate(p.routes):
            processor, options = p.route_run(i)
            rules.append(
                RouteRule(
                    name=p.route_name(i),
                    processor=processor,
                    executor=executor(r.executor, processor),
                    options=options,
                    metadata=dict(r.metadata),
                    key_glob=r.key_glob,
                    key_regex=re.compile(r.key_regex) if r.key_regex else None,
                    min_bytes=r.min_bytes,
                    max_bytes=r.max_bytes,
                    content_type=r.content_type,
                    tags=dict(r.tags),
                )
            )
        return cls(tuple(rules))

    def needs(self, event: ObjectEvent) -> Needs:
        """The lookups deciding ``event``'s route takes.

        Rules are walked in order: one ruled out by the key alone needs nothing; the walk
        stops at the first rule that needs no lookup and takes the key (it wins unless an
        earlier rule does).
        """
        head = tags = False
        for rule in self.rules:
            if rule.key_mismatch(event) is not None:
                continue
            n = rule.needs(event)
            head, tags = head or n.head, tags or n.tags
            if not (n.head or n.tags):
                break
        return Needs(head=head, tags=tags)

    def select(self, event: ObjectEvent, facts: ObjectFacts) -> RouteRule | NoRoute:
        """The first rule that takes the object, or why none does."""
        reasons = []
        for rule in self.rules:
            reason = rule.mismatch(event, facts)
            if reason is None:
                return rule
            reasons.append(f"{rule.name}: {reason}")
        return NoRoute("no route matches (" + "; ".join(reasons) + ")")

    def rule(self, name: str) -> RouteRule | None:
        """The rule called ``name``."""
        return next((r for r in self.rules if r.name == name), None)
