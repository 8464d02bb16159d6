"""Output verification: every declared output really is there before a message is acked.

For each output a processor (wherever it ran) declared in its Result:

* ``s3://`` - a HEAD: it exists, its size is > 0 and, when the processor declares an
  ``output_content_type``, its Content-Type is that one (parameters and case ignored);
* a local path - it exists and is a non-empty file;
* a PDF (``.pdf`` key, or ``application/pdf`` declared or stored) - also a ranged read
  of its first bytes (``%PDF-``) and one of its last KiB (``%%EOF``);
* other schemes (``kafka://topic``) are not objects: not checked here.

An ``s3://`` output with a write receipt (:mod:`s3flow.sinks.receipts`: the worker's
own sink wrote it and S3 acknowledged the PutObject) that shows the same facts (size
> 0, the declared content type, not a PDF) needs no HEAD: S3 answers a PutObject once
the object is stored durably. Only processors that set ``verified_by_write`` get
receipts (they promise never to change or remove an output once written).

A problem raises :class:`~s3flow.errors.OutputVerificationError` naming the output and
what is wrong: the record is retried (never acked) and dead-lettered after
``max_receive_count`` failures.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

from s3flow.errors import OutputVerificationError, S3flowError, translate_aws_error
from s3flow.sinks.receipts import WriteReceipt
from s3flow.sinks.s3 import split_s3_url

PDF_TYPE = "application/pdf"
_PDF_HEAD = b"%PDF-"
_PDF_EOF = b"%%EOF"
#: Readers accept %%EOF within the last 1024 bytes of a PDF.
_PDF_TAIL = 1024
_CONCURRENCY = 8


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _is_pdf(location: str, declared: str | None, stored: str | None) -> bool:
    return (
        location.lower().endswith(".pdf")
        or _media_type(declared) == PDF_TYPE
        or _media_type(stored) == PDF_TYPE
    )


def check_pdf_bytes(head: bytes, tail: bytes, where: str) -> str | None:
    """The PDF markers' problem in the first bytes and the last KiB, or None."""
    if not head.startswith(_PDF_HEAD):
        return f"{where} is not a PDF: it starts with {head[:8]!r}, not %PDF-"
    if _PDF_EOF not in tail[-_PDF_TAIL:]:
        return f"{where} is a truncated PDF: no %%EOF in its last {_PDF_TAIL} bytes"
    return None


async def _ranged(s3: Any, bucket: str, key: str, range_: str) -> bytes:
    resp = await s3.get_object(Bucket=bucket, Key=key, Range=range_)
    async with resp["Body"] as body:
        return bytes(await body.read())


async def _verify_s3(s3: Any, uri: str, content_type: str | None) -> str | None:
    bucket, key = split_s3_url(uri)
    try:
        head = await s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        err = translate_aws_error(exc, f"HeadObject {uri}")
        if err.disposition.value == "skip":
            return f"output {uri} does not exist"
        return f"output {uri} cannot be checked: {err}"
    size = int(head.get("ContentLength") or 0)
    if size <= 0:
        return f"output {uri} is empty (0 bytes)"
    stored = head.get("ContentType")
    if content_type and _media_type(stored) != _media_type(content_type):
        return f"output {uri} has Content-Type {stored!r}, not {content_type!r}"
    if not _is_pdf(key, content_type, stored):
        return None
    try:
        first = await _ranged(s3, bucket, key, f"bytes=0-{len(_PDF_HEAD) - 1}")
        last = await _ranged(s3, bucket, key, f"bytes=-{min(size, _PDF_TAIL)}")
    except Exception as exc:
        err = translate_aws_error(exc, f"GetObject {uri}")
        return f"output {uri} cannot be read back: {err}"
    return check_pdf_bytes(first, last, f"output {uri}")


def _verify_local_sync(path: str) -> str | None:
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return f"output {path} does not exist"
    except OSError as exc:
        return f"output {path} cannot be checked: {exc}"
    if size <= 0:
        return f"output {path} is empty (0 bytes)"
    if not path.lower().endswith(".pdf"):
        return None
    with open(path, "rb") as fh:
        first = fh.read(len(_PDF_HEAD))
        fh.seek(max(0, size - _PDF_TAIL))
        last = fh.read()
    return check_pdf_bytes(first, last, f"output {path}")


async def verify_one(s3: Any, location: str, content_type: str | None = None) -> str | None:
    """What is wrong with one declared output, or None (also for non-object outputs)."""
    if location.startswith("s3://"):
        return await _verify_s3(s3, location, content_type)
    if "://" in location:
        return None  # kafka://topic and the like: not an object
    return await asyncio.to_thread(_verify_local_sync, location)


def receipt_shows_it(location: str, receipt: WriteReceipt | None, content_type: str | None) -> bool:
    """Whether ``receipt`` proves what a HEAD of the ``s3://`` output would check.

    Not for PDFs (their bytes are read back) nor for anything the receipt does not
    show to be right: those are checked on the object itself, as without a receipt.
    """
    return (
        receipt is not None
        and location.startswith("s3://")
        and receipt.size > 0
        and (not content_type or _media_type(receipt.content_type) == _media_type(content_type))
        and not _is_pdf(location, content_type, receipt.content_type)
    )


async def verify_outputs(
    s3: Any,
    outputs: Sequence[str],
    *,
    content_type: str | None = None,
    receipts: Mapping[str, WriteReceipt] | None = None,
) -> None:
    """Raise :class:`OutputVerificationError` unless every output checks out.

    ``receipts``: acknowledged writes of the worker's own sink, by URI (see the module
    docstring); an output one of them shows to be right is not fetched again.
    """
    if receipts:
        outputs = [o for o in outputs if not receipt_shows_it(o, receipts.get(o), content_type)]
        if not outputs:
            return
    sem = asyncio.Semaphore(_CONCURRENCY)

    async def one(location: str) -> str | None:
        async with sem:
            try:
                return await verify_one(s3, location, content_type)
            except S3flowError as exc:
                return f"output {location} cannot be checked: {exc}"

    problems = [p for p in await asyncio.gather(*(one(o) for o in outputs)) if p]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise OutputVerificationError(f"output verification failed: {problems[0]}{more}")
