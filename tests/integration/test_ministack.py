"""End-to-end engine tests against a second emulator, MiniStack, so s3flow is not tuned to moto.

MiniStack (PyPI ``ministack``) is a pure-Python S3 + SQS emulator whose event
notifications look like AWS's: unlike moto's they carry ``s3.object.sequencer``, so
here the worker identifies each upload as ``<etag>@<sequencer>``.

The server runs as a subprocess on a free 127.0.0.1 port, in a working directory of its
own under pytest's tmp dir (its log is ``ministack.log`` there). Settings point at it
through ``[aws] endpoint_url`` (which beats the ``AWS_ENDPOINT_URL`` env var the moto
session fixture sets). If MiniStack is missing or will not start, the tests are skipped,
or fail when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from itest_support import Harness, ministack_or_skip

from s3flow.app import open_store, run_worker
from s3flow.metrics import WorkerMetrics
from s3flow.state.records import FileRecord, FileStatus

pytestmark = pytest.mark.integration

_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def ministack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MiniStack server on a free 127.0.0.1 port for this module; yields its URL."""
    with ministack_or_skip(tmp_path_factory.mktemp("ministack")) as url:
        old = {k: os.environ.get(k) for k in _CREDENTIALS}
        for k, v in _CREDENTIALS.items():
            os.environ.setdefault(k, v)
        try:
            yield url
        finally:
            for k, prev in old.items():
                if prev is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = prev


class MiniHarness(Harness):
    """One isolated pipeline (own buckets and queues) on the MiniStack server."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        kw: dict[str, Any] = {
            "endpoint_url": url,
            "region_name": "us-east-1",
            "aws_access_key_id": _CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": _CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        }
        s3 = boto3.client("s3", **kw)
        sqs = boto3.client("sqs", **kw)
        super().__init__(None, s3, sqs, tmp_path)  # type: ignore[arg-type]
        self.url = url
        self.aws = {"endpoint_url": url, "region": "us-east-1"}

    def receive_all(self, expected: int, timeout_s: float = 15.0) -> list[dict[str, Any]]:
        """Receive (and delete) ``expected`` messages from the main queue."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            resp = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for m in resp.get("Messages", []):
                out.append(m)
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
        assert len(out) == expected, f"expected {expected} notifications, got {len(out)}"
        return out

    def wait_depth(self, visible: int, timeout_s: float = 15.0) -> None:
        """Wait until the main queue holds ``visible`` messages (notifications are async)."""
        deadline = time.monotonic() + timeout_s
        while self.depth()[0] < visible:
            assert time.monotonic() < deadline, f"queue depth {self.depth()} != {visible}"
            time.sleep(0.05)

    def versions(self, key: str) -> list[FileRecord]:
        assert self.settings is not None
        settings = self.settings

        async def go() -> list[FileRecord]:
            async with open_store(settings) as store:
                assert store is not None
                return await store.versions(self.bucket, key)

        return asyncio.run(go())

    def run_burst(self, timeout_s: float = 60.0) -> WorkerMetrics:
        assert self.settings is not None
        return asyncio.run(asyncio.wait_for(run_worker(self.settings, burst=True), timeout_s))


@pytest.fixture()
def mh(ministack: str, tmp_path: Path) -> MiniHarness:
    return MiniHarness(ministack, tmp_path)


def test_line_count_end_to_end(mh: MiniHarness) -> None:
    mh.configure()
    expected: dict[str, int] = {}
    for i in range(17):
        key = f"data/f{i:02d}.txt"
        n = i % 5 + 1
        mh.put(key, b"".join(b"line %d\n" % j for j in range(n)))
        expected[key] = n
    mh.put("data/zipped.txt.gz", gzip.compress(b"a\nb\nc\nd\n"))
    expected["data/zipped.txt.gz"] = 4
    mh.put("data/with space.txt", b"x\ny\n")
    expected["data/with space.txt"] = 2
    mh.put("data/plus+sign.txt", b"1\n2\n3\n")
    expected["data/plus+sign.txt"] = 3
    mh.wait_depth(len(expected))

    m = mh.run_burst()

    p = m.pipelines["p"]
    assert p.objects_processed == len(expected)
    assert p.dead_lettered == 0
    for key, n in expected.items():
        res = mh.result(key)
        assert res is not None, f"no result for {key!r}; outputs: {mh.output_keys()}"
        assert res["lines"] == n, (key, res)
    assert mh.dlq_messages() == []
    assert mh.depth() == (0, 0)


def test_identity_per_event_uses_real_sequencer(mh: MiniHarness) -> None:
    mh.configure()
    key = "doc.txt"
    bodies = [b"a\nb\n", b"a\nb\nc\n", b"a\nb\n"]
    for body in bodies:
        mh.put(key, body)
        mh.wait_depth(1)
        m = mh.run_burst()
        assert m.pipelines["p"].objects_processed == 1
        assert m.pipelines["p"].duplicates == 0
    res = mh.result(key)
    assert res is not None and res["lines"] == 2, res

    recs = mh.versions(key)
    assert len(recs) == 3, [r.version for r in recs]
    etag_a = mh.s3.head_object(Bucket=mh.bucket, Key=key)["ETag"].strip('"')
    for r in recs:
        assert r.status == FileStatus.COMPLETED, r
        etag, _, seq = r.version.partition("@")
        assert seq and not seq.startswith("t"), f"not a sequencer identity: {r.version!r}"
        assert r.sequencer == seq, r
        assert etag, r.version
    # A and the second A share the eTag but are told apart by the sequencer.
    assert sum(r.version.startswith(f"{etag_a}@") for r in recs) == 2, [r.version for r in recs]
    assert len({r.sequencer for r in recs}) == 3


def test_duplicate_delivery_of_a_real_notification(mh: MiniHarness) -> None:
    mh.configure()
    mh.put("dup.txt", b"1\n2\n3\n")
    (msg,) = mh.receive_all(1)
    body = msg["Body"]
    record = json.loads(body)["Records"][0]
    assert record["s3"]["object"].get("sequencer"), record
    mh.send_raw(body)
    mh.send_raw(body)

    m = mh.run_burst()

    p = m.pipelines["p"]
    assert p.objects_processed == 1
    assert p.duplicates == 1
    assert p.dead_lettered == 0
    res = mh.result("dup.txt")
    assert res is not None and res["lines"] == 3, res
    assert mh.depth() == (0, 0)


def test_an_event_whose_upload_was_overwritten_is_superseded_not_run_on_new_bytes(
    mh: MiniHarness,
) -> None:
    # Two uploads of one key before the worker runs: the first upload's event finds
    # the second's bytes. It ran the processor on them under the first upload's identity
    # (the work was done twice, and the history said upload 1 made upload 2's output).
    # Its read is conditional on its own eTag (no extra request): refused, the event is
    # acknowledged as superseded, and the second upload's own event processes the object.
    mh.configure()
    key = "logs/m1.txt"
    mh.put(key, b"one\n")
    first = mh.s3.head_object(Bucket=mh.bucket, Key=key)["ETag"].strip('"')
    mh.put(key, b"two\ntwo\n")
    second = mh.s3.head_object(Bucket=mh.bucket, Key=key)["ETag"].strip('"')
    mh.wait_depth(2)

    m = mh.run_burst()

    p = m.pipelines["p"]
    assert (p.objects_processed, p.objects_skipped, p.dead_lettered) == (1, 1, 0)
    res = mh.result(key)
    assert res is not None and res["lines"] == 2, res
    recs = {r.version.partition("@")[0]: r for r in mh.versions(key)}
    assert set(recs) == {first, second}, list(recs)
    assert all(r.status is FileStatus.COMPLETED for r in recs.values())
    assert recs[first].outputs == [] and recs[first].failures == 0, recs[first]
    assert recs[second].outputs, recs[second]
    done = {
        h.version.partition("@")[0]: h.detail
        for h in mh.history(key)
        if h.new is FileStatus.COMPLETED
    }
    assert done[first] == (
        "superseded: the object was overwritten since this event "
        f"(upload eTag {first} is not the object now)"
    ), done
    assert mh.depth() == (0, 0) and mh.depth(mh.dlq_url) == (0, 0)
