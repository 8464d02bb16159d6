"""Kills the process groups of a worker's ``subprocess`` runs when the worker dies.

A run's process gets ``PR_SET_PDEATHSIG`` (SIGTERM when the worker goes), but what
*it* started (a wrapper script's child) does not: after a SIGKILL or an OOM kill of the
worker, it lived on beside the redelivered message's new run. This small process,
started once per executor (``python -I -S group_guard.py WORKER_PID GRACE_S``, standard
library only), is told each run's process group on its stdin (``+PGID`` when the run
starts, ``-PGID`` once it is over). When the worker is gone (end of its stdin, or a new
parent), every group still listed gets SIGKILL, once its leader has taken the SIGTERM it
got (exited, or ``GRACE_S`` passed): the same stop as a run cancelled by the worker.

It ignores SIGINT/SIGTERM/SIGHUP: it ends with the worker, never before it.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

#: How often the worker's presence is checked besides the end of stdin, in seconds.
_POLL_S = 0.2


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:  # no /proc: the signal test (true for a zombie too)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _apply(groups: set[int], data: bytes) -> bytes:
    """Apply the complete ``+PGID`` / ``-PGID`` lines of ``data``; what is left of a line."""
    *lines, pending = data.split(b"\n")
    for line in lines:
        try:
            pgid = int(line[1:])
        except ValueError:
            continue
        if line.startswith(b"+"):
            groups.add(pgid)
        elif line.startswith(b"-"):
            groups.discard(pgid)
    return pending


def _read(groups: set[int], fd: int, owner: int) -> None:
    """Keep ``groups`` up to date from ``fd`` until the worker ``owner`` is gone."""
    pending = b""
    pruned = time.monotonic()
    while os.getppid() == owner:
        ready, _, _ = select.select([fd], [], [], _POLL_S)
        if time.monotonic() - pruned >= _POLL_S:
            # a group whose processes have all ended is over (should its ``-PGID`` never
            # come): forget it before its id can be reused
            pruned = time.monotonic()
            for pgid in list(groups):
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    groups.discard(pgid)
                except PermissionError:
                    pass
        if not ready:
            continue
        data = os.read(fd, 4096)
        if not data:
            return
        pending = _apply(groups, pending + data)
    # The worker is gone: what it told before it died may still wait unread (a guard
    # slow to start, on a busy machine, found its parent gone before its first read).
    os.set_blocking(fd, False)
    while True:
        try:
            data = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            return
        pending = _apply(groups, pending + data)


def _kill(groups: set[int], grace_s: float) -> None:
    """SIGKILL ``groups`` once their leaders are gone (or after ``grace_s``)."""
    if not sys.platform.startswith("linux"):  # no PR_SET_PDEATHSIG: the SIGTERM is ours
        for pgid in groups:
            try:
                os.kill(pgid, signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(pgid) for pgid in groups):
        time.sleep(0.02)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def main(argv: list[str]) -> int:
    """``group_guard.py WORKER_PID GRACE_S``, the groups on stdin."""
    owner, grace_s = int(argv[0]), float(argv[1])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    groups: set[int] = set()
    try:
        _read(groups, 0, owner)
    finally:
        _kill(groups, grace_s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
