"""The ``subprocess`` executor with real processes: commands that are scripts standing in
for ``s3flow run`` (they ignore their arguments and print a result line)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import s3flow
from s3flow.errors import Disposition
from s3flow.events import ObjectEvent
from s3flow.executors.base import ObjectJob
from s3flow.executors.command import SubprocessExecutor
from s3flow.settings import SubprocessExecutorSettings

DONE = json.dumps({"status": "done", "outputs": ["s3://out/a.json"], "counters": {"lines": 3}})


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-s3flow"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def job(timeout_s: float) -> ObjectJob:
    return ObjectJob(
        processor="line-count",
        options={},
        event=ObjectEvent(bucket="in", key="a.txt"),
        output="s3://out/",
        pipeline="p",
        route="default",
        worker_id="w1",
        max_uncompressed_bytes=1000,
        timeout_s=timeout_s,
    )


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, killed but not reaped yet, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def test_a_run_that_exits_is_done_though_a_child_it_left_holds_stdout(
    tmp_path: Path,
) -> None:
    """A wrapper whose background child inherited stdout: the run waited for stdout to
    close, went past job_timeout_s and was dead-lettered, and the child (ignoring
    SIGTERM) lived on, since the stop skipped the group kill of an exited process."""
    pid_file = tmp_path / "child.pid"
    command = script(
        tmp_path, f"(trap '' TERM; exec sleep 300) &\necho $! > {pid_file}\necho '{DONE}'\nexit 0"
    )
    ex = SubprocessExecutor(SubprocessExecutorSettings(command=[str(command)], kill_after_s=1))
    started = time.monotonic()
    result = await ex.run(job(timeout_s=20))
    assert time.monotonic() - started < 10
    assert result.outputs == ["s3://out/a.json"] and result.counters == {"lines": 3}
    child = int(pid_file.read_text())
    for _ in range(100):  # up to 5 s
        if not alive(child):
            break
        await asyncio.sleep(0.05)
    assert not alive(child), "the process the run left behind was not killed"
    await ex.close()


@pytest.mark.parametrize(
    ("sig", "name"), [(signal.SIGSEGV, "SIGSEGV"), (signal.SIGKILL, "SIGKILL")]
)
async def test_a_run_killed_by_a_signal_is_named_by_it(
    tmp_path: Path, sig: signal.Signals, name: str
) -> None:
    """It said "ended without an exit code", whatever the signal."""
    command = script(tmp_path, f"echo 'about to crash' >&2\nkill -{sig.name[3:]} $$")
    ex = SubprocessExecutor(SubprocessExecutorSettings(command=[str(command)]))
    with pytest.raises(Exception) as caught:
        await ex.run(job(timeout_s=20))
    assert f"was killed by {name}: about to crash" in str(caught.value)
    assert caught.value.disposition is Disposition.RETRYABLE  # type: ignore[attr-defined]
    await ex.close()


async def test_a_run_cancelled_after_its_process_exited_still_ends_what_it_left(
    tmp_path: Path,
) -> None:
    """Cancelled (a shutdown) while the pipes of an exited run drained, the group kill
    was skipped: the left-behind process lived on and the pipe readers leaked."""
    pid_file = tmp_path / "child.pid"
    command = script(
        tmp_path, f"(trap '' TERM; exec sleep 300) &\necho $! > {pid_file}\necho '{DONE}'\nexit 0"
    )
    ex = SubprocessExecutor(SubprocessExecutorSettings(command=[str(command)], kill_after_s=1))
    run = asyncio.create_task(ex.run(job(timeout_s=20)))
    for _ in range(200):  # up to 10 s for the script to exit
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # exited; its child holds stdout: the run drains the pipes
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await ex.close()
    child = int(pid_file.read_text())
    for _ in range(100):
        if not alive(child):
            break
        await asyncio.sleep(0.05)
    assert not alive(child), "the process the run left behind was not killed"
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftovers == []


_WORKER = """
import asyncio, sys
from s3flow.events import ObjectEvent
from s3flow.executors.base import ObjectJob
from s3flow.executors.command import SubprocessExecutor
from s3flow.settings import SubprocessExecutorSettings

job = ObjectJob(processor="line-count", options={}, event=ObjectEvent(bucket="in", key="a"),
                output="s3://out/", timeout_s=300)
ex = SubprocessExecutor(SubprocessExecutorSettings(command=[sys.argv[1]], kill_after_s=1))
asyncio.run(ex.run(job))
"""


@pytest.mark.parametrize("trap", ["", "trap '' TERM\n"], ids=["wrapper", "deaf-wrapper"])
def test_what_a_run_started_dies_with_the_worker(tmp_path: Path, trap: str) -> None:
    """A wrapper script's child (not exec'd) lived on with PPID 1 after a SIGKILL of the
    worker, running beside the redelivered message's new run: only the wrapper got the
    parent-death signal. A wrapper deaf to it goes too, after kill_after_s."""
    pid_file = tmp_path / "grandchild.pid"
    command = script(
        tmp_path,
        f"{trap}sleep 300 &\necho $! > {pid_file}.tmp\nmv {pid_file}.tmp {pid_file}\nwait",
    )
    src = Path(s3flow.__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(command)], env=env)
    grandchild = None
    try:
        for _ in range(200):  # up to 10 s for the run to start its child
            if pid_file.exists():
                break
            assert worker.poll() is None, "the worker ended early"
            time.sleep(0.05)
        grandchild = int(pid_file.read_text())
        assert alive(grandchild)
        worker.kill()
        worker.wait()
        for _ in range(100):  # up to 5 s
            if not alive(grandchild):
                break
            time.sleep(0.05)
        assert not alive(grandchild), "what the run started outlived the worker"
    finally:
        worker.kill()
        worker.wait()
        if grandchild is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild, signal.SIGKILL)


async def test_a_guard_that_died_is_started_again(tmp_path: Path) -> None:
    """The guard of the runs' groups, killed while the worker lives, is replaced at the
    next run (and told the runs still going); close ends it."""
    ex = SubprocessExecutor(
        SubprocessExecutorSettings(command=[str(script(tmp_path, f"echo '{DONE}'"))])
    )
    await ex.run(job(timeout_s=20))
    first = ex._guard
    assert first is not None and first.returncode is None
    first.kill()
    await first.wait()
    result = await ex.run(job(timeout_s=20))
    assert result.outputs == ["s3://out/a.json"]
    second = ex._guard
    assert second is not None and second is not first and second.returncode is None
    await ex.close()
    assert second.returncode == 0 and ex._guard is None


async def test_a_run_started_while_its_guard_is_replaced_is_told_to_the_new_one(
    tmp_path: Path,
) -> None:
    """A run that took the guard's socket just before a dead guard was replaced told
    only the old one: the new guard, listing the runs it found, did not know it, and
    what the run started outlived the worker."""
    pid_file = tmp_path / "grandchild.pid"
    command = script(
        tmp_path, f"sleep 300 &\necho $! > {pid_file}.tmp\nmv {pid_file}.tmp {pid_file}\nwait"
    )

    class Racing(SubprocessExecutor):
        raced = False

        async def _guarded(self) -> Any:
            sock = await super()._guarded()
            if not self.raced:  # the guard dies and is replaced before this run starts
                self.raced = True
                assert self._guard is not None
                self._guard.kill()
                await self._guard.wait()
                await super()._guarded()
            return sock

    ex = Racing(SubprocessExecutorSettings(command=[str(command)], kill_after_s=1))
    run = asyncio.create_task(ex.run(job(timeout_s=60)))
    grandchild = None
    try:
        for _ in range(200):  # up to 10 s for the run to start its child
            if pid_file.exists():
                break
            await asyncio.sleep(0.05)
        grandchild = int(pid_file.read_text())
        assert ex.raced and alive(grandchild)
        # The worker gone, as the guard sees it: the end of its socket.
        ex._close_guard_socket()
        for _ in range(400):  # up to 20 s (a busy machine starts the guard slowly)
            if not alive(grandchild):
                break
            await asyncio.sleep(0.05)
        assert not alive(grandchild), "the new guard did not know the run"
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await ex.close()
        if grandchild is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild, signal.SIGKILL)


def test_a_guard_that_finds_its_worker_gone_still_kills_the_groups_it_was_told(
    tmp_path: Path,
) -> None:
    """A guard slow to start (a busy machine) found its worker already dead before its
    first read and ended without reading what the worker had told it: the run's group
    outlived the worker (seen once in a full CI run)."""
    import s3flow.executors.group_guard as guard_module

    victim = subprocess.Popen(["sleep", "300"], start_new_session=True)  # its own group
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"+%d\n" % victim.pid)
        # Its "worker" is a pid that is not its parent: gone, as far as it can tell.
        guard = subprocess.Popen(
            [sys.executable, "-I", "-S", guard_module.__file__, "1", "0.2"], stdin=read_end
        )
        assert guard.wait(10) == 0
        for _ in range(100):  # up to 5 s
            if victim.poll() is not None:
                break
            time.sleep(0.05)
        assert victim.poll() is not None, "the group the guard was told of lives on"
    finally:
        os.close(read_end)
        os.close(write_end)
        victim.kill()
        victim.wait()
