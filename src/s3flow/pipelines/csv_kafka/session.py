"""One object's transactional producer and its produce loop (synchronous, in a thread).

Lifecycle (each call blocks; the runner calls them off the event loop)::

    session = TxnSession(opts, ref)
    ckpt = session.prepare(hint)   # producer, init_transactions (fences a zombie), checkpoint
    final = session.run(channel, ckpt)   # rows in transactions of ~checkpoint_rows rows
    session.close()                # aborts an open transaction, purges, destroys the producer

The object is cut into blocks (~1 MiB of line-aligned pieces ending where ``csv.reader``
ends a record: see :class:`~s3flow.pipelines.csv_kafka.rows.RecordEnds`). A block of one-line
records in UTF-8 is parsed and encoded by pyarrow (:mod:`.fastpath`), any other block
by the ``csv`` module; a helper thread prepares the next block meanwhile. After the
block that completes ``checkpoint_rows`` rows (or ``checkpoint_s`` seconds, or
``checkpoint_bytes``), the open transaction gets the checkpoint record and is
committed: the rows and the position after them become visible together.
"""

from __future__ import annotations

import csv
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from confluent_kafka import KafkaException, Producer

from s3flow.errors import UndecodableContentError
from s3flow.pipelines.csv_kafka.channel import ChunkChannel
from s3flow.pipelines.csv_kafka.checkpoint import (
    Checkpoint,
    ObjectRef,
    checkpoint_partition,
    read_checkpoint,
)
from s3flow.pipelines.csv_kafka.clientlog import client_log
from s3flow.pipelines.csv_kafka.errors import (
    BadRowError,
    KafkaUnavailableError,
    translate_kafka_error,
)
from s3flow.pipelines.csv_kafka.options import CsvKafkaOptions
from s3flow.pipelines.csv_kafka.rows import (
    BLOCK_BYTES,
    MAX_BLOCK_BYTES,
    PIECE_BYTES,
    UTF8_BOM,
    LineFeed,
    PieceSplitter,
    RecordEnds,
    RowEncoder,
    decode_piece,
    original_bytes,
)

try:
    from s3flow.pipelines.csv_kafka.fastpath import ArrowJsonBlocks

    _FAST = True
except ImportError:  # pragma: no cover - pyarrow is a dependency; the exact path still works
    _FAST = False

log = logging.getLogger("s3flow.pipelines.csv_kafka")

_COMMIT_ATTEMPTS = 5
_PARTITION_ANY = -1  # librdkafka's RD_KAFKA_PARTITION_UA: the partitioner decides


def producer_config(opts: CsvKafkaOptions, ref: ObjectRef) -> dict[str, Any]:
    """librdkafka settings of an object's transactional, idempotent producer."""
    conf: dict[str, Any] = {
        "bootstrap.servers": opts.bootstrap(),
        "transactional.id": ref.transactional_id(opts.transactional_id_prefix, opts.topic),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": opts.compression,
        "linger.ms": opts.linger_ms,
        "batch.size": opts.batch_bytes,
        "queue.buffering.max.kbytes": opts.queue_buffer_kbytes,
        "queue.buffering.max.messages": 1_000_000,
        "transaction.timeout.ms": opts.transaction_timeout_ms,
        "message.timeout.ms": opts.transaction_timeout_ms,
        "delivery.report.only.error": True,
        "partitioner": "murmur2_random",  # what Java clients use for keyed records
    }
    conf.update(opts.producer_config)
    return conf


class TxnSession:
    """The exactly-once writer of one object version (not thread-safe; one thread at a time)."""

    def __init__(
        self,
        opts: CsvKafkaOptions,
        ref: ObjectRef,
        *,
        on_checkpoint: Callable[[Checkpoint], None] | None = None,
        piece_bytes: int = PIECE_BYTES,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        self.opts = opts
        self.ref = ref
        self._on_checkpoint = on_checkpoint or (lambda c: None)
        self._piece_bytes = piece_bytes
        self._block_bytes = block_bytes
        self._producer: Producer | None = None
        self._in_txn = False
        self._ckpt_partition = 0
        self._scan_from = 0
        self._timeout = opts.transaction_timeout_ms / 1000
        self.commit_seconds = 0.0

    # --- lifecycle ---------------------------------------------------------------------

    def prepare(self, hint: int = 0) -> Checkpoint | None:
        """Start the producer (fencing any earlier one of this object); read the checkpoint.

        ``hint``: an offset of the checkpoint partition known to precede this object's
        checkpoints (from the state store mirror), or 0.
        """
        producer = Producer(producer_config(self.opts, self.ref), logger=client_log)
        self._producer = producer
        self._call(lambda: producer.init_transactions(self._timeout), "init_transactions")
        topic = self.opts.checkpoint_topic_name
        meta = self._call(lambda: producer.list_topics(topic, timeout=30), "metadata")
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise KafkaUnavailableError(
                f"checkpoint topic {topic!r} is not available: {info.error if info else 'missing'}"
            )
        self._ckpt_partition = checkpoint_partition(self.ref.name, len(info.partitions))
        ckpt, end = read_checkpoint(
            self.opts.bootstrap(),
            topic,
            self._ckpt_partition,
            self.ref.name,
            start_offset=hint,
            timeout_s=self._timeout + 30,
        )
        self._scan_from = ckpt.scan_from if ckpt is not None else end
        return ckpt

    def close(self) -> None:
        """Abort an open transaction (its rows never become visible) and drop the producer."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if self._in_txn:
            self._in_txn = False
            try:
                producer.abort_transaction(5)
            except KafkaException as exc:
                log.info("%s: aborting the open transaction failed: %s", self.ref.uri, exc)
        try:
            producer.purge()
            producer.flush(0)
        except (KafkaException, RuntimeError):
            pass

    # --- the produce loop ----------------------------------------------------------------

    def run(self, channel: ChunkChannel, ckpt: Checkpoint | None) -> Checkpoint:
        """Produce the object's rows after ``ckpt``; return the final (done) checkpoint.

        ``channel`` yields the decompressed object from ``ckpt.offset`` on.
        """
        producer = self._producer
        if producer is None:
            raise RuntimeError("prepare() first")
        opts = self.opts
        state = (
            replace(ckpt)
            if ckpt is not None
            else Checkpoint(object=self.ref.name, scan_from=self._scan_from)
        )
        try:
            self._run(producer, channel, state)
        finally:
            channel.abort()  # stop the feeder whatever happened
        if opts.bad_rows == "skip" and state.bad:
            log.info("%s: %d bad rows skipped", self.ref.uri, state.bad)
        return state

    def _blocks(self, channel: ChunkChannel, state: Checkpoint) -> Iterator[tuple[bytes, int]]:
        """(block, end offset): line-aligned runs of pieces that end where a record ends.

        A block closes at the first piece end after ``block_bytes`` where ``csv.reader``
        ends a record (:class:`RecordEnds` follows its quote rules), so records never span
        blocks and a checkpoint is always at a record start. A block also closes at
        MAX_BLOCK_BYTES inside a record (a quoted field left open to the end of the
        object cannot make memory grow without bound); that record is then split.
        """
        opts = self.opts
        splitter = PieceSplitter(self._piece_bytes)
        ends = RecordEnds(
            delimiter=opts.delimiter,
            quotechar=opts.quotechar,
            escapechar=opts.escapechar,
            encoding=opts.encoding,
        )
        target = max(self._block_bytes, 1)
        buf: list[bytes] = []
        size, pos = 0, state.offset
        first = state.offset == 0

        def pieces() -> Iterator[bytes]:
            for chunk in iter(channel.get, None):
                yield from splitter.feed(chunk)
            yield from splitter.finish()

        for piece in pieces():
            pos += len(piece)
            if first:
                first = False
                if opts.encoding == "utf-8" and piece.startswith(UTF8_BOM):
                    piece = piece[len(UTF8_BOM) :]
            at_end = ends.feed(piece)
            buf.append(piece)
            size += len(piece)
            if (size >= target and at_end) or size >= MAX_BLOCK_BYTES:
                if not at_end:
                    log.warning(
                        "%s: a record longer than %d MiB (an unclosed quote?) is split at byte %d",
                        self.ref.uri,
                        MAX_BLOCK_BYTES // (1024 * 1024),
                        pos,
                    )
                    ends.reset()
                yield b"".join(buf), pos
                buf, size = [], 0
        if buf:
            yield b"".join(buf), pos

    def _run(self, producer: Producer, channel: ChunkChannel, state: Checkpoint) -> None:
        opts, ref = self.opts, self.ref
        topic = opts.topic
        partition = opts.partition if opts.partitioning == "single" else _PARTITION_ANY
        encoding = opts.encoding
        raw_mode = opts.format == "raw"
        ckpt_rows, ckpt_s, ckpt_bytes = (
            opts.checkpoint_rows,
            opts.checkpoint_s,
            opts.checkpoint_bytes,
        )
        fast_ok = (
            opts.format == "json" and encoding == "utf-8" and opts.escapechar is None and _FAST
        )

        # --- columns -------------------------------------------------------------------
        columns = list(opts.columns) if opts.columns else state.columns
        header_pending = opts.header and state.offset == 0
        encoder = RowEncoder(columns)
        # The expected column count: the columns', else the one a previous run of this
        # object learned from its first data row (kept in the checkpoint).
        ncols = len(columns) if columns else state.ncols
        key_idx = self._key_index(columns) if columns is not None else None
        if columns is not None:
            state.columns = columns
        state.ncols = ncols
        fast: ArrowJsonBlocks | None = None

        const_headers: list[tuple[str, str | bytes | None]] | None = None
        if opts.headers:
            const_headers = [
                ("s3.bucket", ref.bucket),
                ("s3.key", ref.key),
                ("s3.version", ref.version),
            ]
            if ref.part:
                const_headers.append(("s3.range", ref.part))

        produce = producer.produce
        lines_done = state.line  # physical lines before the current block
        row, sent, bad = state.row, state.sent, state.bad
        txn_rows = txn_bytes = 0
        last_commit = time.monotonic()
        self._begin(producer)

        def handle_bad(
            first_line: int, reason: str, fields: list[str] | None, raw: str | None
        ) -> None:
            nonlocal bad
            where = f"{ref.uri} line {first_line}"
            if opts.bad_rows == "fail":
                raise BadRowError(f"{where}: {reason} (bad_rows = 'fail')")
            bad += 1
            if opts.bad_rows == "skip":
                return
            doc = {
                "bucket": ref.bucket,
                "key": ref.key,
                "version": ref.version,
                "line": first_line,
                "reason": reason,
                "fields": [_printable(f, encoding) for f in fields] if fields is not None else None,
                "raw": _printable(raw, encoding) if raw is not None else None,
            }
            self._produce(
                producer,
                opts.dlq_topic_name,
                json.dumps(doc, ensure_ascii=False),
                None,
                _PARTITION_ANY,
                [*(const_headers or []), ("s3.line", str(first_line)), ("error", reason)],
            )

        ahead = _Prefetch(self._blocks(channel, state))
        try:
            for block, end, nlines, encoded in ahead:
                block_start = state.offset
                if encoded is None and fast_ok and columns is not None and not header_pending:
                    if fast is None:
                        fast = ArrowJsonBlocks(
                            columns,
                            delimiter=opts.delimiter,
                            quotechar=opts.quotechar,
                            key_index=key_idx,
                        )
                        ahead.encoder = fast.encode  # later blocks are encoded ahead
                    encoded = fast.encode(block, nlines)
                if encoded is not None:
                    # --- vectorised: one record per line --------------------------------
                    values, keys = encoded
                    line = lines_done
                    for i, value in enumerate(values):
                        line += 1
                        key = keys[i] if keys is not None else None
                        headers = (
                            [*const_headers, ("s3.line", str(line))]
                            if const_headers is not None
                            else None
                        )
                        try:
                            produce(topic, value, key, partition, headers=headers)
                        except BufferError:
                            self._produce(producer, topic, value, key, partition, headers)
                        except KafkaException as exc:
                            raise translate_kafka_error(exc, f"produce to {topic}") from exc
                        except UnicodeEncodeError as exc:
                            raise self._not_text(topic, exc) from exc
                    n = len(values)
                    row += n
                    sent += n
                    txn_rows += n
                    lines_done += nlines
                else:
                    # --- exact: the csv module, record by record ------------------------
                    text, bad_idx = decode_piece(block, encoding)
                    feed = LineFeed(text, bad_idx, keep_raw=raw_mode, start_line=lines_done)
                    raw_lines = feed.raw
                    bad_lines = feed.bad_lines
                    reader = csv.reader(
                        feed,
                        delimiter=opts.delimiter,
                        quotechar=opts.quotechar,
                        escapechar=opts.escapechar,
                        doublequote=True,
                        strict=False,
                    )
                    prev_end = lines_done
                    while True:
                        try:
                            for fields in reader:
                                line_end = lines_done + reader.line_num
                                line_start = prev_end + 1
                                prev_end = line_end
                                if not fields:
                                    pass  # a blank line: no record
                                elif header_pending:
                                    header_pending = False
                                    if bad_lines and _touches(bad_lines, line_start, line_end):
                                        raise self._bad_header(text, block, block_start, end)
                                    if columns is None:
                                        columns = fields
                                        state.columns = columns
                                        encoder = RowEncoder(columns)
                                        ncols = state.ncols = len(columns)
                                        key_idx = self._key_index(columns)
                                else:
                                    if ncols is None:
                                        ncols = state.ncols = len(fields)
                                    raw = RowEncoder.raw(raw_lines) if raw_mode else None
                                    if len(fields) != ncols:
                                        handle_bad(
                                            line_start,
                                            f"expected {ncols} columns, got {len(fields)}",
                                            fields,
                                            raw,
                                        )
                                    elif bad_lines and _touches(bad_lines, line_start, line_end):
                                        handle_bad(
                                            line_start,
                                            f"undecodable bytes (not {encoding})",
                                            fields,
                                            raw,
                                        )
                                    else:
                                        text_value = (
                                            raw if raw is not None else encoder.json(fields)
                                        )
                                        key = fields[key_idx] if key_idx is not None else None
                                        headers = (
                                            [*const_headers, ("s3.line", str(line_start))]
                                            if const_headers is not None
                                            else None
                                        )
                                        self._produce(
                                            producer, topic, text_value, key, partition, headers
                                        )
                                        sent += 1
                                    row += 1
                                    txn_rows += 1
                                if raw_mode:
                                    raw_lines.clear()
                            break
                        except csv.Error as exc:
                            line_end = lines_done + reader.line_num
                            line_start = prev_end + 1
                            prev_end = line_end
                            raw = RowEncoder.raw(raw_lines) if raw_mode else None
                            handle_bad(line_start, f"unparseable CSV: {exc}", None, raw)
                            row += 1
                            txn_rows += 1
                            if raw_mode:
                                raw_lines.clear()
                    lines_done = lines_done + reader.line_num
                txn_bytes += len(block)
                if (
                    txn_rows >= ckpt_rows
                    or txn_bytes >= ckpt_bytes
                    or time.monotonic() - last_commit >= ckpt_s
                ):
                    producer.poll(0)
                    state.offset, state.row, state.line = end, row, lines_done
                    state.sent, state.bad = sent, bad
                    self._commit(producer, state, final=False)
                    txn_rows = txn_bytes = 0
                    last_commit = time.monotonic()
                state.offset, state.line = end, lines_done
        finally:
            ahead.close()
        if header_pending and opts.header:
            log.info("%s: empty object (no header row)", ref.uri)
        state.row, state.line = row, lines_done
        state.sent, state.bad, state.done = sent, bad, True
        self._commit(producer, state, final=True)

    # --- helpers ---------------------------------------------------------------------------

    def _key_index(self, columns: list[str] | None) -> int | None:
        name = self.opts.key_column
        if not name:
            return None
        if columns is None or name not in columns:
            raise BadRowError(
                f"{self.ref.uri}: key_column {name!r} is not a column "
                f"(columns: {columns if columns is not None else 'none'})"
            )
        return columns.index(name)

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        try:
            return fn()
        except KafkaException as exc:
            raise translate_kafka_error(exc, what) from exc

    def _begin(self, producer: Producer) -> None:
        self._call(producer.begin_transaction, "begin_transaction")
        self._in_txn = True

    def _produce(
        self,
        producer: Producer,
        topic: str,
        value: str | bytes,
        key: str | None,
        partition: int,
        headers: list[tuple[str, str | bytes | None]] | None,
    ) -> None:
        """produce(), waiting for room while the producer's queue is full."""
        while True:
            try:
                producer.produce(topic, value, key, partition, headers=headers)
                return
            except BufferError:
                producer.poll(0.05)
            except KafkaException as exc:
                raise translate_kafka_error(exc, f"produce to {topic}") from exc
            except UnicodeEncodeError as exc:
                raise self._not_text(topic, exc) from exc

    def _not_text(self, topic: str, exc: UnicodeEncodeError) -> UndecodableContentError:
        """A message that is not valid text (undecodable bytes in it): a permanent error."""
        return UndecodableContentError(
            f"{self.ref.uri}: a message for {topic} is not valid text "
            f"(undecodable bytes, not {self.opts.encoding}): {exc}"
        )

    def _bad_header(
        self, text: str, block: bytes, block_start: int, block_end: int
    ) -> UndecodableContentError:
        """The error for a header row with undecodable bytes (column names must be text)."""
        first = next((i for i, c in enumerate(text) if "\udc80" <= c <= "\udcff"), 0)
        skipped = block_end - block_start - len(block)  # a UTF-8 BOM dropped from the block
        at = block_start + skipped + len(original_bytes(text[:first], self.opts.encoding))
        return UndecodableContentError(
            f"{self.ref.uri}: header row is not valid {self.opts.encoding} at byte {at}"
        )

    def _commit(self, producer: Producer, state: Checkpoint, *, final: bool) -> None:
        """Add the checkpoint to the open transaction and commit it; begin the next one."""
        state.transactions += 1
        state.updated_at = time.time()
        self._produce(
            producer,
            self.opts.checkpoint_topic_name,
            state.encode(),
            self.ref.name,
            self._ckpt_partition,
            None,
        )
        started = time.monotonic()
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            try:
                producer.commit_transaction(self._timeout)
                break
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                retriable = bool(err is not None and err.retriable())
                if retriable and attempt < _COMMIT_ATTEMPTS:
                    log.info("%s: commit_transaction: %s; retrying", self.ref.uri, exc)
                    continue
                if err is not None and err.txn_requires_abort():
                    self._in_txn = False
                    try:
                        producer.abort_transaction(self._timeout)
                    except KafkaException:
                        pass
                raise translate_kafka_error(exc, "commit_transaction") from exc
        self.commit_seconds += time.monotonic() - started
        self._in_txn = False
        self._on_checkpoint(replace(state))
        if not final:
            self._begin(producer)


_Encoded = tuple[list[bytes], list[Any] | None]
_END = object()


class _Prefetch:
    """Reads (and, once ``encoder`` is set, encodes) the next blocks on a helper thread.

    pyarrow releases the GIL, so the next block is parsed while this one is produced and
    while ``commit_transaction`` waits for the broker. Yields
    ``(block, end_offset, lines, encoded or None)``; errors of the helper are re-raised.
    """

    def __init__(self, blocks: Iterator[tuple[bytes, int]], depth: int = 1) -> None:
        self.encoder: Callable[[bytes, int], _Encoded | None] | None = None
        self._blocks = blocks
        self._queue: queue.Queue[Any] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="csv-kafka-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for block, end in self._blocks:
                lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
                encoder = self.encoder
                encoded = encoder(block, lines) if encoder is not None else None
                if not self._put((block, end, lines, encoded)):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consuming thread
            self._put(exc)

    def __iter__(self) -> Iterator[tuple[bytes, int, int, _Encoded | None]]:
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop the helper (it exits at its next block or channel read)."""
        self._stop.set()


def _touches(bad_lines: set[int], first: int, last: int) -> bool:
    """Whether any undecodable line lies in [first, last] (and forget the older ones)."""
    hit = False
    for n in list(bad_lines):
        if n <= last:
            bad_lines.discard(n)
            hit = hit or n >= first
    return hit


def _printable(text: str, encoding: str) -> str:
    """Text with undecodable bytes (surrogate escapes) shown as ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return original_bytes(text, encoding).decode(encoding, "backslashreplace")
