"""Parallel mode (``ranges``): one object as byte ranges, range i to partition i, each
exactly once and resumable; compressed objects stream whole. Real moto S3 + a real broker."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest
from kafka_support import CheckpointWatcher, cli, command, read_topic, summary, unique_topic

from s3flow.local.endpoint import LocalEndpoint
from s3flow.local.kafka_broker import KafkaBroker

pytestmark = [pytest.mark.integration]

ROWS = 300_000  # ~7 MB: three ranges of > 1 MiB


def _csv() -> bytes:
    return ("n,word\n" + "".join(f"{i},w{i % 977}\n" for i in range(ROWS))).encode()


def _ranged(bucket: str, topic: str, *extra: str) -> tuple[str, ...]:
    """Batch-command arguments: big.csv in 3 ranges to a 3-partition topic."""
    return (
        f"s3://{bucket}/big.csv",
        *("--topic", topic, "-o", "ranges=3", "-o", "topic_partitions=3"),
        *extra,
    )


def _partitions(kafka: KafkaBroker, topic: str, n: int) -> list[list[Any]]:
    return [read_topic(kafka.bootstrap, topic, partition=p, timeout_s=120) for p in range(n)]


def _check_ranges(kafka: KafkaBroker, topic: str, n: int) -> list[list[Any]]:
    """Every row exactly once; each partition one contiguous run of rows, in order."""
    parts = _partitions(kafka, topic, n)
    seen: list[int] = []
    for p, rows in enumerate(parts):
        numbers = [int(r.json()["n"]) for r in rows]
        assert numbers, f"partition {p} is empty"
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), p
        assert {r.headers["s3.range"].split(b"/")[0] for r in rows} == {str(p).encode()}
        seen += numbers
    assert sorted(seen) == list(range(ROWS)), f"{len(seen)} rows, {len(set(seen))} distinct"
    return parts


@pytest.mark.timeout(240)
def test_three_ranges_to_three_partitions_exactly_once_then_a_no_op(
    endpoint: LocalEndpoint, s3: Any, bucket: str, kafka: KafkaBroker, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="big.csv", Body=_csv())
    topic = unique_topic("ranges")
    args = _ranged(bucket, topic)
    out = summary(cli(tmp_path, kafka, *args))
    assert (out["rows"], out["records"], out["already_done"]) == (ROWS, ROWS, False)
    parts = _check_ranges(kafka, topic, 3)
    # The header row is only in range 0; every range names the columns from it.
    assert set(parts[2][0].json()) == {"n", "word"}
    # s3.line counts lines within the range (the header is line 1 of range 0).
    assert parts[0][0].headers["s3.line"] == b"2"
    assert parts[1][0].headers["s3.line"] == b"1"
    again = summary(cli(tmp_path, kafka, *args))
    assert again["already_done"] is True and again["rows"] == ROWS
    assert sum(len(p) for p in _partitions(kafka, topic, 3)) == ROWS  # nothing re-sent


@pytest.mark.timeout(240)
def test_columns_given_with_a_header_row_lose_no_range_s_first_row(
    endpoint: LocalEndpoint, s3: Any, bucket: str, kafka: KafkaBroker, tmp_path: Path
) -> None:
    """``columns`` override the header's names; the header row is still range 0's only:
    a later range's first row is a row (it was dropped as a header)."""
    s3.put_object(Bucket=bucket, Key="big.csv", Body=_csv())
    topic = unique_topic("ranges-cols")
    out = summary(cli(tmp_path, kafka, *_ranged(bucket, topic, "-o", 'columns=["n","word"]')))
    assert (out["rows"], out["records"]) == (ROWS, ROWS)
    parts = _check_ranges(kafka, topic, 3)
    assert set(parts[2][0].json()) == {"n", "word"}


@pytest.mark.timeout(240)
def test_sigkill_mid_run_then_every_range_resumes_exactly_once(
    endpoint: LocalEndpoint, s3: Any, bucket: str, kafka: KafkaBroker, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="big.csv", Body=_csv())
    topic = unique_topic("rangekill")
    args = _ranged(bucket, topic, "--checkpoint-rows", "5000")
    watcher = CheckpointWatcher(kafka.bootstrap, f"{topic}.checkpoints")
    proc = subprocess.Popen(
        command(tmp_path, kafka, *args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        committed = 0
        while committed < 2 and proc.poll() is None:  # a few range checkpoints in
            before = watcher.latest
            if watcher.poll(0.1) is not before:
                committed += 1
        assert proc.poll() is None, "the run ended before it could be killed"
        family = psutil.Process(proc.pid).children(recursive=True)
        assert _range_processes(proc.pid), "no range process left to orphan"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)
        watcher.close()
    _assert_all_gone(family)  # no orphans: the range processes die with the parent
    final = summary(cli(tmp_path, kafka, *args))
    assert final["rows"] == ROWS and final["resumed_from_row"] > 0
    _check_ranges(kafka, topic, 3)


def _nominal_cuts(data: bytes, n: int) -> list[int]:
    """Where the planner cuts ``data`` into ``n`` ranges: after the first line feed at or
    after each nominal cut ``i * size / n - 1`` (ranges.plan_ranges)."""
    return [data.index(b"\n", i * len(data) // n - 1) + 1 for i in range(1, n)]


@pytest.mark.timeout(240)
def test_no_header_and_a_short_first_row_of_a_range_only_that_row_is_bad(
    endpoint: LocalEndpoint, s3: Any, bucket: str, kafka: KafkaBroker, tmp_path: Path
) -> None:
    """Without a header row every range expects the object's first row's column count:
    a malformed row that happens to start a range is the only bad row (its range no
    longer learns the count from it and dead-letters all its good rows)."""
    rows = [f"{i},w{i % 977},x" for i in range(ROWS)]
    data = "".join(f"{r}\n" for r in rows).encode()
    cut = _nominal_cuts(data, 3)[0]
    bad = data[:cut].count(b"\n")  # the row range 1 starts with
    rows[bad] = rows[bad].replace(",x", "_x")  # one field short, same length: same cuts
    s3.put_object(Bucket=bucket, Key="big.csv", Body="".join(f"{r}\n" for r in rows).encode())
    topic = unique_topic("ranges-short")
    out = summary(cli(tmp_path, kafka, *_ranged(bucket, topic, "--no-header")))
    assert (out["rows"], out["bad_rows"], out["records"]) == (ROWS - 1, 1, ROWS)
    seen: list[int] = []
    for p, part in enumerate(_partitions(kafka, topic, 3)):
        values = [r.json() for r in part]
        assert all(len(v) == 3 for v in values), p
        numbers = [int(v[0]) for v in values]
        assert numbers == sorted(numbers), p  # in order within the range
        seen += numbers
    assert seen == [i for i in range(ROWS) if i != bad]  # every good row once, in order
    dlq = read_topic(kafka.bootstrap, f"{topic}.dlq")
    assert [(d.json()["line"], d.json()["raw"]) for d in dlq] == [(1, rows[bad])]
    assert dlq[0].json()["reason"] == "expected 3 columns, got 2"
    assert dlq[0].headers["s3.range"].startswith(b"1/3@%d-" % cut)


@pytest.mark.timeout(240)
def test_blank_lines_before_the_header_row_are_skipped_by_every_range(
    endpoint: LocalEndpoint, s3: Any, bucket: str, kafka: KafkaBroker, tmp_path: Path
) -> None:
    """The later ranges read the header's names from the object's first record, blank
    lines skipped as the single-range path skips them (the object failed: "no header
    row in the first line")."""
    s3.put_object(Bucket=bucket, Key="big.csv", Body=b"\r\n\n" + _csv())
    topic = unique_topic("ranges-blank")
    out = summary(cli(tmp_path, kafka, *_ranged(bucket, topic)))
    assert (out["rows"], out["bad_rows"]) == (ROWS, 0)
    parts = _check_ranges(kafka, topic, 3)
    assert set(parts[2][0].json()) == {"n", "word"}
    assert parts[0][0].headers["s3.line"] == b"4"  # two blank lines, the header, row 0


def _range_processes(pid: int) -> list[psutil.Process]:
    """The range processes of run ``pid`` (children of its forkserver)."""
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        with_parent = child.parent()
        if with_parent is not None and with_parent.pid != pid:
            out.append(child)
    return out


def _assert_all_gone(procs: list[psutil.Process], timeout_s: float = 15) -> None:
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    assert not alive, [p.cmdline() for p in alive]


def _wait_for_checkpoints(watcher: CheckpointWatcher, proc: Any, n: int) -> None:
    committed = 0
    while committed < n and proc.poll() is None:
        before = watcher.latest
        if watcher.poll(0.1) is not before:
            committed += 1
    assert proc.poll() is None, "the run ended too early"


@pytest.mark.timeout(240)
def test_sigkill_of_one_range_process_restarts_it_and_every_row_is_sent_once(
    endpoint: LocalEndpoint, s3: Any, bucket: str, kafka: KafkaBroker, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="big.csv", Body=_csv())
    topic = unique_topic("rangechild")
    # Small transactions: every range is still running after the first commit.
    args = _ranged(bucket, topic, "--checkpoint-rows", "1000")
    watcher = CheckpointWatcher(kafka.bootstrap, f"{topic}.checkpoints")
    proc = subprocess.Popen(
        command(tmp_path, kafka, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for_checkpoints(watcher, proc, 1)
        victims = _range_processes(proc.pid)
        assert victims, "every range ended before one could be killed"
        seen = [(v.pid, v.ppid(), v.cmdline()[-3:]) for v in victims]
        victims[-1].send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
        proc.wait(30)
        watcher.close()
    assert proc.returncode == 0, err[-3000:]
    assert "starting it again from its checkpoint" in err, (
        seen,
        err[-3000:],
    )
    done = json.loads(out.strip().splitlines()[-1])
    assert (done["rows"], done["records"]) == (ROWS, ROWS)
    _check_ranges(kafka, topic, 3)
    again = summary(cli(tmp_path, kafka, *args))
    assert again["already_done"] is True
    assert sum(len(p) for p in _partitions(kafka, topic, 3)) == ROWS


@pytest.mark.timeout(240)
def test_sigterm_of_the_parent_leaves_no_range_process_and_a_rerun_completes(
    endpoint: LocalEndpoint, s3: Any, bucket: str, kafka: KafkaBroker, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="big.csv", Body=_csv())
    topic = unique_topic("rangeterm")
    args = _ranged(bucket, topic, "--checkpoint-rows", "5000")
    watcher = CheckpointWatcher(kafka.bootstrap, f"{topic}.checkpoints")
    proc = subprocess.Popen(
        command(tmp_path, kafka, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_checkpoints(watcher, proc, 1)
        family = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        proc.kill()
        proc.wait(30)
        watcher.close()
    _assert_all_gone(family)
    final = summary(cli(tmp_path, kafka, *args))
    assert final["rows"] == ROWS
    _check_ranges(kafka, topic, 3)


@pytest.mark.timeout(180)
def test_a_compressed_object_streams_whole_to_partition_0(
    endpoint: LocalEndpoint, s3: Any, bucket: str, kafka: KafkaBroker, tmp_path: Path
) -> None:
    s3.put_object(Bucket=bucket, Key="big.csv.gz", Body=gzip.compress(_csv(), 1))
    topic = unique_topic("rangegz")
    args = (f"s3://{bucket}/big.csv.gz", "--topic", topic, "-o", "ranges=3")
    out = summary(cli(tmp_path, kafka, *args, "-o", "topic_partitions=3"))
    assert out["rows"] == ROWS
    first, second, third = _partitions(kafka, topic, 3)
    assert [int(json.loads(r.value)["n"]) for r in first] == list(range(ROWS))
    assert second == third == []
    assert "s3.range" not in first[0].headers


def test_ranges_need_single_partitioning_and_enough_partitions(
    kafka: KafkaBroker, tmp_path: Path
) -> None:
    bad = cli(tmp_path, kafka, "s3://b/k.csv", "--topic", "t", "-o", "ranges=4")
    assert bad.returncode == 2
    assert "ranges = 4 needs topic_partitions >= 4" in bad.stderr


@pytest.mark.timeout(240)
def test_a_failing_range_gives_its_own_error_not_a_traceback(
    endpoint: LocalEndpoint, s3: Any, bucket: str, kafka: KafkaBroker, tmp_path: Path
) -> None:
    body = _csv().replace(b"\n250000,w", b"\n250000;w", 1)  # one column: a bad row
    s3.put_object(Bucket=bucket, Key="big.csv", Body=body)
    run = cli(tmp_path, kafka, *_ranged(bucket, unique_topic("rfail"), "--bad-rows", "fail"))
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "ExceptionGroup" not in run.stderr, run.stderr
    assert "error:" in run.stderr and "expected 2 columns" in run.stderr, run.stderr
