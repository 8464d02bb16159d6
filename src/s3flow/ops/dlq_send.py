"""Sending DLQ messages back to their source queue, for a redrive.

Batches are packed by SQS's limits (10 entries, 1 MiB), a refused batch is sent
one message at a time, a FIFO message keeps its group and is not sent ahead of
an earlier one of its group left behind, and each message ends knowing whether
its copy surely did not, maybe did, or did arrive (:class:`Sent`): what the
redrive then deletes from the DLQ and which state records it puts back.
"""

from __future__ import annotations

import enum
import hashlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import ConnectTimeoutError

from s3flow.errors import S3flowError, translate_aws_error
from s3flow.fastpath.http import HttpConnectError
from s3flow.state.records import FileStatus, ObjectId
from s3flow.worker.acks import REDRIVE_ID_ATTR

#: SQS's limit on the total size of one SendMessageBatch (bodies + message attributes).
MAX_BATCH_BYTES = 1_048_576
#: SQS's limit on the entries of one batch call.
MAX_BATCH_ENTRIES = 10
#: How long a FIFO queue remembers a deduplication id (plus a minute of clock skew).
_DEDUP_WINDOW_MS = (5 * 60 + 60) * 1000
#: Message attributes s3flow writes (a DLQ reason, a retry's failure count): a redriven
#: message starts afresh without them; any other attribute travels with it.
_OWN_ATTRIBUTE_PREFIX = "s3flow."
#: SQS's limit on the message attributes of one message.
MAX_MESSAGE_ATTRIBUTES = 10
#: MaximumMessageSize of SQS queues: the default of queues made before 2025, and the most.
_SIZE_LIMITS = (262_144, 1_048_576)


@dataclass(frozen=True)
class Reset:
    """A record a redrive set to received, and what it was before."""

    oid: ObjectId
    was: FileStatus
    error: str | None


class Sent(enum.Enum):
    """Whether a message's copy is on the source queue."""

    NO = "no"  # surely not (not tried, or SQS refused it)
    MAYBE = "maybe"  # the send failed in a way that may have delivered it (a timeout)
    YES = "yes"


@dataclass
class Outgoing:
    """One received DLQ message on its way to the source queue."""

    msg: dict[str, Any]
    entry: dict[str, Any]  # SendMessage's arguments but QueueUrl
    size: int
    resets: list[Reset] = field(default_factory=list)
    sent: Sent = Sent.NO
    reason: str = ""
    #: The id SQS gave its copy on the source queue (once sent).
    copy_id: str | None = None
    #: The ``s3flow.redrive-id`` its copy carries (None: not set, see :func:`outgoing_of`).
    redrive_id: str | None = None

    @property
    def group(self) -> str | None:
        """Its FIFO message group (None on a standard queue)."""
        group = self.entry.get("MessageGroupId")
        return str(group) if group is not None else None


def _dedup_id(msg: dict[str, Any]) -> str:
    """The deduplication id a FIFO message is sent back with.

    The source queue drops, for 5 minutes, a message whose id it has seen: the
    message's own id was last sent to it no later than the message's SentTimestamp
    (kept when the queue's redrive policy moves a message; every redrive sends a
    new message), so that id is reused only once that is more than 5 minutes (and a
    minute for the clocks) ago. Otherwise a new id is derived from the DLQ message:
    a run that sent it and was killed before the delete sends the same id again,
    which the source queue deduplicates.
    """
    attrs = msg.get("Attributes") or {}
    own = str(attrs.get("MessageDeduplicationId") or "")
    sent_ms = int(attrs.get("SentTimestamp") or 0)
    if own and sent_ms and time.time() * 1000 - sent_ms > _DEDUP_WINDOW_MS:
        return own
    seed = f"{msg['MessageId']}|{own}|{sent_ms}".encode()
    return "redrive-" + hashlib.sha256(seed).hexdigest()[:48]


def outgoing_of(msg: dict[str, Any], fifo: bool, redrive_id: str | None = None) -> Outgoing:
    """The SendMessage of a DLQ message: its body, its attributes but s3flow's own (a
    fresh start), and on a FIFO queue its message group and a deduplication id.

    ``redrive_id`` goes on the copy as the ``s3flow.redrive-id`` attribute, which the
    worker carries onto every message it derives from the copy (a record re-sent
    alone, a dead letter): how a redrive knows its own copies when they come back. It
    is left out when the message already has SQS's maximum of 10 attributes, or when
    it would take a message that fits a queue's usual size limit (256 KiB, 1 MiB) over
    it (such a copy is known only by its own id and the ``s3flow.source-message-id``
    of a dead letter naming it).
    """
    entry: dict[str, Any] = {"MessageBody": msg["Body"]}
    attrs = {
        name: {k: v[k] for k in ("DataType", "StringValue", "BinaryValue") if k in v}
        for name, v in (msg.get("MessageAttributes") or {}).items()
        if not name.startswith(_OWN_ATTRIBUTE_PREFIX)
    }
    if redrive_id is not None and len(attrs) >= MAX_MESSAGE_ATTRIBUTES:
        redrive_id = None
    if attrs:
        entry["MessageAttributes"] = attrs
    if redrive_id is not None:
        tagged = {**attrs, REDRIVE_ID_ATTR: {"DataType": "String", "StringValue": redrive_id}}
        before, after = _entry_size(entry), _entry_size({**entry, "MessageAttributes": tagged})
        if any(before <= limit < after for limit in _SIZE_LIMITS):
            redrive_id = None  # the id would push a message that fits over a queue's limit
        else:
            entry["MessageAttributes"] = tagged
    if fifo:
        system = msg.get("Attributes") or {}
        entry["MessageGroupId"] = system.get("MessageGroupId") or "s3flow-redrive"
        entry["MessageDeduplicationId"] = _dedup_id(msg)
    return Outgoing(msg, entry, _entry_size(entry), redrive_id=redrive_id)


def _entry_size(entry: dict[str, Any]) -> int:
    """What SQS counts of a message against its size limits: the body and each
    attribute's name, type and value, in bytes."""
    size = len(str(entry["MessageBody"]).encode())
    for name, v in (entry.get("MessageAttributes") or {}).items():
        size += len(name.encode()) + len(str(v.get("DataType", "")).encode())
        value = v.get("StringValue", v.get("BinaryValue", b""))
        size += len(value.encode()) if isinstance(value, str) else len(bytes(value))
    return size


def _pack(outgoing: list[Outgoing]) -> Iterator[list[Outgoing]]:
    """Batches of at most 10 messages and 1 MiB in all, in order (a larger message
    alone: SQS refuses it, and it is reported)."""
    batch: list[Outgoing] = []
    size = 0
    for o in outgoing:
        if batch and (len(batch) == MAX_BATCH_ENTRIES or size + o.size > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(o)
        size += o.size
    if batch:
        yield batch


def _surely_not_sent(exc: BaseException) -> bool:
    """Whether a failed send surely delivered nothing: the request never reached SQS,
    or SQS refused it.

    That is SQS's client error (4xx: refused, throttled) when the SDK did not retry
    (``RetryAttempts`` 0: an earlier attempt may have been a 5xx or a timeout), or no
    connection was made. aiobotocore raises ``ConnectTimeoutError`` only for aiohttp's
    timeout while connecting, and ``EndpointConnectionError`` both for a connection
    that was never made (aiohttp's ``ClientConnectorError``: refused, DNS, TLS
    handshake; ``socket.gaierror``; the fast path's ``HttpConnectError`` alike) and
    for one that broke while the request was on the wire (a reset): only the former
    counts. A read timeout, a dropped connection or a 5xx may follow a delivery. (The
    SDK's retries of a connection failure are not told apart: only the last attempt's
    failure is seen.)
    """
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        meta = response.get("ResponseMetadata") or {}
        status = int(meta.get("HTTPStatusCode") or 0)
        return 400 <= status < 500 and not int(meta.get("RetryAttempts") or 0)
    if isinstance(exc, ConnectTimeoutError):
        return True
    if isinstance(exc, BotoConnectionError):  # EndpointConnectionError, SSLError, proxy
        cause = exc.kwargs.get("error")
        return isinstance(cause, aiohttp.ClientConnectorError | socket.gaierror | HttpConnectError)
    return False


def _failed(o: Outgoing, exc: BaseException, operation: str) -> None:
    o.sent = Sent.NO if _surely_not_sent(exc) else Sent.MAYBE
    reason = short_reason(translate_aws_error(exc, operation))
    o.reason = reason if o.sent is Sent.NO else f"{reason} (it may have arrived all the same)"


async def send_all(sqs: Any, src: str, outgoing: list[Outgoing]) -> None:
    """Send ``outgoing`` to the source queue, setting each one's ``sent`` and ``reason``."""
    failed_groups: set[str] = set()

    def held_back(o: Outgoing) -> bool:
        # A FIFO message is not sent ahead of an earlier one of its group left behind.
        if o.group is not None and o.group in failed_groups:
            o.reason = "an earlier message of its FIFO group could not be moved"
            return True
        return False

    def note_failure(o: Outgoing) -> None:
        if o.sent is not Sent.YES and o.group is not None:
            failed_groups.add(o.group)

    for packed in _pack(outgoing):
        batch = [o for o in packed if not held_back(o)]
        if not batch:
            continue
        for o in batch:
            o.sent = Sent.MAYBE  # until SQS answers (a cancellation leaves it so)
        alone: list[Outgoing] = []
        try:
            resp = await sqs.send_message_batch(
                QueueUrl=src,
                Entries=[{"Id": str(i), **o.entry} for i, o in enumerate(batch)],
            )
        except Exception as exc:
            if not _surely_not_sent(exc):
                # Unreachable or timed out after the SDK's retries: one at a time would fail
                # alike, ten times slower.
                for o in batch:
                    _failed(o, exc, "SendMessageBatch")
                    note_failure(o)
                continue
            alone = batch  # refused as a whole (too long, one bad entry): each alone
        else:
            ok = {int(s["Id"]): s.get("MessageId") for s in resp.get("Successful") or []}
            for i, o in enumerate(batch):
                if i in ok:
                    o.sent, o.copy_id = Sent.YES, ok[i]
                else:
                    alone.append(o)
        for o in alone:
            if held_back(o):
                o.sent = Sent.NO
                continue
            o.sent = Sent.MAYBE
            try:
                answer = await sqs.send_message(QueueUrl=src, **o.entry)
            except Exception as exc:
                _failed(o, exc, "SendMessage")
            else:
                o.sent, o.copy_id = Sent.YES, answer.get("MessageId")
            note_failure(o)


def short_reason(err: S3flowError) -> str:
    """An endpoint's error in one line (some answer with a whole HTML page)."""
    text = " ".join(str(err).split())
    if "<" in text:
        text = text.split("<", 1)[0].rstrip(" :") + " (HTML error page)"
    return text[:200]
