"""Child processes that never outlive their owner (s3flow.local: popen_owned, die_with_parent)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from s3flow.local import endpoint as local
from s3flow.local.endpoint import OWNER_PID_ENV, interrupt_on_signals, popen_owned

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")

# An owner that starts `sleep` (which watches nothing itself: only the kernel's parent
# death signal can stop it) from its main thread or from a thread that exits at once,
# prints the sleeper's pid and waits to be killed.
OWNER = r"""
import os, sys, threading, time
from s3flow.local.endpoint import popen_owned
box = []
if sys.argv[1] == "thread":
    starter = threading.Thread(target=lambda: box.append(popen_owned(["sleep", "300"])))
    starter.start()
    starter.join()
    while os.path.exists(f"/proc/self/task/{starter.native_id}"):
        time.sleep(0.01)
else:
    box.append(popen_owned(["sleep", "300"]))
print(box[0].pid, flush=True)
sys.stdin.readline()
"""

# A python child that watches its owner with die_with_parent(), the parent death signal
# disabled so that only the getppid() watch can notice the owner is gone.
WATCHER = r"""
import sys, time
from s3flow.local import endpoint as local
local.set_parent_death_signal = lambda sig=15: False
print(local.die_with_parent(), flush=True)
time.sleep(300)
"""
WATCHER_OWNER = r"""
import subprocess, sys
from s3flow.local.endpoint import popen_owned
child = popen_owned([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE)
assert child.stdout is not None
print(child.pid, child.stdout.readline().decode().strip(), flush=True)
sys.stdin.readline()
"""


def _wait(cond: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet is not running)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture()
def spawned() -> Iterator[list[int]]:
    """Pids a test starts (owners and their children), SIGKILLed if still there at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _owner(code: str, arg: str, spawned: list[int]) -> tuple[subprocess.Popen[bytes], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code, arg],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    spawned.append(proc.pid)
    assert proc.stdout is not None
    words = proc.stdout.readline().decode().split()
    assert words, "the owner printed nothing"
    spawned.append(int(words[0]))
    return proc, words


@pytest.mark.parametrize("where", ["main", "thread"])
def test_child_gets_sigterm_when_owner_is_killed(where: str, spawned: list[int]) -> None:
    owner, words = _owner(OWNER, where, spawned)
    child = int(words[0])
    # From a thread: the child survived that thread's exit (the signal is per thread).
    assert _alive(child)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(timeout=10)
    _wait(lambda: not _alive(child), 5, f"child {child} to exit")


def test_python_child_notices_a_killed_owner_by_watching_getppid(spawned: list[int]) -> None:
    owner, words = _owner(WATCHER_OWNER, WATCHER, spawned)
    child, watching = int(words[0]), words[1]
    assert watching == "True"
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(timeout=10)
    _wait(lambda: not _alive(child), 5, f"child {child} to exit")


def test_die_with_parent_exits_at_once_when_the_owner_is_already_gone() -> None:
    # The owner named in the environment is not our parent any more: it died (and we
    # were reparented) before the death signal was armed.
    code = (
        "from s3flow.local.endpoint import die_with_parent; die_with_parent(); print('still here')"
    )
    env = {**os.environ, OWNER_PID_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert "still here" not in out.stdout
    assert "owner process 1 is gone" in out.stderr


def test_die_with_parent_does_nothing_without_an_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OWNER_PID_ENV, raising=False)
    assert local.die_with_parent() is False


def test_popen_owned_tells_the_child_its_owner() -> None:
    code = f"import os; print(os.environ['{OWNER_PID_ENV}'])"
    proc = popen_owned([sys.executable, "-c", code], stdout=subprocess.PIPE, env={"A": "1"})
    out, _ = proc.communicate(timeout=60)
    assert out.decode().strip() == str(os.getpid())


def test_interrupt_on_signals_turns_sigterm_into_keyboard_interrupt_once() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with pytest.raises(KeyboardInterrupt), interrupt_on_signals():
        try:
            signal.raise_signal(signal.SIGTERM)
            raise AssertionError("SIGTERM did not interrupt")
        finally:
            signal.raise_signal(signal.SIGINT)  # during the cleanup: ignored
            signal.raise_signal(signal.SIGTERM)
    assert {sig: signal.getsignal(sig) for sig in before} == before
