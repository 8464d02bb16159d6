"""Several copies of the message of an upload that fails for good (S3's duplicate
deliveries, repeated releases, a redrive of piled-up DLQ copies): one run and one DLQ
message per upload, the other copies acknowledged without work. A worker killed before
its DLQ send still gets the upload to the DLQ."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest
from itest_support import Harness
from s3flow_testprocs import AlwaysFails

from s3flow.state.records import FileStatus
from s3flow.worker.acks import Settler

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
KEYS = [f"logs/bad{n}.gz" for n in range(3)]


def _truncated_gzip() -> bytes:
    whole = gzip.compress("".join(f"{i} hello\n" for i in range(20000)).encode())
    return whole[: len(whole) // 2]


def _put_with_copies(harness: Harness, copies: int) -> None:
    """Each key uploaded (its notification is one message) and ``copies`` more messages
    of the same upload's event, as moto sends it (no sequencer)."""
    for key in KEYS:
        harness.put(key, _truncated_gzip())
    for key in KEYS:
        event = harness.event(key, sequencer=None)
        for _ in range(copies):
            harness.send_raw(json.dumps({"Records": [event]}))


def _dead_lettered_once(harness: Harness) -> None:
    """One DLQ message per key; each record dead after one run; nothing left on the queue."""
    dlq = harness.dlq_messages()
    keys = sorted(
        unquote_plus(json.loads(d["Body"])["Records"][0]["s3"]["object"]["key"]) for d in dlq
    )
    assert keys == KEYS, keys
    for key in KEYS:
        (rec,) = harness.records(key)
        assert rec.status is FileStatus.DEAD, rec
        assert rec.claim_owner is None and rec.claim_expires_at is None, rec
        assert rec.failures >= 1, rec  # the failure that dead-lettered it counts
    assert harness.depth() == (0, 0)
    assert harness.depth(harness.dlq_url) == (0, len(KEYS))  # received above, not more


@pytest.fixture()
def slow_dlq(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each DLQ send takes 0.3 s longer (SQS slow to answer): the copies waiting for the
    key's lock surely look at the record before the DLQ has the message."""
    send = Settler._dead_letter

    async def slow(self: Settler, *args: Any, **kwargs: Any) -> bool:
        await asyncio.sleep(0.3)
        return await send(self, *args, **kwargs)

    monkeypatch.setattr(Settler, "_dead_letter", slow)


@pytest.mark.usefixtures("slow_dlq")
@pytest.mark.parametrize("failure", ["permanent", "retries-exhausted"])
def test_copies_of_an_upload_that_fails_for_good_are_dead_lettered_once(
    harness: Harness, failure: str
) -> None:
    """Each copy waiting for the key's lock used to claim the record the first run left
    `failed` (marked dead only once the DLQ had the message), run it again and
    dead-letter it again: 9 messages of 3 truncated .gz files made 7 DLQ messages."""
    if failure == "permanent":
        harness.configure(max_receive_count=2, concurrency=4)
    else:
        AlwaysFails.calls = 0
        harness.configure(
            processor="s3flow_testprocs:AlwaysFails", max_receive_count=1, concurrency=4
        )
    _put_with_copies(harness, copies=2)
    m = harness.run()
    p = m.pipelines["p"]
    assert p.messages_received == 9
    assert p.dead_lettered == len(KEYS) and p.retried == 0
    assert p.acked == 6 and p.objects_skipped == 6  # the copies: parked, no work
    _dead_lettered_once(harness)
    for key in KEYS:
        (rec,) = harness.records(key)
        assert rec.attempts == 1, rec
        if failure == "permanent":
            assert rec.last_error_class == "CorruptDataError", rec
        else:
            assert rec.last_error_class == "ProcessorError", rec
    if failure != "permanent":
        assert AlwaysFails.calls == len(KEYS)


#: A worker killed as it is about to send its first dead letter: the failure has been
#: decided (and recorded), the DLQ has nothing yet.
KILLED_BEFORE_DLQ_SEND = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from s3flow.app import run_worker
    from s3flow.settings import load_settings
    from s3flow.worker.acks import Settler

    async def killed(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    Settler._dead_letter = killed
    asyncio.run(run_worker(load_settings(sys.argv[1]), burst=True))
    """
)


def _killed_before_dlq_send(harness: Harness, tmp_path: Path) -> Any:
    cfg = harness.write_config()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", KILLED_BEFORE_DLQ_SEND, str(cfg)],
        env=env,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.parametrize("copies", [0, 2])
def test_a_worker_killed_before_its_dlq_send_leaves_the_upload_to_be_dead_lettered(
    harness: Harness, tmp_path: Path, copies: int
) -> None:
    """The failure is decided, the worker dies before the DLQ has the message: the
    message comes back (its lease ends) and the upload still reaches the DLQ, once,
    whatever copies of it there are."""
    harness.configure(max_receive_count=2, concurrency=4, visibility_timeout_s=2)
    _put_with_copies(harness, copies=copies)
    crashed = _killed_before_dlq_send(harness, tmp_path)
    assert crashed.returncode == -9, crashed.stderr.decode()[-3000:]
    assert harness.depth(harness.dlq_url) == (0, 0)
    m = harness.run()
    p = m.pipelines["p"]
    assert p.dead_lettered == len(KEYS) and p.retried == 0
    _dead_lettered_once(harness)
