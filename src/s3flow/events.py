"""Envelopes -> ObjectEvents.

Understands the bodies S3 notifications arrive in:

* a direct S3 notification (``{"Records": [...]}``, one or several records);
* SNS-wrapped (``{"Type": "Notification", "Message": "<S3 notification>"}``);
* EventBridge (``{"detail-type": "Object Created", "source": "aws.s3", ...}``);
* ``s3:TestEvent`` (sent when a notification is configured: acknowledged, ignored).

The keys of S3 notification records are URL-decoded with
:func:`urllib.parse.unquote_plus`: S3 writes a space as ``+`` and a literal ``+`` as
``%2B``; some emulators (MinIO) also encode ``/``. EventBridge events carry the key
as it is (a real one shows ``raw/2023-08-08T14:03:40.zip``, where a notification
record has ``%3A``): decoding it would turn ``c++`` into ``c  ``. Event names
written ``s3:ObjectCreated:Put`` (MinIO, Ceph) are read as ``ObjectCreated:Put``.
Anything else raises :class:`~s3flow.errors.EnvelopeError` (a poison message).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from s3flow.errors import EnvelopeError

_MAX_BODY = 1024 * 1024  # SQS bodies are at most 256 KiB (1 MiB with the new limit)


def is_folder_marker(key: str, size: int | None) -> bool:
    """Whether an object is a folder marker (0 bytes, its key ending in ``/``): the
    worker skips it and backfill leaves it out."""
    return key.endswith("/") and size == 0


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    """One object-level event taken from a notification."""

    bucket: str
    key: str
    event_name: str = "ObjectCreated:Put"
    size: int | None = None
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    event_time: str | None = None
    region: str | None = None
    source: str = "s3"
    #: The eTag every read of the object is conditional on (``If-Match``), for an event
    #: that names its upload by eTag (:func:`names_upload_by_etag`): its identity is
    #: ``<eTag>@<sequencer>``, so the bytes it is processed with must be that upload's.
    #: A read refused (412) raises :class:`~s3flow.errors.ObjectChangedError`: the object
    #: was overwritten since, and the newer upload's own event processes it. None: reads
    #: are not conditional (a versionId names the upload; without a sequencer the worker
    #: identifies the object as it is).
    if_match: str | None = None
    #: The notification record this event came from (S3/SNS bodies), so one record
    #: of a multi-record message can be re-sent or dead-lettered on its own.
    raw: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def is_created(self) -> bool:
        """True for ObjectCreated:* events (the ones processors act on)."""
        return self.event_name.startswith("ObjectCreated") or self.event_name == "Object Created"

    @property
    def is_folder_marker(self) -> bool:
        """A folder made in the S3 console: 0 bytes, a key ending in ``/`` (no file)."""
        return is_folder_marker(self.key, self.size)

    @property
    def is_removed(self) -> bool:
        """True for ObjectRemoved:* / EventBridge 'Object Deleted' events."""
        return self.event_name.startswith("ObjectRemoved") or self.event_name == "Object Deleted"

    @property
    def event_version(self) -> str | None:
        """This event's identity within its key, when the event alone tells it.

        The versionId in a versioned bucket; else ``<eTag>@<sequencer>`` (S3 gives
        every PUT of a key a new, increasing sequencer); else None: the caller
        reads the object's (eTag, LastModified) instead (:func:`content_version`).
        """
        if self.version_id and self.version_id != "null":
            return self.version_id
        if self.sequencer:
            return f"{self.etag or ''}@{self.sequencer}"
        return None

    def uri(self) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"

    def record_body(self) -> str:
        """A direct S3 notification body holding only this event's record."""
        if self.raw is None:
            raise ValueError(f"event for {self.uri()} has no raw record to re-send")
        return record_body(self.raw)


def names_upload_by_etag(etag: str | None, version_id: str | None, sequencer: str | None) -> bool:
    """Whether an event with these fields is identified as ``<eTag>@<sequencer>`` and its
    eTag is that upload's: a sequencer and an eTag, no versionId (``"null"`` names none)."""
    return bool(sequencer and etag) and (not version_id or version_id == "null")


def record_body(raw: Any) -> str:
    """A direct S3 notification body holding only the record ``raw``."""
    return json.dumps({"Records": [raw]}, separators=(",", ":"))


def content_part(version: str) -> str:
    """The versionId or eTag of a state-store identity (without ``@sequencer`` / ``@t...``).

    What the pipelines' own bookkeeping (manifests, checkpoints) keys files by.
    """
    return version.split("@", 1)[0]


def content_version(etag: str | None, last_modified: datetime | float | int) -> str:
    """An upload's identity when events carry neither versionId nor sequencer.

    ``<eTag>@<LastModified in whole unix seconds>``: a new upload of the same
    bytes gets a new LastModified. Whole seconds because HeadObject's
    Last-Modified header has no finer resolution than ListObjects gives.
    """
    if isinstance(last_modified, datetime):
        ts = int(last_modified.timestamp())
    else:
        ts = int(last_modified)
    return f"{(etag or '').strip(chr(34))}@t{ts}"


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record of a notification that is not an S3 object event, beside others that are:
    it settles alone (dead-lettered with ``error``), the others are processed."""

    index: int
    raw: Any
    error: EnvelopeError

    def record_body(self) -> str:
        """A notification body holding only this record."""
        return record_body(self.raw)


@dataclass(slots=True)
class Envelope:
    """What one SQS message contained."""

    events: list[ObjectEvent] = field(default_factory=list)
    test_event: bool = False
    kind: str = "s3"  # s3 | sns | eventbridge | test
    #: Records that are not object events, in a message with some that are.
    bad_records: list[BadRecord] = field(default_factory=list)


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise EnvelopeError(f"{what} is missing or not a non-empty string")
    return value


def _opt_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise EnvelopeError(f"expected a string, got {type(value).__name__}")


def _opt_size(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise EnvelopeError("object size is a boolean")
    if isinstance(value, int):
        if value < 0:
            raise EnvelopeError("object size is negative")
        return value
    if isinstance(value, str) and value.isascii() and value.isdecimal():
        return int(value)
    raise EnvelopeError(f"object size is not an integer: {value!r}"[:200])


def _decode_key(raw: Any, what: str) -> str:
    key = unquote_plus(_str(raw, what))
    if not key:
        raise EnvelopeError(f"{what} is empty after URL-decoding")
    return key


def _event_name(raw: Any, what: str) -> str:
    """The event name without the ``s3:`` prefix some S3 servers write (MinIO, Ceph:
    ``s3:ObjectCreated:Put``; AWS: ``ObjectCreated:Put``)."""
    name = _str(raw, what)
    return name[3:] if name.startswith("s3:") else name


@dataclass(frozen=True, slots=True)
class _Format:
    """Where one notification format keeps an event's fields: the event-level ones in
    its top document (an S3 record, an EventBridge event), the object's in its
    ``object`` section."""

    source: str
    event_name: str
    event_time: str
    region: str
    etag: str
    version_id: str
    #: Whether the key is URL-encoded (S3 notification records) or as it is (EventBridge).
    url_encoded_key: bool

    def event(
        self,
        top: dict[str, Any],
        bucket: dict[str, Any],
        obj: dict[str, Any],
        top_at: str,
        at: str,
        raw: dict[str, Any] | None = None,
    ) -> ObjectEvent:
        """The event of ``top`` with its ``bucket`` and ``obj`` sections. Error messages
        name a bad field by ``top_at`` (what prefixes ``top``'s keys) or ``at`` (the path
        of the sections)."""
        etag = _opt_str(obj.get(self.etag))
        etag = etag.strip('"') if etag else None
        version_id = _opt_str(obj.get(self.version_id))
        sequencer = _opt_str(obj.get("sequencer"))
        key_at = f"{at}.object.key"
        return ObjectEvent(
            bucket=_str(bucket.get("name"), f"{at}.bucket.name"),
            key=(
                _decode_key(obj.get("key"), key_at)
                if self.url_encoded_key
                else _str(obj.get("key"), key_at)
            ),
            event_name=_event_name(top.get(self.event_name), f"{top_at}{self.event_name}"),
            size=_opt_size(obj.get("size")),
            etag=etag or None,
            version_id=version_id,
            sequencer=sequencer,
            event_time=_opt_str(top.get(self.event_time)),
            region=_opt_str(top.get(self.region)),
            source=self.source,
            if_match=etag if names_upload_by_etag(etag, version_id, sequencer) else None,
            raw=raw,
        )


_S3_RECORD = _Format("s3", "eventName", "eventTime", "awsRegion", "eTag", "versionId", True)
_EVENTBRIDGE = _Format("eventbridge", "detail-type", "time", "region", "etag", "version-id", False)


def _record(rec: Any, index: int) -> ObjectEvent:
    if not isinstance(rec, dict):
        raise EnvelopeError(f"Records[{index}] is not an object")
    source = rec.get("eventSource")
    if (
        source is not None
        and source != "aws:s3"
        and not (isinstance(source, str) and source.endswith(":s3"))
    ):
        raise EnvelopeError(f"Records[{index}].eventSource is {source!r}, not aws:s3"[:200])
    s3 = rec.get("s3")
    if not isinstance(s3, dict):
        raise EnvelopeError(f"Records[{index}] has no 's3' section")
    bucket = s3.get("bucket")
    obj = s3.get("object")
    if not isinstance(bucket, dict) or not isinstance(obj, dict):
        raise EnvelopeError(f"Records[{index}].s3 lacks 'bucket' or 'object'")
    return _S3_RECORD.event(rec, bucket, obj, f"Records[{index}].", f"Records[{index}].s3", raw=rec)


def _s3_notification(doc: dict[str, Any], kind: str) -> Envelope:
    if doc.get("Event") == "s3:TestEvent":
        return Envelope(test_event=True, kind="test")
    records = doc.get("Records")
    if not isinstance(records, list) or not records:
        raise EnvelopeError("'Records' is missing, empty or not a list")
    events: list[ObjectEvent] = []
    bad: list[BadRecord] = []
    for i, rec in enumerate(records):
        try:
            events.append(_record(rec, i))
        except EnvelopeError as exc:
            bad.append(BadRecord(i, rec, exc))
    if not events:
        raise bad[0].error  # nothing in it is an object event: the message is bad
    # Each bad record is dead-lettered alone, as Records[0] of its own body: its reason
    # names it so, and says where it was in the message it came in.
    bad = [BadRecord(b.index, b.raw, _alone_error(b)) for b in bad]
    return Envelope(events=events, kind=kind, bad_records=bad)


def _alone_error(bad: BadRecord) -> EnvelopeError:
    """``bad``'s error as its body alone (:meth:`BadRecord.record_body`) has it: the
    record is ``Records[0]`` there (and ``Records[i]`` of the message it came in)."""
    if bad.index == 0:
        return bad.error
    try:
        _record(bad.raw, 0)
    except EnvelopeError as alone:
        return EnvelopeError(f"{alone} (Records[{bad.index}] of the message it came in)")
    return bad.error  # not reached: the same record fails the same way


def _eventbridge(doc: dict[str, Any]) -> Envelope:
    detail = doc.get("detail")
    if not isinstance(detail, dict):
        raise EnvelopeError("EventBridge event has no 'detail' object")
    bucket = detail.get("bucket")
    obj = detail.get("object")
    if not isinstance(bucket, dict) or not isinstance(obj, dict):
        raise EnvelopeError("EventBridge detail lacks 'bucket' or 'object'")
    event = _EVENTBRIDGE.event(doc, bucket, obj, "", "detail")
    return Envelope(events=[event], kind="eventbridge")


def parse_document(doc: Any, *, _depth: int = 0) -> Envelope:
    """Parse an already-decoded JSON document. Raises EnvelopeError."""
    if not isinstance(doc, dict):
        raise EnvelopeError(f"body is a JSON {type(doc).__name__}, not an object")
    if doc.get("Type") == "Notification" and "Message" in doc:
        if _depth > 0:
            raise EnvelopeError("SNS notification nested in another notification")
        message = doc.get("Message")
        if not isinstance(message, str):
            raise EnvelopeError("SNS notification 'Message' is not a string")
        try:
            inner = json.loads(message)
        except (ValueError, RecursionError) as exc:
            raise EnvelopeError(f"SNS 'Message' is not JSON: {exc}"[:300]) from exc
        env = parse_document(inner, _depth=_depth + 1)
        if env.kind == "s3":
            env.kind = "sns"
        return env
    if doc.get("source") == "aws.s3" and "detail-type" in doc:
        return _eventbridge(doc)
    if "Records" in doc or doc.get("Event") == "s3:TestEvent":
        return _s3_notification(doc, "s3")
    keys = ", ".join(sorted(str(k) for k in doc)[:8])
    raise EnvelopeError(
        "not an S3 notification, SNS notification or EventBridge event "
        f"(top-level keys: {keys or 'none'})"[:300]
    )


def parse_body(body: str | bytes) -> Envelope:
    """Parse an SQS message body into an :class:`Envelope`.

    Returns the object events (possibly several), or a test event. Raises
    :class:`~s3flow.errors.EnvelopeError` for anything that is not a known
    envelope; never any other exception.
    """
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EnvelopeError("body is not UTF-8") from exc
    if len(body) > _MAX_BODY:
        raise EnvelopeError(f"body is {len(body)} characters, larger than any S3 notification")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(f"body is not JSON: {exc}"[:300]) from exc
    try:
        return parse_document(doc)
    except EnvelopeError:
        raise
    except RecursionError as exc:  # pathological nesting
        raise EnvelopeError("body is nested too deeply") from exc
