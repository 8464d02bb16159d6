"""The local executor: priorities, errors as s3flow errors, a dead worker (real processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from s3flow.errors import Disposition, RetryableError, S3flowError
from s3flow.pipelines.ndjson_parquet.compaction.executors import LocalExecutor
from s3flow.pipelines.ndjson_parquet.compaction.tasks import InputChangedError

pytestmark = pytest.mark.timeout(60)


def _sleep_and_stamp(seconds: float) -> float:
    time.sleep(seconds)
    return time.monotonic()  # CLOCK_MONOTONIC: comparable across processes


def _raise_permanent(_: int) -> None:
    raise InputChangedError("s3://b/k is gone")


def _raise_other(_: int) -> None:
    raise KeyError("boom")


def _die(_: int) -> None:
    os._exit(3)


def _pid(_: int) -> int:
    return os.getpid()


def test_older_work_goes_first() -> None:
    async def main() -> tuple[list[float], list[float]]:
        ex = LocalExecutor(1)
        try:
            await ex.warm()
            old = asyncio.ensure_future(ex.map(_sleep_and_stamp, [0.05] * 2, priority=1.0))
            new = asyncio.ensure_future(ex.map(_sleep_and_stamp, [0.05] * 6, priority=2.0))
            await asyncio.sleep(0)
            # Submitted later, but older: must overtake the queued newer tasks.
            older_next = asyncio.ensure_future(ex.map(_sleep_and_stamp, [0.05] * 2, priority=1.0))
            done_old, done_new, done_older = await asyncio.gather(old, new, older_next)
            return done_old + done_older, done_new
        finally:
            await ex.close()

    first, later = asyncio.run(main())
    assert max(first) < max(later)
    assert sum(t > max(first) for t in later) >= 3


def test_worker_errors_keep_class_and_disposition() -> None:
    async def main() -> None:
        ex = LocalExecutor(1)
        try:
            with pytest.raises(S3flowError) as info:
                await ex.map(_raise_permanent, [1])
            assert info.value.error_class == "InputChangedError"
            assert info.value.disposition is Disposition.PERMANENT
            assert "is gone" in str(info.value)
            with pytest.raises(S3flowError) as info2:
                await ex.map(_raise_other, [1])
            assert info2.value.disposition is Disposition.RETRYABLE
            assert "KeyError" in str(info2.value)
        finally:
            await ex.close()

    asyncio.run(main())


def test_a_dead_worker_is_retryable_and_the_pool_recovers() -> None:
    async def main() -> None:
        ex = LocalExecutor(1)
        try:
            with pytest.raises(RetryableError, match="worker process died"):
                await ex.map(_die, [1])
            pids = await ex.map(_pid, [1, 2])
            assert all(p != os.getpid() for p in pids)
        finally:
            await ex.close()

    asyncio.run(main())


def test_the_pool_children_die_with_a_sigkilled_worker(tmp_path: Path) -> None:
    """Each SIGKILL of a worker left its compaction children running (~120 MB apiece)."""
    script = tmp_path / "owner.py"
    script.write_text(
        "import asyncio, time\n"
        "from s3flow.pipelines.ndjson_parquet.compaction.executors import LocalExecutor\n"
        "if __name__ == '__main__':\n"
        "    ex = LocalExecutor(2)\n"
        "    asyncio.run(ex.warm())\n"
        "    print(' '.join(str(p) for p in ex._pool._processes), flush=True)\n"
        "    time.sleep(120)\n"
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)  # polled: the kernel's signal or the watcher's exit
        assert not [p for p in pids if _alive(p)], "pool children outlived the worker"
    finally:
        owner.kill()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, reaped by init soon, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_an_unexpected_error_of_a_files_scan_names_the_file() -> None:
    """A manifest failed with "ArrowInvalid: Max recursion depth reached" and no file
    named: an operator could not tell which of its files to look at."""
    from types import SimpleNamespace

    from s3flow.pipelines.ndjson_parquet.compaction.manifest import InputFile
    from s3flow.pipelines.ndjson_parquet.compaction.tasks import TaskError, capture

    def scan(task: object) -> None:
        raise ValueError("Max recursion depth reached")

    err = capture(scan)(SimpleNamespace(file=InputFile("b", "raw/a.ndjson")))
    assert isinstance(err, TaskError) and err.disposition == Disposition.RETRYABLE.value
    assert err.message == "s3://b/raw/a.ndjson: ValueError: Max recursion depth reached"
    other = capture(scan)(SimpleNamespace())  # a task of no one file
    assert other.message == "ValueError: Max recursion depth reached"


@pytest.mark.parametrize(
    ("exc", "disposition"),
    [
        (pa.ArrowInvalid("Length spanned by list offsets (2) larger than values array"), "p"),
        (pa.ArrowTypeError("cannot cast"), "p"),
        (pa.ArrowNotImplementedError("Unsupported cast"), "p"),
        (pa.ArrowMemoryError("malloc failed"), "r"),
        (OSError("No space left on device"), "r"),
    ],
)
def test_pyarrow_refusing_the_data_fails_the_task_for_good(
    exc: Exception, disposition: str
) -> None:
    """An invalid table failed its manifest as a retryable error: every retry failed
    the same way until the queue dead-lettered it. pyarrow refusing the data is
    permanent; its memory and I/O errors may pass and stay retryable."""
    from types import SimpleNamespace

    from s3flow.pipelines.ndjson_parquet.compaction.manifest import InputFile
    from s3flow.pipelines.ndjson_parquet.compaction.tasks import TaskError, capture

    def scan(task: object) -> None:
        raise exc

    err = capture(scan)(SimpleNamespace(file=InputFile("b", "raw/a.ndjson")))
    assert isinstance(err, TaskError)
    want = Disposition.PERMANENT if disposition == "p" else Disposition.RETRYABLE
    assert err.disposition == want.value
    assert err.message.startswith(f"s3://b/raw/a.ndjson: {type(exc).__name__}: ")
