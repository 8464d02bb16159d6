"""What stops `s3flow worker` at start, with exit 2 and one line saying what to do.

Against the moto server: a DynamoDB state store whose tables were never provisioned
(else every message failed with an internal error until SQS's redrive, and a burst
worker never exited), a SQLite store that cannot be created, and a metrics port that
cannot be served.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
from itest_support import Harness, s3_event, wait_for

from s3flow.settings import AwsSettings
from s3flow.state import DynamoStateStore

pytestmark = pytest.mark.integration


def worker(cfg: Path, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`s3flow worker --burst -c cfg` as a subprocess (it must stop on its own)."""
    return subprocess.run(
        [sys.executable, "-m", "s3flow", "worker", "--burst", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def stopped_with(run: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The one error line of a worker that stopped at start (exit 2, no traceback)."""
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_a_dynamodb_store_whose_tables_are_missing_stops_the_worker(harness: Harness) -> None:
    prefix = f"nosuch-{uuid.uuid4().hex[:8]}"
    harness.state_url = f"dynamodb://{prefix}"
    harness.configure()  # queues and buckets: not the store's tables
    cfg = harness.write_config()
    harness.put("a.txt", b"1\n")
    wait_for(lambda: harness.depth() == (1, 0), 30, "the object's event on the queue")
    run = worker(cfg)
    line = stopped_with(run, f"{prefix}-files", "s3flow provision", "[state] url")
    assert "does not exist" in line or "do not exist" in line
    assert harness.depth() == (1, 0)  # the message was left alone, not received


def test_a_dynamodb_store_missing_one_table_names_it(harness: Harness) -> None:
    prefix = f"part-{uuid.uuid4().hex[:8]}"
    harness.state_url = f"dynamodb://{prefix}"
    harness.configure()
    cfg = harness.write_config()
    store = DynamoStateStore(prefix, AwsSettings(endpoint_url=harness.endpoint.url))
    asyncio.run(store.ensure_tables())
    dynamodb = boto3.client("dynamodb", endpoint_url=harness.endpoint.url, region_name="us-east-1")
    dynamodb.delete_table(TableName=f"{prefix}-meta")
    line = stopped_with(worker(cfg), f"table {prefix}-meta does not exist", "s3flow provision")
    assert f"{prefix}-files" not in line

    asyncio.run(store.ensure_tables())  # provisioned: the worker starts and drains
    harness.put("b.txt", b"1\n2\n")
    run = worker(cfg)
    assert run.returncode == 0, run.stderr
    assert "processed 1" in run.stderr, run.stderr


def test_a_sqlite_store_that_cannot_be_created_stops_the_worker(harness: Harness) -> None:
    blocker = harness.tmp_path / "a-file"
    blocker.write_text("not a directory")
    harness.state_url = f"sqlite:{blocker}/state.db"
    harness.configure()
    cfg = harness.write_config()
    stopped_with(worker(cfg), f"{blocker} is not a directory", "[state] url")


def test_a_metrics_port_in_use_stops_the_worker(harness: Harness) -> None:
    harness.configure()
    cfg = harness.write_config()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = worker(cfg, env={"S3FLOW_WORKER__METRICS_PORT": str(port)})
    stopped_with(
        run,
        f"cannot serve metrics on 127.0.0.1:{port}",
        "set [worker] metrics_port (another worker on this host?)",
    )


def test_an_unknown_metrics_host_stops_the_worker(harness: Harness) -> None:
    harness.configure()
    cfg = harness.write_config()
    run = worker(
        cfg,
        env={"S3FLOW_WORKER__METRICS_PORT": "0", "S3FLOW_WORKER__METRICS_HOST": "nosuch.invalid"},
    )
    stopped_with(run, "cannot serve metrics on nosuch.invalid:0", "[worker] metrics_host")


def test_a_misspelt_source_bucket_stops_the_worker(harness: Harness) -> None:
    """The worker checked the queue and the output, not the bucket: with a misspelt one it
    skipped every event ("skipped 2", at debug level) and deleted it, exit 0."""
    harness.configure()
    harness.put("a.txt", b"1\n")
    wait_for(lambda: harness.depth() == (1, 0), 30, "the object's event on the queue")
    cfg = harness.write_config()
    cfg.write_text(cfg.read_text().replace(f'bucket = "{harness.bucket}"', 'bucket = "nosuch-in"'))
    run = worker(cfg)
    stopped_with(run, "pipeline 'p' bucket 'nosuch-in' does not exist", "s3flow provision")
    assert harness.depth() == (1, 0)  # the event is still there


def test_events_of_another_bucket_are_warned_about_once(harness: Harness) -> None:
    """A queue fed by a bucket the pipeline does not name (a notification pointed at the
    wrong queue): its events are skipped, said once at WARNING, not only at debug."""
    harness.configure()
    other = f"{harness.bucket}-other"
    harness.s3.create_bucket(Bucket=other)
    for key in ("x.txt", "y.txt"):
        harness.send_raw(json.dumps({"Records": [s3_event(other, key)]}))
    run = worker(harness.write_config())
    assert run.returncode == 0, run.stderr
    warned = [line for line in run.stderr.splitlines() if f"events of bucket {other!r}" in line]
    assert len(warned) == 1 and "WARNING" in warned[0], run.stderr
    assert f"not of its bucket {harness.bucket!r}" in warned[0]


def test_events_outside_the_prefix_are_warned_about_with_what_to_do(harness: Harness) -> None:
    """A prefix changed in the config, not in the bucket's notification: every event was
    skipped and deleted with one line at debug level ("skipped 3", exit 0). A key_regex,
    which S3 cannot filter by, rejecting keys is its job: no warning for that."""
    harness.configure(prefix="logs/", key_regex=r"\.txt$")
    for key in ("logs/a.txt", "logs/b.txt", "logs/c.bin"):
        harness.put(key, b"1\n")
    wait_for(lambda: harness.depth() == (3, 0), 30, "the events on the queue")
    harness.configure(provision_it=False, prefix="logz/")
    run = worker(harness.write_config())
    assert run.returncode == 0, run.stderr
    warned = [line for line in run.stderr.splitlines() if "WARNING" in line]
    assert len(warned) == 1, run.stderr  # one cause: said once (rate-limited)
    text = warned[0]
    assert "but its key does not start with 'logz/'; skipped and deleted" in text, text
    assert "s3://" in text and "Run it again to match the notification" in text
    harness.configure(provision_it=False, prefix="logs/", key_regex=r"\.txt$")
    harness.put("logs/d.bin", b"1\n")
    wait_for(lambda: harness.depth() == (1, 0), 30, "the event on the queue")
    quiet = worker(harness.write_config())
    assert quiet.returncode == 0 and "WARNING" not in quiet.stderr, quiet.stderr


def test_a_queue_url_that_does_not_exist_is_named_with_what_to_do(harness: Harness) -> None:
    """A queue given by a URL that does not exist (a typo, another region): the worker
    said "GetQueueAttributes failed: ... does not exist" naming no queue nor pipeline,
    and `s3flow provision`, which its advice named, failed the same way."""
    harness.configure()
    missing = harness.queue_url.rsplit("/", 1)[0] + "/nosuch-queue"
    for dlq in (None, f"{harness.queue}-dlq"):
        extra = {} if dlq is None else {"dlq": dlq}
        harness.configure(provision_it=False, queue=missing, **extra)
        cfg = harness.write_config()
        line = stopped_with(
            worker(cfg), f"pipeline 'p' queue {missing} does not exist", "check the URL's account"
        )
        assert "GetQueueAttributes failed" not in line
        prov = subprocess.run(
            [sys.executable, "-m", "s3flow", "provision", "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert prov.returncode == 2, prov.stdout + prov.stderr
        text = " ".join(prov.stderr.split())
        assert f"queue {missing} does not exist, and provision creates only queues" in text
        assert "write 'nosuch-queue' instead of the URL" in text and "Traceback" not in text
