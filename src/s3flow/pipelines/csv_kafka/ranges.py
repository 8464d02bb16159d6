"""Parallel mode (``ranges > 1``): one large uncompressed object as several byte ranges.

The object is cut at line starts near ``i * size / ranges``; range ``i`` is produced to
partition ``i`` by its own transactional producer with its own checkpoint (its
:class:`~s3flow.pipelines.csv_kafka.checkpoint.ObjectRef` carries the range as ``part``), all
ranges at once, each in its own process (:mod:`.procs`) through
:func:`~s3flow.pipelines.csv_kafka.runner.run_object`: exactly once and resumable per
range. The trade-offs (docs/pipelines/csv-to-kafka.md):

* order holds within a range (a partition), not across ranges;
* a cut is the byte after a line feed, so records must not contain line breaks (a
  quoted field with a newline can be cut in two: both halves become bad rows);
* ``s3.line`` counts lines within the range; the ``s3.range`` header names the range;
* every range judges rows by the object's first record (:func:`first_record`, one small
  ranged GET): the header row's names, or without header and ``columns`` the first
  row's column count - a malformed row that starts a range is just a bad row;
* a compressed object cannot be cut (no random access): it streams as one range, like
  an object smaller than ``ranges`` MiB;
* the cuts depend on the object and ``ranges``: changing ``ranges`` while an object is
  half done starts it again under new checkpoints (rows of the first run stay).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any

from s3flow.errors import Disposition, S3flowError
from s3flow.objects import MAGIC_BYTES, detect_encoding, open_object
from s3flow.pipelines.csv_kafka.blocks import UTF8_BOM
from s3flow.pipelines.csv_kafka.checkpoint import Checkpoint, ObjectRef
from s3flow.pipelines.csv_kafka.errors import BadRowError
from s3flow.pipelines.csv_kafka.options import CsvKafkaOptions
from s3flow.pipelines.csv_kafka.procs import run_range_process, warm_up
from s3flow.pipelines.csv_kafka.runner import RunReport, open_stream, run_object
from s3flow.state.base import StateStore

log = logging.getLogger("s3flow.pipelines.csv_kafka")

#: Bytes read around a nominal cut to find the next line start (and for the header).
WINDOW_BYTES = 64 * 1024
#: No range is smaller than this: smaller objects get fewer ranges.
MIN_RANGE_BYTES = 1024 * 1024


async def read_bytes(
    s3: Any,
    bucket: str,
    key: str,
    version_id: str | None,
    start: int,
    end: int,
    if_match: str | None = None,
) -> bytes:
    """Bytes ``[start, end)`` of the object as stored (``if_match``: of that upload only;
    another raises :class:`~s3flow.errors.ObjectChangedError`)."""
    reader = await open_object(
        s3, bucket, key, version_id=version_id, byte_range=(start, end), if_match=if_match
    )
    try:
        return b"".join([chunk async for chunk in reader])
    finally:
        reader.close()


async def plan_ranges(
    s3: Any,
    ref: ObjectRef,
    version_id: str | None,
    size: int,
    ranges: int,
    if_match: str | None = None,
) -> list[tuple[int, int]] | None:
    """``[start, end)`` of each range, cut at line starts; None: stream the object whole.

    None when the object is compressed or too small for two ranges.
    """
    n = min(ranges, size // MIN_RANGE_BYTES)
    if n < 2:
        return None
    head = await read_bytes(s3, ref.bucket, ref.key, version_id, 0, MAGIC_BYTES, if_match)
    if detect_encoding(head) != "identity":
        log.info("%s: compressed (%s): streamed as one range", ref.uri, detect_encoding(head))
        return None
    starts = [0]
    for i in range(1, n):
        pos = i * size // n - 1  # a cut right after a line feed at pos
        cut = None
        while pos < size and cut is None:
            window = await read_bytes(
                s3, ref.bucket, ref.key, version_id, pos, min(size, pos + WINDOW_BYTES), if_match
            )
            nl = window.find(b"\n")
            if nl >= 0:
                cut = pos + nl + 1
            pos += len(window)
        if cut is not None and starts[-1] < cut < size:
            starts.append(cut)
    if len(starts) < 2:
        return None
    return list(zip(starts, [*starts[1:], size], strict=True))


async def first_record(
    s3: Any,
    opts: CsvKafkaOptions,
    ref: ObjectRef,
    version_id: str | None,
    size: int,
    if_match: str | None = None,
) -> list[str]:
    """The fields of the object's first record, read from its first bytes (ranged GET).

    Read as the exact path (:class:`~s3flow.pipelines.csv_kafka.rows.RowBatches`) reads
    the start of the object: a UTF-8 BOM dropped, blank lines skipped, a line ending at
    LF, CRLF or a lone CR (``csv`` over ``newline=""`` text), the same dialect.
    Undecodable bytes are kept as surrogate escapes (the field count is what the exact
    path counts). Every range judges its rows by this record (the header row's names,
    or without one the first row's column count), not by its own first row.
    """
    window = min(size, MIN_RANGE_BYTES)
    head = await read_bytes(s3, ref.bucket, ref.key, version_id, 0, window, if_match)
    if opts.encoding == "utf-8" and head.startswith(UTF8_BOM):
        head = head[len(UTF8_BOM) :]
    lines = io.StringIO(head.decode(opts.encoding, "surrogateescape"), newline="").readlines()
    read_all = False

    def feed() -> Iterator[str]:
        nonlocal read_all
        yield from lines
        read_all = True  # csv asked for more: a record ended by the end of the window

    reader = csv.reader(
        feed(),
        delimiter=opts.delimiter,
        quotechar=opts.quotechar,
        escapechar=opts.escapechar,
        doublequote=True,
        strict=False,
    )
    try:
        for fields in reader:
            if not fields:
                continue  # a blank line: no record (as in the exact path)
            if window == size or (not read_all and lines[reader.line_num - 1][-1] in "\r\n"):
                return fields
            break  # cut by the end of the window: the record goes on after it
    except csv.Error as exc:
        raise BadRowError(
            f"{ref.uri} line {reader.line_num}: the first record is not valid CSV ({exc}); "
            "parallel mode (ranges > 1) reads it for every range: set ranges = 1"
        ) from exc
    raise BadRowError(
        f"{ref.uri}: no complete record in the first {window} bytes (only blank lines, or "
        "a first record longer than that); parallel mode (ranges > 1) reads the first "
        "record for every range: set ranges = 1 for this object"
        + ("" if opts.header else ", or give columns = [...]")
    )


async def header_columns(
    s3: Any,
    opts: CsvKafkaOptions,
    ref: ObjectRef,
    version_id: str | None,
    size: int,
    if_match: str | None = None,
) -> list[str]:
    """The header row's column names: the object's first record (blank lines skipped)."""
    names = await first_record(s3, opts, ref, version_id, size, if_match)
    if any("\udc80" <= c <= "\udcff" for name in names for c in name):
        raise BadRowError(f"{ref.uri}: the header row is not valid {opts.encoding}")
    return names


async def run_csv_object(
    opts: CsvKafkaOptions,
    ref: ObjectRef,
    s3: Any,
    version_id: str | None,
    size: int | None,
    *,
    executor: Executor,
    store: StateStore | None = None,
    report_progress: Callable[[int], None] = lambda n: None,
    if_match: str | None = None,
) -> RunReport:
    """Produce one object: as byte ranges in parallel when ``opts.ranges > 1`` allows,
    else as one ordered stream (:func:`run_object`).

    ``if_match``: every read (the plan's, each range's) is of that upload only; the
    object overwritten since raises :class:`~s3flow.errors.ObjectChangedError`.
    """
    bounds = None
    if opts.ranges > 1 and size:
        warm_up()  # the range processes' forkserver imports while the ranges are planned
        bounds = await plan_ranges(s3, ref, version_id, size, opts.ranges, if_match)
    if bounds is None:
        return await run_object(
            opts,
            ref,
            lambda: open_stream(s3, ref.bucket, ref.key, version_id, if_match),
            executor=executor,
            store=store,
            report_progress=report_progress,
        )
    started = time.monotonic()
    # Only range 0 starts with the header row: the later ones must not take their first
    # row for one (with ``columns`` given too: they override the header's names).
    later: dict[str, Any] = {"header": False} if opts.header else {}
    # Every range judges rows by the object's first record, not by its own first row
    # (a malformed one would make it dead-letter its good rows): the header's names, or
    # without header and columns the first row's column count.
    ncols: int | None = None
    if opts.columns is None:
        if opts.header:
            later["columns"] = await header_columns(s3, opts, ref, version_id, size or 0, if_match)
        else:
            ncols = len(await first_record(s3, opts, ref, version_id, size or 0, if_match))
    n = len(bounds)
    log.info("%s: %d ranges to partitions 0-%d of %s", ref.uri, n, n - 1, opts.topic)

    async def one(i: int, start: int, end: int) -> RunReport:
        part = ObjectRef(ref.bucket, ref.key, ref.version, f"{i}/{n}@{start}-{end}")
        update: dict[str, Any] = {"partition": i, "ranges": 1, **(later if i else {})}
        return await run_range_process(
            opts.model_copy(update=update),
            part,
            s3,
            version_id,
            (start, end),
            executor=executor,
            store=store,
            report_progress=report_progress,
            ncols=ncols,
            if_match=if_match,
        )

    # Each range in its own process (:mod:`.procs`); a TaskGroup: one range failing
    # cancels the others (their processes abort their open transactions and exit); a
    # rerun resumes every range from its own checkpoint.
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(i, a, b)) for i, (a, b) in enumerate(bounds)]
    except Exception as group:
        # The ranges' own errors, not an ExceptionGroup: the worker classifies the error
        # (a bad row under 'fail' dead-letters at once) and the CLI prints its reason.
        raise _decisive(group) from group
    return combine(ref, [t.result() for t in tasks], time.monotonic() - started)


def _decisive(error: Exception) -> Exception:
    """The error that settles an object whose ranges failed: the first that is not
    worth a retry (a permanent one dooms the object whatever the others did), else
    the first s3flow error, else the first error."""
    leaves: list[Exception] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif isinstance(exc, Exception):
            leaves.append(exc)

    walk(error)
    ours = [e for e in leaves if isinstance(e, S3flowError)]
    for e in ours:
        if e.disposition is not Disposition.RETRYABLE:
            return e
    return (ours or leaves or [error])[0]


def combine(ref: ObjectRef, reports: list[RunReport], seconds: float) -> RunReport:
    """One report for the ranges of an object (sums; done when every range is)."""
    cks = [r.checkpoint for r in reports]
    total = Checkpoint(
        object=ref.name,
        offset=sum(c.offset for c in cks),
        row=sum(c.row for c in cks),
        line=sum(c.line for c in cks),
        sent=sum(c.sent for c in cks),
        bad=sum(c.bad for c in cks),
        columns=cks[0].columns,
        ncols=cks[0].ncols,
        done=all(c.done for c in cks),
        transactions=sum(c.transactions for c in cks),
    )
    return RunReport(
        checkpoint=total,
        resumed_from_row=sum(r.resumed_from_row for r in reports),
        resumed_sent=sum(r.resumed_sent for r in reports),
        already_done=all(r.already_done for r in reports),
        attempts=max(r.attempts for r in reports),
        seconds=seconds,
        bytes_read=sum(r.bytes_read for r in reports),
        compressed_bytes=sum(r.compressed_bytes for r in reports),
        commit_seconds=sum(r.commit_seconds for r in reports),
    )
