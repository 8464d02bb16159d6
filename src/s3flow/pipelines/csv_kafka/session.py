"""One object's transactional producer and its produce loop (synchronous, in a thread).

Lifecycle (each call blocks; the runner calls them off the event loop)::

    session = TxnSession(opts, ref)
    ckpt = session.prepare(hint)   # producer, init_transactions (fences a zombie), checkpoint
    final = session.run(channel, ckpt)   # rows in transactions of ~checkpoint_rows rows
    session.close()                # aborts an open transaction, purges, destroys the producer

The object is cut into blocks (~512 KiB of line-aligned pieces ending where ``csv.reader``
ends a record: see :class:`~s3flow.pipelines.csv_kafka.blocks.RecordEnds`), and
:class:`~s3flow.pipelines.csv_kafka.rows.RowBatches` turns each block into the messages
of its rows: a block of one-line records in UTF-8 is parsed and encoded by pyarrow
(:mod:`.fastpath`), any other block by the ``csv`` module; a helper thread prepares the
next block meanwhile. After the block that completes ``checkpoint_rows`` rows (or
``checkpoint_s`` seconds, or ``checkpoint_bytes``), the open transaction gets the
checkpoint record and is committed: the rows and the position after them become
visible together.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from itertools import islice, repeat
from operator import length_hint
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from s3flow.errors import S3flowError, UndecodableContentError
from s3flow.pipelines.csv_kafka.blocks import (
    BLOCK_BYTES,
    PIECE_BYTES,
    UTF8_BOM,
    Block,
    BlockCutter,
    BlockEncoder,
    PieceSplitter,
    RecordEnds,
)
from s3flow.pipelines.csv_kafka.channel import ChunkChannel
from s3flow.pipelines.csv_kafka.checkpoint import (
    Checkpoint,
    ObjectRef,
    checkpoint_partition,
    read_checkpoint,
)
from s3flow.pipelines.csv_kafka.clientlog import client_log
from s3flow.pipelines.csv_kafka.errors import (
    KafkaPermanentError,
    KafkaUnavailableError,
    ProducerFencedError,
    is_fenced,
    is_too_large,
    translate_kafka_error,
)
from s3flow.pipelines.csv_kafka.options import CsvKafkaOptions, admin_config
from s3flow.pipelines.csv_kafka.rows import (
    FIELD_OVERHEAD,
    BadRow,
    RowBatches,
    fields_excerpt,
    original_bytes,
)
from s3flow.pipelines.csv_kafka.topics import message_limit

log = logging.getLogger("s3flow.pipelines.csv_kafka")

_COMMIT_ATTEMPTS = 5
#: The least a wait for the broker is given when ``retry_timeout_s`` has (nearly) run
#: out: a healthy broker's commit or start-up is not cut short by a small setting.
MIN_WAIT_S = 5.0
#: Blocks (~512 KiB each) read and encoded ahead of the produce loop: the same bytes
#: ahead as one block of 1 MiB before. 3 blocks of 1 MiB were tried (parsing while
#: ``commit_transaction`` waits) but lifted the 2 GiB run's peak RSS over its 250 MB
#: bound (255.8 MB in a fresh clone) for a gain too small to measure here.
PREFETCH_BLOCKS = 2
#: Messages produced per ``map`` run (~1.3 ms): a thread waiting for the GIL gets it
#: between two runs (a run holds it throughout; a whole block's, ~13 ms, left the
#: prefetch thread waiting that long for each of its ~15 GIL acquisitions per block, and
#: the produce loop then waited for blocks: 18% of its time, 4% with runs of 512).
SEND_SLICE = 512
_PARTITION_ANY = -1  # librdkafka's RD_KAFKA_PARTITION_UA: the partitioner decides
_PRODUCER_MAX_BYTES = 1_000_000  # librdkafka's default message.max.bytes
_MIN_MAX_BYTES = 1000  # the lowest message.max.bytes librdkafka takes
#: What a dead letter leaves of ``message.max.bytes`` for the record's and its record
#: batch's own bytes (a batch of one record: 61 bytes of batch header, ~30 of record).
_DLQ_MARGIN = 128
#: Messages the transaction's abort or the producer's close purged: not refused.
_PURGED = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}
#: Refused deliveries kept to name in the error (all are counted).
_REFUSED_KEPT = 5


class RetryClock:
    """How long an object may still wait for Kafka: ``retry_timeout_s`` from its start,
    and again from each committed checkpoint (progress).

    Each blocking call (``init_transactions``, ``commit_transaction``, metadata, the
    checkpoint read, a full queue) waits at most what is left, and no less than
    :data:`MIN_WAIT_S`: a broker down makes the object fail within about
    ``retry_timeout_s`` (each commit attempt waited ``transaction.timeout.ms``, five
    times: 5 minutes whatever the setting)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def progress(self) -> None:
        """A checkpoint was committed: the broker works; the whole window is left again."""
        self.end = time.monotonic() + self.seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def wait(self, usual: float) -> float:
        """How long a call that would wait ``usual`` seconds may wait now."""
        return min(usual, max(self.left(), MIN_WAIT_S))


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
        ncols: int | None = None,
        clock: RetryClock | None = None,
    ) -> None:
        """``ncols``: the expected column count of every row, when known beforehand (a
        range of an object without header and columns: its first record's); else the
        column names' count, or the first row's (kept in the checkpoint). ``clock``:
        what is left of ``retry_timeout_s`` (the runner's, shared by its attempts)."""
        self.opts = opts
        self._ncols = ncols
        self.ref = ref
        self._on_checkpoint = on_checkpoint or (lambda c: None)
        self._piece_bytes = piece_bytes
        self._block_bytes = block_bytes
        self._producer: Producer | None = None
        self._in_txn = False
        #: A commit gave up on waiting (client side): it goes on in the background and
        #: the broker settles it; abort_transaction would be refused (_CONFLICT).
        self._commit_pending = False
        self._clock = clock or RetryClock(opts.retry_timeout_s)
        self._ckpt_partition = 0
        self._ckpt_key = ref.checkpoint_key(opts.topic, opts.checkpoint_topic_name)
        self._scan_from = 0
        self._timeout = opts.transaction_timeout_ms / 1000
        self.commit_seconds = 0.0
        self._max_bytes = int(opts.producer_config.get("message.max.bytes", _PRODUCER_MAX_BYTES))
        self._topic_limit: str | None = None  # the topic setting that lowered _max_bytes
        #: Messages the broker did not take (delivery reports): (topic, value, error)
        self._refused: list[tuple[str, bytes | None, KafkaError]] = []
        self._refused_count = 0
        #: The open transaction's rows (values, lines), to tell a refused message's line
        #: (delivery reports carry no headers)
        self._txn_rows: list[tuple[Sequence[str | bytes], Sequence[int]]] = []

    # --- lifecycle ---------------------------------------------------------------------

    def prepare(self, hint: int = 0) -> Checkpoint | None:
        """Start the producer (fencing any earlier one of this object); read the checkpoint.

        ``hint``: an offset of the checkpoint partition known to precede this object's
        checkpoints (from the state store mirror), or 0.
        """
        conf = producer_config(self.opts, self.ref)
        self._limit_to_topics(conf)
        # Every message a delivery fails for is reported here (delivery.report.only.error:
        # no call for the delivered ones); a failure aborts the transaction.
        conf["on_delivery"] = self._delivery_failed
        producer = Producer(conf, logger=client_log)
        self._producer = producer
        clock = self._clock
        self._call(
            lambda: producer.init_transactions(clock.wait(self._timeout)), "init_transactions"
        )
        topic = self.opts.checkpoint_topic_name
        meta = self._call(lambda: producer.list_topics(topic, timeout=clock.wait(30)), "metadata")
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise KafkaUnavailableError(
                f"checkpoint topic {topic!r} is not available: {info.error if info else 'missing'}"
            )
        self._ckpt_partition = checkpoint_partition(self._ckpt_key, len(info.partitions))
        ckpt, end = read_checkpoint(
            self.opts.bootstrap(),
            topic,
            self._ckpt_partition,
            self._ckpt_key,
            start_offset=hint,
            # Not cut to retry_timeout_s: an open transaction on the checkpoint partition
            # (another object's crashed producer, a commit left to the broker) holds the
            # read for up to transaction.timeout.ms.
            timeout_s=self._timeout + 30,
        )
        self._scan_from = ckpt.scan_from if ckpt is not None else end
        return ckpt

    def _limit_to_topics(self, conf: dict[str, Any]) -> None:
        """Lower the producer's ``message.max.bytes`` to the smallest ``max.message.bytes``
        of the topics it writes to. The broker checks a record batch against its topic's
        limit only when it arrives, and a refused batch fails the transaction (and with it
        the object, on every attempt); the producer refuses a message over its own limit
        at once (a bad row, below) and builds no batch over it."""
        opts = self.opts
        topics = [opts.topic, opts.checkpoint_topic_name]
        if opts.bad_rows == "dead-letter":
            topics.append(opts.dlq_topic_name)
        found = message_limit(admin_config(opts), topics)
        if found is None:
            return
        limit, topic = found
        limit = max(limit, _MIN_MAX_BYTES)
        if limit < self._max_bytes:
            self._max_bytes = limit
            self._topic_limit = f"topic {topic!r} max.message.bytes"
            conf["message.max.bytes"] = limit

    def _delivery_failed(self, err: KafkaError | None, msg: Message) -> None:
        """A delivery report (failures only): keep which message the broker refused
        (not those purged, nor those of a producer fenced or failed for good: its own
        error says more)."""
        if err is None or err.code() in _PURGED or err.fatal() or is_fenced(err):
            return
        self._refused_count += 1
        if len(self._refused) < _REFUSED_KEPT:
            self._refused.append((msg.topic() or "?", msg.value(), err))

    def _refused_lines(self) -> list[str]:
        """Where each kept refused message comes from: ``line N`` (its row's first line,
        found by its value among the open transaction's rows, in order), ``the bad row of
        line N`` (a dead letter), ``the checkpoint``, or ``a message``."""
        opts = self.opts
        rows = [
            (v, line)
            for values, lines in self._txn_rows
            for v, line in zip(values, lines, strict=False)
        ]
        taken: set[int] = set()
        out = []
        for topic, value, _ in self._refused:
            what = "a message"
            if topic == opts.topic and value is not None:
                for i, (v, line) in enumerate(rows):
                    mine = v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v
                    if i not in taken and mine == value:
                        taken.add(i)  # a row given twice: each report takes the next one
                        what = f"line {line}"
                        break
            elif topic == opts.dlq_topic_name and value is not None:
                try:
                    what = f"the bad row of line {json.loads(value)['line']}"
                except (ValueError, KeyError, TypeError):
                    pass
            elif topic == opts.checkpoint_topic_name:
                what = "the checkpoint"
            out.append(what)
        return out

    def _refused_error(self, producer: Producer, cause: BaseException) -> S3flowError | None:
        """The error naming the messages the broker refused, when it refused some (the
        transaction then failed: none of its rows is visible), else None."""
        if isinstance(cause, ProducerFencedError):
            return None  # another producer owns the object now
        if not self._refused:
            # the reports come with the producer's next poll (a produce() or commit
            # refused for the failed transaction may come first)
            kafka = isinstance(cause, (KafkaUnavailableError, KafkaPermanentError))
            for wait in (0, 1.0) if kafka else (0,):
                producer.poll(wait)
                if self._refused:
                    break
            else:
                return None
        # The rest of the refused batch's reports come in over a few polls: read them
        # (up to a second) so that the count the error gives is the batch's.
        deadline = time.monotonic() + 1.0
        seen = -1
        while self._refused_count != seen and time.monotonic() < deadline:
            seen = self._refused_count
            producer.poll(0.05)
        topic, _, err = self._refused[0]
        where = self._refused_lines()
        more = self._refused_count - len(self._refused)
        if more > 0:
            where.append(f"{more} more")
        text = (
            f"{self.ref.uri}: Kafka refused the messages of {', '.join(where)} for topic "
            f"{topic!r}: {err.name()}: {err.str()}{_refused_hint(err, self.opts.key_column)}; "
            "the transaction was aborted (none of its rows is visible; the rows of earlier "
            f"transactions stay) ({cause})"
        )
        if err.retriable() or err.code() in (KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT):
            return KafkaUnavailableError(text)
        return KafkaPermanentError(text)

    def close(self) -> None:
        """Abort an open transaction (its rows never become visible) and drop the producer."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if self._commit_pending:
            # Neither abort (_CONFLICT: the commit is in progress) nor purge (the commit
            # may still be flushing): the broker commits the transaction (rows and
            # checkpoint) or aborts it, and the next producer of this transactional.id
            # waits for that in init_transactions, then reads the checkpoint it left.
            self._in_txn = self._commit_pending = False
            log.info(
                "%s: the unfinished commit is left to the broker: a rerun resumes from "
                "whichever checkpoint it committed",
                self.ref.uri,
            )
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
        if self._ncols is not None:
            state.ncols = self._ncols  # RowBatches judges the rows by it
        try:
            self._run(producer, channel, state)
        except S3flowError as exc:
            refused = self._refused_error(producer, exc)
            if refused is None:
                raise
            raise refused from exc
        finally:
            channel.abort()  # stop the feeder whatever happened
        if opts.bad_rows == "skip" and state.bad:
            log.info("%s: %d bad rows skipped", self.ref.uri, state.bad)
        return state

    def _pieces(self, channel: ChunkChannel, state: Checkpoint) -> Iterator[tuple[bytes, int]]:
        """(piece, object offset after it): the line-aligned pieces of the channel's data."""
        splitter = PieceSplitter(self._piece_bytes)
        pos = state.offset
        bom = state.offset == 0 and self.opts.encoding == "utf-8"
        fed = (piece for chunk in iter(channel.get, None) for piece in splitter.feed(chunk))
        for piece in itertools.chain(fed, splitter.finish()):
            pos += len(piece)
            if bom:
                bom = False
                if piece.startswith(UTF8_BOM):
                    piece = piece[len(UTF8_BOM) :]
            yield piece, pos

    def _cutter(self) -> BlockCutter:
        """Groups the pieces into blocks ending where ``csv.reader`` ends a record."""
        opts = self.opts
        ends = RecordEnds(
            delimiter=opts.delimiter,
            quotechar=opts.quotechar,
            escapechar=opts.escapechar,
            encoding=opts.encoding,
        )
        return BlockCutter(ends, self._block_bytes, self.ref.uri)

    def _run(self, producer: Producer, channel: ChunkChannel, state: Checkpoint) -> None:
        opts, ref = self.opts, self.ref
        topic = opts.topic
        partition = opts.partition if opts.partitioning == "single" else _PARTITION_ANY
        ckpt_rows, ckpt_s, ckpt_bytes = (
            opts.checkpoint_rows,
            opts.checkpoint_s,
            opts.checkpoint_bytes,
        )
        records = RowBatches(opts, ref.where, state)
        const_headers: list[tuple[str, str | bytes | None]] | None = None
        if opts.headers:
            # Header values as UTF-8 bytes: the same bytes on the wire as ``str`` values,
            # without an encode per header and message in the client.
            const_headers = [
                ("s3.bucket", ref.bucket.encode()),
                ("s3.key", ref.key.encode()),
                ("s3.version", ref.version.encode()),
            ]
            if ref.part:
                const_headers.append(("s3.range", ref.part.encode()))

        send = self._sender(producer, topic, partition, const_headers)
        max_bytes, topic_limit = self._max_bytes, self._topic_limit
        row, sent, bad = state.row, state.sent, state.bad
        txn_rows = txn_bytes = 0
        last_commit = time.monotonic()
        self._begin(producer)
        ahead = _Prefetch(self._cutter(), self._pieces(channel, state), PREFETCH_BLOCKS)
        try:
            for batch in records.batches(ahead, ahead.encode_with):
                too_large = send(batch.values, batch.keys, batch.lines)
                self._txn_rows.append((batch.values, batch.lines))
                for dead in batch.dead:
                    self._dead_letter(producer, dead, const_headers)
                for i in too_large:  # a bad row too: the rest of the object goes on
                    for dead in records.unsendable(
                        batch.lines[i], batch.values[i], max_bytes, topic_limit
                    ):
                        self._dead_letter(producer, dead, const_headers)
                row += batch.rows
                sent += len(batch.values) - len(too_large)
                bad += batch.bad + len(too_large)
                txn_rows += batch.rows
                txn_bytes += batch.size
                if (
                    txn_rows >= ckpt_rows
                    or txn_bytes >= ckpt_bytes
                    or time.monotonic() - last_commit >= ckpt_s
                ):
                    producer.poll(0)
                    state.offset, state.row, state.line = batch.end, row, batch.line
                    state.sent, state.bad = sent, bad
                    self._commit(producer, state, final=False)
                    txn_rows = txn_bytes = 0
                    last_commit = time.monotonic()
                state.offset, state.line = batch.end, batch.line
        finally:
            ahead.close()
        state.row, state.sent, state.bad, state.done = row, sent, bad, True
        self._commit(producer, state, final=True)

    # --- helpers ---------------------------------------------------------------------------

    def _sender(
        self,
        producer: Producer,
        topic: str,
        partition: int,
        const_headers: list[tuple[str, str | bytes | None]] | None,
    ) -> Callable[[Sequence[str | bytes], Sequence[Any] | None, Sequence[int]], list[int]]:
        """A function producing a batch's messages, in order, each with its headers; it
        returns the indexes of those over the producer's ``message.max.bytes`` (not sent).

        The per-message work runs in C (``map`` over the batch, ``produce`` called with
        positional arguments, each message's header list built by ``map`` and ``zip``):
        no Python bytecode per row. When the producer's queue is full (``BufferError``),
        the rest of the batch goes one message at a time, waiting for room.
        """
        produce = producer.produce
        none, zero = repeat(None), repeat(0)
        topics, partitions = repeat(topic), repeat(partition)
        line_name = repeat("s3.line")
        add_const = const_headers.__add__ if const_headers is not None else None

        def headers_of(lines: Sequence[int]) -> Iterator[Any]:
            if add_const is None:
                return none
            # [*const_headers, ("s3.line", b"<line>")] for each message
            return map(
                add_const, map(list, zip(zip(line_name, map(b"%d".__mod__, lines), strict=False)))
            )

        def send(
            values: Sequence[str | bytes], keys: Sequence[Any] | None, lines: Sequence[int]
        ) -> list[int]:
            pending = iter(values)
            calls = map(
                produce,
                topics,
                pending,
                none if keys is None else keys,
                partitions,
                none,  # on_delivery
                none,  # callback
                zero,  # timestamp: now
                headers_of(lines),
            )
            try:
                for _ in range(0, len(values), SEND_SLICE):
                    # a bytecode between slices: a thread waiting for the GIL gets it
                    deque(islice(calls, SEND_SLICE), 0)
                return []
            except BufferError:
                pass  # the queue is full
            except KafkaException as exc:
                if not is_too_large(exc):
                    raise translate_kafka_error(exc, f"produce to {topic}") from exc
            except UnicodeEncodeError as exc:
                raise self._not_text(topic, exc) from exc
            # The message that did not go, and every one after it: one at a time.
            too_large = []
            for i in range(len(values) - length_hint(pending) - 1, len(values)):
                headers = None if add_const is None else add_const([("s3.line", b"%d" % lines[i])])
                key = None if keys is None else keys[i]
                if not self._produce(producer, topic, values[i], key, partition, headers, True):
                    too_large.append(i)
            return too_large

        return send

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        try:
            return fn()
        except KafkaException as exc:
            raise translate_kafka_error(exc, what) from exc

    def _begin(self, producer: Producer) -> None:
        self._call(producer.begin_transaction, "begin_transaction")
        self._in_txn = True
        self._txn_rows.clear()

    def _produce(
        self,
        producer: Producer,
        topic: str,
        value: str | bytes,
        key: str | None,
        partition: int,
        headers: list[tuple[str, str | bytes | None]] | None,
        too_large_ok: bool = False,
    ) -> bool:
        """produce(), waiting for room while the producer's queue is full. False: the
        message is over ``message.max.bytes`` and ``too_large_ok`` (not sent). A queue
        that stays full (the broker gone) for what the retry clock allows is an
        unavailable broker."""
        give_up = None
        while True:
            try:
                producer.produce(topic, value, key, partition, headers=headers)
                return True
            except BufferError:
                now = time.monotonic()
                if give_up is None:
                    give_up = now + self._clock.wait(self._timeout)
                elif now > give_up:
                    raise KafkaUnavailableError(
                        f"{self.ref.uri}: Kafka produce to {topic}: the producer's queue "
                        f"stayed full for {self._clock.wait(self._timeout):.0f}s (is the "
                        "broker reachable?)"
                    ) from None
                producer.poll(0.05)
            except KafkaException as exc:
                if too_large_ok and is_too_large(exc):
                    return False
                raise translate_kafka_error(exc, f"produce to {topic}") from exc
            except UnicodeEncodeError as exc:
                raise self._not_text(topic, exc) from exc

    def _not_text(self, topic: str, exc: UnicodeEncodeError) -> UndecodableContentError:
        """A message that is not valid text (undecodable bytes in it): a permanent error."""
        return UndecodableContentError(
            f"{self.ref.uri}: a message for {topic} is not valid text "
            f"(undecodable bytes, not {self.opts.encoding}): {exc}"
        )

    def _dead_letter(
        self,
        producer: Producer,
        bad: BadRow,
        const_headers: list[tuple[str, str | bytes | None]] | None,
    ) -> None:
        """Send a bad row to the dead-letter topic: where it is, why, and its content.

        The message is cut to the producer's ``message.max.bytes`` (its ``raw`` and
        ``fields`` shortened, ``raw_truncated`` / ``fields_truncated`` set): a topic's
        smaller ``max.message.bytes`` lowers that limit for every topic the producer
        writes to (record batches are sized by it), so a dead letter of 16 KiB of raw
        text and as much of fields would be refused whatever the DLQ topic's own limit.
        """
        ref, encoding = self.ref, self.opts.encoding
        doc = {
            "bucket": ref.bucket,
            "key": ref.key,
            "version": ref.version,
            "line": bad.line,
            "reason": bad.reason,
            "fields": (
                [_printable(f, encoding) for f in bad.fields] if bad.fields is not None else None
            ),
            "raw": _printable(bad.raw, encoding) if bad.raw is not None else None,
            "raw_truncated": bad.raw_truncated,
            "fields_truncated": bad.fields_truncated,
        }
        headers: list[tuple[str, str | bytes | None]] = [
            *(const_headers or []),
            ("s3.line", str(bad.line)),
            ("error", bad.reason),
        ]
        topic = self.opts.dlq_topic_name
        room = self._max_bytes - _DLQ_MARGIN
        for _ in range(4):
            value = _fit_dead_letter(doc, _headers_size(headers), room)
            if value is not None and self._produce(
                producer, topic, value, None, _PARTITION_ANY, headers, True
            ):
                return
            room //= 2  # librdkafka counted more than we did: cut further
        limit = f", lowered to the {self._topic_limit}" if self._topic_limit else ""
        raise KafkaPermanentError(
            f"{ref.uri}: the dead letter of line {bad.line} does not fit the producer's "
            f"message.max.bytes ({self._max_bytes}{limit}) even without its raw text and "
            "fields: raise it"
        )

    def _commit(self, producer: Producer, state: Checkpoint, *, final: bool) -> None:
        """Add the checkpoint to the open transaction and commit it; begin the next one."""
        state.transactions += 1
        state.updated_at = time.time()
        self._produce(
            producer,
            self.opts.checkpoint_topic_name,
            state.encode(),
            self._ckpt_key,
            self._ckpt_partition,
            None,
        )
        started = time.monotonic()
        clock = self._clock
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            try:
                # A call that times out leaves the commit going on in the background:
                # calling it again resumes it (and nothing else may be called meanwhile).
                producer.commit_transaction(clock.wait(self._timeout))
                break
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                retriable = bool(err is not None and err.retriable())
                if retriable and attempt < _COMMIT_ATTEMPTS and clock.left() > 0:
                    log.info("%s: commit_transaction: %s; retrying", self.ref.uri, exc)
                    continue
                if err is not None and err.txn_requires_abort():
                    self._in_txn = False
                    try:
                        producer.abort_transaction(clock.wait(self._timeout))
                    except KafkaException:
                        pass
                elif retriable and err is not None:
                    self._commit_pending = True
                    out = f" (retry_timeout_s = {clock.seconds:g})" if clock.left() <= 0 else ""
                    raise KafkaUnavailableError(
                        f"{self.ref.uri}: Kafka commit_transaction did not complete in "
                        f"{time.monotonic() - started:.0f}s{out}: {err.name()}: "
                        f"{err.str()}; the broker commits or aborts that transaction (its "
                        "rows and checkpoint together): a rerun resumes from the last "
                        "committed checkpoint"
                    ) from exc
                raise translate_kafka_error(exc, "commit_transaction") from exc
        self.commit_seconds += time.monotonic() - started
        clock.progress()
        self._in_txn = False
        self._on_checkpoint(replace(state))
        if not final:
            self._begin(producer)


_END = object()


class _Prefetch:
    """Cuts (and, once an encoder is set, encodes) the next blocks on a helper thread.

    pyarrow releases the GIL, so the next block is parsed while this one is produced and
    while ``commit_transaction`` waits for the broker. Yields
    ``(block, end_offset, lines, encoded or None)``; errors of the helper are re-raised.
    """

    def __init__(
        self, cutter: BlockCutter, pieces: Iterator[tuple[bytes, int]], depth: int = 1
    ) -> None:
        self._cutter = cutter
        self._pieces = pieces
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
            for block in self._cutter.blocks(self._pieces):
                if not self._put(block):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consuming thread
            self._put(exc)

    def encode_with(self, encoder: BlockEncoder) -> None:
        """Encode the blocks cut from now on with ``encoder`` (on the helper thread)."""
        self._cutter.encoder = encoder

    def __iter__(self) -> Iterator[Block]:
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


def _refused_hint(err: KafkaError, key_column: str | None) -> str:
    """What to check for a message the broker refused with ``err`` (or "")."""
    code = err.code()
    if code == KafkaError.MSG_SIZE_TOO_LARGE:
        return (
            " (a record batch over the topic's max.message.bytes: raise it, or lower batch_bytes)"
        )
    if code == KafkaError.INVALID_RECORD:
        hint = " (a compacted topic takes only messages with a key"
        return hint + (": set key_column)" if not key_column else ")")
    if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
        return " (the producer's principal may not write to the topic)"
    if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
        return " (the topic does not exist: create it, or set create_topics = true)"
    return ""


def _headers_size(headers: Sequence[tuple[str, str | bytes | None]]) -> int:
    """What ``headers`` add to a message's size (names and values, in bytes)."""
    return sum(
        len(name.encode()) + len(value.encode() if isinstance(value, str) else value or b"")
        for name, value in headers
    )


def _fit_dead_letter(doc: dict[str, Any], headers_size: int, room: int) -> str | None:
    """``doc`` as JSON of at most ``room`` bytes with ``headers_size`` bytes of headers:
    its ``raw`` and ``fields`` cut (and marked truncated) as far as needed (``doc`` is
    updated); None when it does not fit even without them."""
    value = json.dumps(doc, ensure_ascii=False)
    size = len(value.encode("utf-8")) + headers_size
    if size <= room:
        return value
    raw, fields = doc["raw"], doc["fields"]
    bare = dict(doc, raw="" if raw is not None else None, fields=[] if fields else fields)
    fixed = len(json.dumps(bare, ensure_ascii=False).encode("utf-8")) + headers_size
    if fixed > room:
        return None
    raw_chars = len(raw or "")
    fields_chars = sum(len(f) + FIELD_OVERHEAD for f in fields or ())
    while size > room:
        # the share of the content that fits, a little less (escapes, multi-byte text)
        share = (room - fixed) / (size - fixed) * 0.9
        raw_chars = min(raw_chars - 1, int(raw_chars * share))
        fields_chars = min(fields_chars - 1, int(fields_chars * share))
        if raw is not None:
            doc["raw"] = raw[: max(raw_chars, 0)]
            doc["raw_truncated"] = doc["raw_truncated"] or len(doc["raw"]) < len(raw)
        if fields:
            kept, cut = fields_excerpt(fields, max(fields_chars, 0))
            doc["fields"] = kept
            doc["fields_truncated"] = doc["fields_truncated"] or cut
        value = json.dumps(doc, ensure_ascii=False)
        size = len(value.encode("utf-8")) + headers_size
    return value


def _printable(text: str, encoding: str) -> str:
    """Text with undecodable bytes (surrogate escapes) shown as ``\\xNN``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return original_bytes(text, encoding).decode(encoding, "backslashreplace")
