"""The status counters after a worker is killed (SIGKILL) mid-transition, on both backends.

A child process drives one store like a worker does: tasks claim objects and
complete, fail, dead-letter or release them, and an operator's set_status
sends completed and dead ones back. It is SIGKILLed, then the counters are
compared with a full recount (``recount``, what ``s3flow state recount`` runs).

- ``random``: three children, each killed at a seeded random moment while 8
  tasks transition.
- ``window``: one task; the child stops inside a transition, where it hurts
  most, and is killed there: on SQLite after the counters' change and before
  the record's (same transaction), on DynamoDB after the record's write and
  before the counters' ``ADD``.

SQLite: the counters equal the recount every time (one transaction). DynamoDB:
a transition whose ``ADD`` was not sent is missing from the counters (the crash
window, see :mod:`s3flow.state.dynamodb.counters`): at most one per task in
flight; ``recount(repair=True)`` then makes them exact again.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from s3flow.state import DynamoStateStore, SqliteStateStore, StateStore

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("S3FLOW_ITEST_CRASH_SEED", "20261130"))

_CHILD = textwrap.dedent(
    """
    import asyncio, random, sys, time
    from s3flow.settings import AwsSettings
    from s3flow.state import ClaimOutcome, DynamoStateStore, FileStatus, ObjectId, SqliteStateStore
    import s3flow.state.sqlite.files as sqlite_files

    kind, where, prefix, mode, tag, tasks = sys.argv[1:7]
    tasks = int(tasks)

    def hang_sqlite(*args):
        print("in window", flush=True)  # inside the transaction, counters already changed
        time.sleep(3600)

    async def main():
        if kind == "sqlite":
            store = SqliteStateStore(where)
        else:
            store = DynamoStateStore(prefix, AwsSettings(endpoint_url=where, region="us-east-1"))
        async with store:
            done = 0

            async def hang_dynamo(*args, **kwargs):
                print("in window", flush=True)  # the record is written, the ADD never sent
                await asyncio.sleep(3600)

            def transitioned():
                nonlocal done
                done += 1
                if done == 30:
                    print("ready", flush=True)
                    if mode == "window":
                        if kind == "sqlite":
                            sqlite_files.file_row = hang_sqlite
                        else:
                            store._add_counts = hang_dynamo

            async def task(t):
                rnd = random.Random(f"{tag}-{t}")
                for i in range(10**9):
                    o = ObjectId("b", f"{tag}/{t}/{i % 25}", "v")
                    c = await store.claim(o, pipeline=f"p{t % 2}", owner=f"{tag}{t}", ttl_s=600)
                    if c.outcome is not ClaimOutcome.ACQUIRED:
                        await store.set_status(o, FileStatus.RECEIVED, detail="sent back")
                        transitioned()
                        continue
                    transitioned()
                    r = rnd.random()
                    if r < 0.55:
                        await store.complete(o, token=c.token, outputs=["x"])
                    elif r < 0.75:
                        await store.fail(o, token=c.token, status=FileStatus.FAILED,
                                         error_class="E", error="retry")
                    elif r < 0.9:
                        await store.fail(o, token=c.token, status=FileStatus.DEAD,
                                         error_class="E", error="dead")
                    else:
                        await store.release(o, token=c.token)
                    transitioned()

            await asyncio.gather(*(task(t) for t in range(tasks)))

    asyncio.run(main())
    """
)


def _kill_child(
    store: StateStore, mode: str, tag: str, tasks: int, delay_s: float
) -> subprocess.Popen[str]:
    if isinstance(store, SqliteStateStore):
        args = ["sqlite", store.path, "-"]
    else:
        assert isinstance(store, DynamoStateStore)
        args = ["dynamodb", str(store._aws.endpoint_url), store.table_prefix]
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args, mode, tag, str(tasks)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 60
        want = "in window" if mode == "window" else "ready"
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"the child exited early ({proc.poll()})"
            if line.strip() == want:
                break
        time.sleep(delay_s)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return proc


@pytest.mark.parametrize("make_store", ["sqlite", "dynamodb-atomic"], indirect=True)
@pytest.mark.parametrize("mode", ["random", "window"])
async def test_counters_match_a_recount_after_sigkill(store: StateStore, mode: str) -> None:
    rnd = random.Random(SEED)
    rounds, tasks = (3, 8) if mode == "random" else (1, 1)
    for r in range(rounds):
        delay = rnd.uniform(0, 0.4) if mode == "random" else 0.0
        await asyncio.to_thread(_kill_child, store, mode, f"r{r}", tasks, delay)
    # A request the child sent just before it died is still served: let the server finish.
    await asyncio.sleep(0.5)
    report = await store.recount()
    assert report.items_read > 0
    if isinstance(store, SqliteStateStore):
        assert report.consistent, report.drift  # the transaction died whole
    else:
        drift = [n for per in report.drift.values() for n in per.values()]
        if mode == "window":
            # Exactly the transition caught in the window: -1 on its new status (and +1 on
            # its old one, unless it created the record).
            assert sorted(drift) in ([-1], [-1, 1]), report.drift
        else:
            assert sum(abs(n) for n in drift) <= 2 * tasks * rounds, report.drift
        assert (await store.recount(repair=True)).repaired
        report = await store.recount()
        assert report.consistent, report.drift
    for pipeline in ("p0", "p1"):
        counts = await store.counts(pipeline)
        assert {s: n for s, n in counts.items() if n} == report.counted.get(pipeline, {})
