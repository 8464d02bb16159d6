"""TxnSession against a real broker, fed from memory: block ends, resume, undecodable headers."""

from __future__ import annotations

import base64
import csv
import io
import random
import re
import time
from itertools import accumulate
from typing import Any, cast

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from kafka_support import latest_checkpoint, read_topic, unique_topic

from s3flow.errors import ConfigError, PermanentError, RetryableError, UndecodableContentError
from s3flow.local.kafka_broker import KafkaBroker
from s3flow.pipelines.csv_kafka.channel import ChunkChannel
from s3flow.pipelines.csv_kafka.checkpoint import Checkpoint, ObjectRef
from s3flow.pipelines.csv_kafka.options import CsvKafkaOptions, parse_options
from s3flow.pipelines.csv_kafka.session import TxnSession
from s3flow.pipelines.csv_kafka.topics import ensure_topics

pytestmark = [pytest.mark.integration]


class MemoryChannel:
    """What TxnSession reads: ``data`` in chunks of ``chunk`` bytes, then None."""

    def __init__(self, data: bytes, chunk: int = 1000) -> None:
        self._chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]

    def get(self) -> bytes | None:
        return self._chunks.pop(0) if self._chunks else None

    def abort(self) -> None:
        self._chunks.clear()


class Crash(Exception):
    """Stops a session right after a committed checkpoint (a worker dying there)."""


def options(kafka: KafkaBroker, **extra: Any) -> CsvKafkaOptions:
    opts = parse_options(
        {"topic": unique_topic("session"), "bootstrap_servers": kafka.bootstrap, **extra}
    )
    ensure_topics(opts)
    return opts


def run(
    opts: CsvKafkaOptions,
    ref: ObjectRef,
    data: bytes,
    *,
    stop_after: int | None = None,
    **sizes: int,
) -> list[Checkpoint]:
    """One attempt of ``ref`` (resuming from its checkpoint); the checkpoints it committed.

    With ``stop_after`` the attempt dies right after that many checkpoints.
    """
    seen: list[Checkpoint] = []

    def on_checkpoint(ckpt: Checkpoint) -> None:
        seen.append(ckpt)
        if stop_after is not None and len(seen) >= stop_after:
            raise Crash

    session = TxnSession(opts, ref, on_checkpoint=on_checkpoint, **sizes)
    try:
        ckpt = session.prepare()
        start = ckpt.offset if ckpt is not None else 0
        channel = cast(ChunkChannel, MemoryChannel(data[start:]))
        try:
            session.run(channel, ckpt)
        except Crash:
            pass
    finally:
        session.close()
    return seen


def values(kafka: KafkaBroker, topic: str) -> list[Any]:
    return [r.json() for r in read_topic(kafka.bootstrap, topic, with_headers=False)]


def test_a_quote_inside_an_unquoted_field_does_not_stop_block_ends(kafka: KafkaBroker) -> None:
    """`1,12" pipe` is a valid row: blocks (and checkpoints) keep ending at record ends.

    Counting quotes took that quote as opening a quoted field that never closed: the
    rest of the object became one block (one transaction, checkpoint_bytes ignored).
    """
    rows = ["id,size,note\n", '1,12" pipe,plain\n']
    for i in range(2, 400):
        note = f'"multi\nline {i}, with ""quotes"""' if i % 7 == 0 else f"note {i}"
        rows.append(f"{i},{i % 13}in,{note}\n")
    data = "".join(rows).encode()
    opts = options(kafka, checkpoint_bytes=1, checkpoint_rows=1_000_000)
    ref = ObjectRef("bucket", "stray-quote.csv", "v1")
    ckpts = run(opts, ref, data, piece_bytes=64, block_bytes=512)
    # Offsets where csv ends a record (the only safe places for a checkpoint).
    lines = io.StringIO(data.decode(), newline="").readlines()
    line_ends = [0, *accumulate(len(line.encode()) for line in lines)]
    reader = csv.reader(lines)
    expected = list(reader)
    record_ends = {0}
    reader = csv.reader(lines)
    for _ in reader:
        record_ends.add(line_ends[reader.line_num])
    assert len(ckpts) > len(data) // 1024, [c.offset for c in ckpts]
    assert {c.offset for c in ckpts} <= record_ends
    assert ckpts[-1].done and (ckpts[-1].sent, ckpts[-1].bad) == (399, 0)
    header = expected[0]
    assert values(kafka, opts.topic) == [dict(zip(header, r, strict=True)) for r in expected[1:]]
    assert values(kafka, opts.dlq_topic_name) == []


def test_resume_judges_column_counts_like_an_uninterrupted_run(kafka: KafkaBroker) -> None:
    """header = false, no columns: the width learned from the first row survives a resume."""
    data = b"a,b\nc,d\nx\ne,f\n"
    sizes = {"piece_bytes": 1, "block_bytes": 1}  # one line per block, a checkpoint each
    whole = options(kafka, header=False, checkpoint_rows=1)
    run(whole, ObjectRef("bucket", "narrow.csv", "v1"), data, **sizes)

    resumed = options(kafka, header=False, checkpoint_rows=1)
    ref = ObjectRef("bucket", "narrow.csv", "v1")
    first = run(resumed, ref, data, stop_after=2, **sizes)  # dies before the "x" row
    assert (first[-1].offset, first[-1].done) == (8, False)
    second = run(resumed, ref, data, **sizes)

    for opts in (whole, resumed):
        assert values(kafka, opts.topic) == [["a", "b"], ["c", "d"], ["e", "f"]]
        [dead] = values(kafka, opts.dlq_topic_name)
        assert (dead["line"], dead["reason"]) == (3, "expected 2 columns, got 1")
    assert second[-1].done and (second[-1].sent, second[-1].bad) == (3, 1)
    assert first[-1].ncols == second[-1].ncols == 2


def test_checkpoints_without_ncols_still_resume() -> None:
    """Checkpoints written before ``ncols`` existed decode (the count is learned again)."""
    old = b'{"object":"s3://b/k@v","offset":8,"row":2,"line":2,"sent":2,"bad":0,"columns":null}'
    assert Checkpoint.decode(old).ncols is None
    assert Checkpoint.decode(Checkpoint(object="x", ncols=3).encode()).ncols == 3


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_an_undecodable_header_row_is_a_permanent_error(kafka: KafkaBroker, bom: bytes) -> None:
    """Column names must be text: no retry loop, a message naming the byte."""
    data = bom + b"id,caf\xe9\n1,2\n"
    opts = options(kafka)
    with pytest.raises(UndecodableContentError) as err:
        run(opts, ObjectRef("bucket", "latin1-header.csv", "v1"), data)
    assert isinstance(err.value, PermanentError)
    assert str(err.value) == (
        f"s3://bucket/latin1-header.csv: header row is not valid utf-8 at byte {6 + len(bom)}"
    )
    assert values(kafka, opts.topic) == []


def test_a_message_that_is_not_text_is_a_permanent_error(kafka: KafkaBroker) -> None:
    """Whatever slips through: a UnicodeEncodeError from produce is not retried."""
    # A column name with a surrogate; the escape character keeps the csv module's path.
    opts = options(kafka, columns=["id", "caf\udce9"], header=False, escapechar="\\")
    with pytest.raises(UndecodableContentError, match="not valid text"):
        run(opts, ObjectRef("bucket", "names.csv", "v1"), b"1,2\n")


@pytest.mark.parametrize("bad_rows", ["dead-letter", "skip"])
def test_a_header_over_the_field_limit_fails_the_object(kafka: KafkaBroker, bad_rows: str) -> None:
    """A header the csv module cannot parse (a field over its 128 KiB limit) was
    dead-lettered and the first data row taken as the header: the run succeeded with rows
    {"1": "3", "2": "4"}, ... Now it fails like a header with an unclosed quote."""
    data = b"id," + b"h" * 140_000 + b"\n1,2\n3,4\n5,6\n"
    opts = options(kafka, bad_rows=bad_rows)
    with pytest.raises(PermanentError, match="the header row is not valid CSV"):
        run(opts, ObjectRef("bucket", "big-header.csv", "v1"), data)
    assert values(kafka, opts.topic) == []
    if bad_rows == "dead-letter":  # (skip: no DLQ topic)
        assert values(kafka, opts.dlq_topic_name) == []


def test_a_csv_error_in_a_multi_line_record_is_one_bad_row(kafka: KafkaBroker) -> None:
    """A quoted field over several lines and over the field limit: the inside of the
    field ("more, stuff") was sent as a good row and rows 2-4 vanished into an
    "unclosed quote" bad row. Now the record is one bad row and rows 2-4 are sent."""
    from s3flow.pipelines.csv_kafka.rows import MAX_RAW_CHARS

    big = "x" * 140_000
    data = f'id,v\n1,"{big}\nmore, stuff\n"\n2,ok\n3,ok\n4,ok\n'.encode()
    opts = options(kafka)
    ckpts = run(opts, ObjectRef("bucket", "big-multiline.csv", "v1"), data)
    assert values(kafka, opts.topic) == [{"id": str(i), "v": "ok"} for i in (2, 3, 4)]
    [dead] = values(kafka, opts.dlq_topic_name)
    assert (dead["line"], dead["fields"], dead["raw_truncated"]) == (2, None, True)
    assert dead["reason"] == (
        "unparseable CSV: field larger than field limit (131072) (lines 2-4, one record)"
    )
    assert dead["raw"] == f'1,"{big}'[:MAX_RAW_CHARS]
    assert ckpts[-1].done and (ckpts[-1].sent, ckpts[-1].bad, ckpts[-1].line) == (3, 1, 7)


def test_a_bad_row_of_large_fields_is_dead_lettered_and_the_rest_sent(
    kafka: KafkaBroker,
) -> None:
    """10 fields of 110 KB in a bad row: its `fields` were copied in full into the DLQ
    message, over the producer's message.max.bytes (MSG_SIZE_TOO_LARGE), and the object
    failed with nothing sent. Now the fields are cut (`fields_truncated`)."""
    big = [chr(ord("a") + i) * 110_000 for i in range(10)]
    data = ("a,b\n1,2\n" + ",".join(big) + "\n3,4\n").encode()
    opts = options(kafka)
    ckpts = run(opts, ObjectRef("bucket", "wide-bad-row.csv", "v1"), data)
    from s3flow.pipelines.csv_kafka.rows import MAX_FIELDS_CHARS, MAX_RAW_CHARS

    assert values(kafka, opts.topic) == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]
    [dead] = read_topic(kafka.bootstrap, opts.dlq_topic_name)
    doc = dead.json()
    assert (doc["line"], doc["reason"]) == (3, "expected 2 columns, got 10")
    assert (doc["raw_truncated"], doc["fields_truncated"]) == (True, True)
    assert doc["raw"] == ",".join(big)[:MAX_RAW_CHARS]
    assert sum(len(f) for f in doc["fields"]) <= MAX_FIELDS_CHARS
    assert len(dead.value) < 100_000  # far below message.max.bytes (1 MB)
    assert ckpts[-1].done and (ckpts[-1].sent, ckpts[-1].bad) == (2, 1)


@pytest.mark.parametrize("block_bytes", [64 * 1024, 4 * 1024 * 1024])
def test_a_good_row_over_message_max_bytes_is_a_bad_row_and_the_rest_sent(
    kafka: KafkaBroker, block_bytes: int
) -> None:
    """A good row of 10 fields of 110 KB makes a 1.1 MB message, over the producer's
    1 MB message.max.bytes: MSG_SIZE_TOO_LARGE failed the object on every attempt at
    that row, and no row after it was ever sent. It is a bad row now."""
    big = [chr(ord("a") + i) * 110_000 for i in range(10)]
    header = ",".join(f"c{i}" for i in range(10))
    small = ",".join("x" * 10)
    data = f"{header}\n{small}\n{','.join(big)}\n{small}\n{small}\n".encode()
    opts = options(kafka)
    ckpts = run(opts, ObjectRef("bucket", "huge-row.csv", "v1"), data, block_bytes=block_bytes)
    assert [row["c0"] for row in values(kafka, opts.topic)] == ["x", "x", "x"]
    [dead] = read_topic(kafka.bootstrap, opts.dlq_topic_name)
    doc = dead.json()
    assert doc["line"] == 3
    assert "over the producer's message.max.bytes (1000000)" in doc["reason"], doc["reason"]
    assert doc["raw_truncated"] is True and len(dead.value) < 100_000
    assert ckpts[-1].done and (ckpts[-1].sent, ckpts[-1].bad) == (3, 1)


def created_topic(kafka: KafkaBroker, config: dict[str, str]) -> str:
    """A new data topic of one partition with ``config``."""
    topic = unique_topic("session")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for future in admin.create_topics([NewTopic(topic, 1, 1, config=config)]).values():
        future.result()
    return topic


@pytest.mark.parametrize("block_bytes", [64 * 1024, 4 * 1024 * 1024])
def test_a_row_over_the_topics_max_message_bytes_is_a_bad_row_and_the_rest_sent(
    kafka: KafkaBroker, block_bytes: int
) -> None:
    """A topic with max.message.bytes = 20000 and a row of 40 KB: the broker refused its
    record batch (with the good rows in it) at the commit, and the object failed with
    "MSG_SIZE_TOO_LARGE: ProduceRequest ... with 3 message(s) failed" on every attempt,
    naming no row. The row is a bad row now, and batches of the small rows around it
    (260 KB of them, incompressible) stay under the topic's limit."""
    topic = created_topic(kafka, {"max.message.bytes": "20000"})
    opts = options(kafka, topic=topic)
    rng = random.Random(7)

    def text(n: int) -> str:
        return base64.b64encode(rng.randbytes(n)).decode()

    small = [f"{i},{text(90)}" for i in range(4000)]
    big = f"x,{text(30_000)}"
    data = "\n".join(["id,blob", *small[:2000], big, *small[2000:], ""]).encode()
    ckpts = run(opts, ObjectRef("bucket", "big-row.csv", "v1"), data, block_bytes=block_bytes)
    assert [row["id"] for row in values(kafka, topic)] == [str(i) for i in range(4000)]
    [dead] = read_topic(kafka.bootstrap, opts.dlq_topic_name)
    doc = dead.json()
    assert doc["line"] == 2002 and doc["raw_truncated"] is True
    assert f"over the topic '{topic}' max.message.bytes (20000)" in doc["reason"], doc["reason"]
    assert ckpts[-1].done and (ckpts[-1].sent, ckpts[-1].bad) == (4000, 1)


@pytest.mark.parametrize("rows", [2, 3000])
def test_a_message_the_broker_refuses_fails_the_object_naming_its_line(
    kafka: KafkaBroker, rows: int
) -> None:
    """A compacted data topic and no key_column: the broker refuses every message
    (INVALID_RECORD). The error was a retryable "commit_transaction failed: INVALID_RECORD
    ... Broker failed to validate record", retried until the retries ran out. It is a
    permanent error now naming the rows' lines and what to change, and no row is
    visible (no checkpoint either). With 3000 rows (blocks of 4 KB, one transaction)
    the first five are named and the rest counted."""
    topic = created_topic(kafka, {"cleanup.policy": "compact"})
    opts = options(kafka, topic=topic, checkpoint_rows=1_000_000)
    data = "".join(["a,b\n", *(f"{i},{i * 7}\n" for i in range(rows))]).encode()
    with pytest.raises(PermanentError) as err:
        run(opts, ObjectRef("bucket", "no-key.csv", "v1"), data, block_bytes=4096)
    text = str(err.value)
    named = "line 2, line 3" if rows == 2 else "line 2, line 3, line 4, line 5, line 6, "
    assert f"refused the messages of {named}" in text, text
    if rows > 2:  # the reports read before the error (the batch's, however they come in)
        found = re.search(rf"line 6, (\d+) more for topic '{topic}'", text)
        assert found is not None and 0 < int(found[1]) <= 2995, text
    assert "INVALID_RECORD" in text and "set key_column" in text, text
    assert values(kafka, topic) == []
    assert read_topic(kafka.bootstrap, opts.checkpoint_topic_name) == []


@pytest.mark.parametrize("absent", ["data", "checkpoint", "dlq"])
def test_a_missing_topic_without_create_topics_is_a_config_error_at_once(
    kafka: KafkaBroker, absent: str
) -> None:
    """create_topics = false and one topic missing: a missing checkpoint topic was
    retried until retry_timeout_s (120 s), then "run it again" (exit 1); a missing data
    topic failed after ~31 s. The topics are listed at start: a missing one is a
    permanent ConfigError at once, naming it and what to do."""
    opts = parse_options(
        {
            "topic": unique_topic("session"),
            "bootstrap_servers": kafka.bootstrap,
            "create_topics": False,
        }
    )
    names = {
        "data": opts.topic,
        "checkpoint": opts.checkpoint_topic_name,
        "dlq": opts.dlq_topic_name,
    }
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    made = [NewTopic(name, 1, 1) for what, name in names.items() if what != absent]
    for future in admin.create_topics(made).values():
        future.result()
    started = time.monotonic()
    with pytest.raises(ConfigError) as err:
        ensure_topics(opts)
    assert time.monotonic() - started < 10
    text = str(err.value)
    assert f"topic {names[absent]!r} does not exist and create_topics = false" in text, text
    assert "set create_topics = true" in text, text
    others = [name for what, name in names.items() if what != absent]
    assert all(repr(name) not in text for name in others), text


@pytest.mark.parametrize("rows", [4, 3000])
def test_bad_rows_are_dead_lettered_under_a_small_data_topic_limit(
    kafka: KafkaBroker, rows: int
) -> None:
    """A data topic with max.message.bytes = 2000 lowered the producer's
    message.max.bytes to 2000, and the first dead letter (raw and fields of up to 16 KiB
    each, with the reason twice) was over it: "Kafka produce to <topic>.dlq failed:
    MSG_SIZE_TOO_LARGE", a permanent error blaming the DLQ topic (limit 1 MB), and no row
    committed. A dead letter is now cut to fit (raw_truncated / fields_truncated); the
    good rows are committed once, in order."""
    topic = created_topic(kafka, {"max.message.bytes": "2000"})
    opts = options(kafka, topic=topic)
    good = [f"{i},{'v' * (i % 50)}" for i in range(rows)]
    wide = "1,2,3"
    long_row = "x," + "y" * 2498  # a good row of 2,500 characters: over the topic's limit
    many = ",".join("f" * 300 for _ in range(20))  # 20 fields: a dead letter of ~12 KB
    half = rows // 2
    data = "\n".join(["a,b", *good[:half], wide, long_row, many, *good[half:], ""]).encode()
    ckpts = run(opts, ObjectRef("bucket", "small-limit.csv", "v1"), data, block_bytes=4096)
    assert [row["a"] for row in values(kafka, topic)] == [str(i) for i in range(rows)]
    dead = read_topic(kafka.bootstrap, opts.dlq_topic_name)
    # a block's rows over the limit are dead-lettered after its other bad rows
    docs = sorted((d.json() for d in dead), key=lambda doc: int(doc["line"]))
    assert [d["line"] for d in docs] == [half + 2, half + 3, half + 4]
    assert docs[0]["reason"] == "expected 2 columns, got 3"
    assert (docs[0]["fields"], docs[0]["raw"], docs[0]["raw_truncated"]) == (
        ["1", "2", "3"],
        wide,
        False,
    )
    assert (
        f"its message of 2514 bytes is over the topic '{topic}' max.message.bytes (2000)"
        in (docs[1]["reason"])
    ), docs[1]["reason"]
    # its raw is the start of its message (the row's JSON), cut to fit
    assert docs[1]["raw_truncated"] is True and docs[1]["raw"].startswith('{"a":"x","b":"yyy')
    assert docs[2]["reason"] == "expected 2 columns, got 20"
    assert docs[2]["raw_truncated"] is True and docs[2]["fields_truncated"] is True
    assert many.startswith(docs[2]["raw"]) and len(docs[2]["raw"]) > 100
    assert all(len(d.value) < 2000 for d in dead)
    assert ckpts[-1].done and (ckpts[-1].sent, ckpts[-1].bad) == (rows, 3)


class FlushFirst:
    """A producer whose commit_transaction flushes the transaction's messages first."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def commit_transaction(self, timeout: float) -> None:
        self._producer.flush(30)
        self._producer.commit_transaction(timeout)


@pytest.mark.parametrize("settle_s", [0.0, 3.0])
def test_a_commit_given_up_client_side_is_settled_by_the_broker_and_resumed_once(
    kafka: KafkaBroker, monkeypatch: pytest.MonkeyPatch, settle_s: float
) -> None:
    """retry_timeout_s run out while commit_transaction waits: the session gives up on
    the commit, which goes on in the background. It used to try abort_transaction then
    (refused: "_CONFLICT Conflicting commit_transaction API call is already in
    progress"); now it leaves the transaction to the broker, and the next session of the
    object (init_transactions waits for that transaction's outcome) resumes from
    whichever checkpoint is committed: every row once, in order. ``settle_s``: the
    producer is kept that long before it is closed, so that the commit goes through on
    the broker (3 s) or, closed at once, is aborted by the next producer's fence (0)."""
    from s3flow.pipelines.csv_kafka import session as session_mod

    opts = options(kafka, checkpoint_rows=500)
    ref = ObjectRef("bucket", "given-up.csv", "v1")
    data = "".join(["a,b\n", *(f"{i},{i % 7}\n" for i in range(5000))]).encode()
    session = TxnSession(opts, ref, block_bytes=4096, clock=session_mod.RetryClock(0))
    try:
        ckpt = session.prepare()
        if settle_s:  # the messages flushed first: the commit times out waiting for EndTxn
            session._producer = cast(Producer, FlushFirst(session._producer))
        monkeypatch.setattr(session_mod, "MIN_WAIT_S", 0.0005)  # each commit: 0.5 ms
        with pytest.raises(RetryableError, match="did not complete"):
            session.run(cast(ChunkChannel, MemoryChannel(data)), ckpt)
        time.sleep(settle_s)
    finally:
        session.close()
    monkeypatch.undo()
    given_up = latest_checkpoint(kafka.bootstrap, opts.checkpoint_topic_name)
    if settle_s:  # the commit given up on went through: its rows and checkpoint stay
        assert given_up is not None and given_up.row > 0
    ckpts = run(opts, ref, data, block_bytes=4096)
    assert ckpts[-1].done and (ckpts[-1].row, ckpts[-1].sent) == (5000, 5000)
    assert [row["a"] for row in values(kafka, opts.topic)] == [str(i) for i in range(5000)]
