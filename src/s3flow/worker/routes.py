"""Looking up what routing and validation need about an object, once per object.

:class:`ObjectLookup` keeps the object's HEAD (often already taken to identify the
upload) and its tags, each fetched at most once; :func:`choose_route` fetches only
what the pipeline's :class:`~s3flow.routing.RoutingTable` needs for this event.
"""

from __future__ import annotations

from typing import Any

from s3flow.errors import LookupRefusedError, S3flowError, aws_error_code, aws_errors
from s3flow.events import ObjectEvent
from s3flow.routing import NoRoute, ObjectFacts, RouteRule, RoutingTable


class ObjectLookup:
    """The HEAD and the tags of one object, each fetched at most once."""

    def __init__(self, s3: Any, event: ObjectEvent, head: dict[str, Any] | None = None):
        self._s3 = s3
        self._event = event
        self.cached_head = head
        self.cached_tags: dict[str, str] | None = None
        self.calls = 0

    def _args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"Bucket": self._event.bucket, "Key": self._event.key}
        if self._event.version_id and self._event.version_id != "null":
            args["VersionId"] = self._event.version_id
        return args

    async def head(self) -> dict[str, Any]:
        """The object's HeadObject response (translated errors: a missing object is SKIP)."""
        if self.cached_head is None:
            self.calls += 1
            with aws_errors(f"HeadObject {self._event.uri()}"):
                self.cached_head = dict(await self._s3.head_object(**self._args()))
        return self.cached_head

    async def tags(self) -> dict[str, str]:
        """The object's tags (GetObjectTagging)."""
        if self.cached_tags is None:
            self.calls += 1
            try:
                with aws_errors(f"GetObjectTagging {self._event.uri()}"):
                    resp = await self._s3.get_object_tagging(**self._args())
            except S3flowError as exc:
                if aws_error_code(exc.__cause__ or exc) != "AccessDenied":
                    raise
                # The role's grant, not the file: a tag route would dead-letter them all.
                raise LookupRefusedError(
                    f"{exc}: routing by tags needs s3:GetObjectTagging (and "
                    "s3:GetObjectVersionTagging) on the bucket for the worker's role "
                    "(`s3flow provision --export cloudformation` grants them); retried "
                    "without counting a failure of the file"
                ) from exc
            self.cached_tags = {t["Key"]: t["Value"] for t in resp.get("TagSet") or []}
        return self.cached_tags


async def choose_route(
    table: RoutingTable, event: ObjectEvent, lookup: ObjectLookup
) -> RouteRule | NoRoute:
    """The rule ``event``'s object takes (looking up only what the table needs)."""
    needs = table.needs(event)
    head = await lookup.head() if needs.head else lookup.cached_head
    tags = await lookup.tags() if needs.tags else lookup.cached_tags
    return table.select(event, ObjectFacts.from_head(head, tags))
