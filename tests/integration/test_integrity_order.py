"""Uploads of one key processed out of order or at once still leave the newest upload's result."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from itest_support import Harness, s3_event, wait_for

pytestmark = pytest.mark.integration


def _event(h: Harness, key: str, seq: str) -> str:
    etag = h.s3.head_object(Bucket=h.bucket, Key=key)["ETag"].strip('"')
    return json.dumps({"Records": [s3_event(h.bucket, key, etag=etag, sequencer=seq)]})


def test_two_uploads_of_one_key_at_once_leave_the_newest_result(
    harness: Harness, tmp_path: Path
) -> None:
    # Upload A's event is being processed slowly (A was read, the write is late) when
    # upload B lands and its event arrives: B must not be overwritten by A's late result.
    harness.configure(
        processor="s3flow_testprocs:SlowWhenContentStartsWith",
        concurrency=4,
        options={"prefix": "A", "sleep_s": 6, "marker_dir": str(tmp_path)},
    )
    harness.put("k.txt", b"A\nA\n")
    harness.purge()
    harness.send_raw(_event(harness, "k.txt", "0001"))

    def upload_b_while_a_is_read() -> None:
        wait_for(lambda: list(tmp_path.glob("read-*")), 30, "upload A to be read")
        harness.put("k.txt", b"B\nB\nB\n")
        harness.purge()  # moto's own event: replaced by one with a sequencer, as S3 sends
        harness.send_raw(_event(harness, "k.txt", "0002"))

    t = threading.Thread(target=upload_b_while_a_is_read)
    t.start()
    m = harness.run()
    t.join()
    result = harness.result("k.txt")
    assert result is not None and result["lines"] == 3  # B's, the newest upload
    assert m.pipelines["p"].dead_lettered == 0
    assert harness.depth() == (0, 0)


def test_an_older_event_arriving_after_a_newer_one_is_superseded(harness: Harness) -> None:
    harness.configure()
    harness.put("o.txt", b"1\n2\n3\n")
    harness.purge()
    harness.send_raw(_event(harness, "o.txt", "00A2"))  # the newer upload's event first
    assert harness.run().pipelines["p"].objects_processed == 1
    harness.send_raw(_event(harness, "o.txt", "A1"))  # an older one, late (shorter: padded)
    m = harness.run()
    p = m.pipelines["p"]
    assert p.objects_processed == 0 and p.objects_skipped == 1
    result = harness.result("o.txt")
    assert result is not None and result["lines"] == 3
