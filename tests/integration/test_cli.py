"""The `s3flow` command line, run as real subprocesses against the moto server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from itest_support import Harness

from s3flow.events import content_version
from s3flow.state.records import FileStatus

pytestmark = pytest.mark.integration
COMMANDS = [
    "worker",
    "provision",
    "status",
    "local",
    "demo",
    "config-reference",
    "run",
    "manifests",
]


def s3flow(
    *args: str, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s3flow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_documented_example_provision_then_burst(harness: Harness, tmp_path: Path) -> None:
    """The README's example config, with unique names, through the real CLI."""
    cfg = tmp_path / "s3flow.toml"
    cfg.write_text(
        f"""
[aws]
region = "us-east-1"            # endpoint from AWS_ENDPOINT_URL* when set

[[pipelines]]
name = "counts"
processor = "line-count"
bucket = "{harness.bucket}"
prefix = "logs/"
queue = "{harness.queue}"        # its DLQ: "{harness.queue}-dlq"
output = "s3://{harness.out_bucket}/counts/"
concurrency = 32
visibility_timeout_s = 60
max_receive_count = 3
"""
    )
    first = s3flow("provision", "-c", str(cfg))
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    second = s3flow("provision", "-c", str(cfg))
    assert second.returncode == 0 and "nothing changed" in second.stdout, second.stdout
    for i in range(3):
        harness.put(f"logs/{i}.txt", b"1\n2\n")
    harness.put("other/skip.txt", b"1\n")  # outside the prefix: no event at all
    run = s3flow("worker", "--burst", env={"S3FLOW_CONFIG": str(cfg)})
    assert run.returncode == 0, run.stderr
    assert "processed 3" in run.stderr
    keys = sorted(
        o["Key"] for o in harness.s3.list_objects_v2(Bucket=harness.out_bucket)["Contents"]
    )
    assert keys == [f"counts/logs/{i}.txt.json" for i in range(3)]
    status = s3flow("status", "-c", str(cfg), "--json")
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert row["visible"] == 0 and row["in_flight"] == 0 and row["dlq_depth"] == 0


def test_json_logs(harness: Harness) -> None:
    harness.configure()
    cfg = harness.write_config()
    harness.send_raw("not json at all")
    run = s3flow("--log-format", "json", "worker", "-c", str(cfg), "--burst")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    poison = [rec for rec in lines if "not a known envelope" in rec["msg"]]
    assert poison and poison[0]["level"] == "error"
    assert any(rec.get("event") == "worker-summary" for rec in lines)


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        (
            '[[pipelines]]\nname="a"\nbucket="b"\nqueue="q"\noutput="/tmp/x"\nconcurrenc=3\n',
            "concurrenc",
        ),
        ('[aws]\nregio="x"\n', "aws.regio"),
        (
            '[[pipelines]]\nname="a"\nbucket="b"\nqueue="q"\noutput="/tmp/x"\nconcurrency=0\n',
            "concurrency",
        ),
        (
            '[[pipelines]]\nname="a"\nbucket="b"\nqueue="q"\noutput="/tmp/x"\nvisibility_timeout_s="x"\n',
            "visibility_timeout_s",
        ),
        ("this is = = not toml", "not valid TOML"),
    ],
)
def test_bad_config_fails_with_the_key_named(tmp_path: Path, toml: str, needle: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    run = s3flow("worker", "-c", str(cfg), "--burst", timeout=30)
    assert run.returncode == 2
    assert needle in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_missing_queue_is_a_clear_error(harness: Harness) -> None:
    harness.configure(provision_it=False)
    cfg = harness.write_config()
    run = s3flow("worker", "-c", str(cfg), "--burst", timeout=30)
    assert run.returncode == 2
    assert "does not exist" in run.stderr and "s3flow provision" in run.stderr


def test_version_and_help_everywhere() -> None:
    v = s3flow("--version", timeout=30)
    assert v.returncode == 0 and v.stdout.startswith("s3flow ")
    for cmd in COMMANDS:
        h = s3flow(cmd, "--help", timeout=30)
        assert h.returncode == 0 and "Usage" in h.stdout, cmd


@pytest.mark.timeout(300)
def test_demo_runs_end_to_end() -> None:
    from s3flow.local.kafka_broker import java_available

    run = s3flow("demo", timeout=280)
    assert run.returncode == 0, run.stderr
    out = " ".join(run.stdout.split())  # Rich wraps long lines
    assert "results" in out and "written" in out and "DLQ" in out
    assert "processed 7, dead-lettered 1" in out
    # ndjson-to-parquet: 24 valid files x 100 rows, the invalid one quarantined.
    assert "4 manifests sealed" in out
    assert "2,400 rows in Parquet" in out
    assert "quarantined events/2026-11-22/broken.ndjson: first record is a JSON list" in out
    # csv-to-kafka runs wherever Java 17+ is (CI installs it: scripts/install).
    if java_available() or os.environ.get("CI"):
        assert "(read_committed): 20,000 messages" in out
    # text-to-pdf routed by metadata: one file in the process pool, one by `s3flow run`.
    assert "docs/report.txt -> route 'heavy': processor text-to-pdf on pool" in out
    assert "docs/note.txt -> route 'light': processor text-to-pdf on subprocess" in out
    # The upload job: three files through `s3flow web`, its events in order, one ZIP out.
    assert "file.received orders.csv received" in out
    assert re.search(r"\b12 job\.completed job-[0-9a-f]{32}\.zip", out), out[-2000:]


def test_local_runs_until_interrupted(tmp_path: Path) -> None:
    import signal
    import urllib.request

    from itest_support import wait_for

    from s3flow.local.endpoint import free_port

    port = free_port()
    log = tmp_path / "local.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3flow", "local", "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        wait_for(lambda: "running at" in log.read_text(), 30, "the endpoint URL")
        assert f"http://127.0.0.1:{port}" in log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=5) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopped" in log.read_text()


def test_local_takes_its_port_from_the_local_settings(tmp_path: Path) -> None:
    """`s3flow local` without --port: [local] port (here from S3FLOW_LOCAL__PORT)."""
    import signal

    from itest_support import wait_for

    from s3flow.local.endpoint import free_port

    port = free_port()
    log = tmp_path / "local.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3flow", "local"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "200", "S3FLOW_LOCAL__PORT": str(port)},
        cwd=tmp_path,
    )
    try:
        wait_for(lambda: "running at" in log.read_text(), 30, "the endpoint URL")
        assert f"http://127.0.0.1:{port}" in log.read_text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_operator_commands(harness: Harness) -> None:
    harness.configure(validation={"max_bytes": 5})
    cfg = harness.write_config()
    # write_config does not carry validation: run the worker in-process instead.
    harness.put("big.txt", b"0123456789\n")
    harness.put("ok.txt", b"1\n")
    harness.run()
    listed = s3flow("files", "-c", str(cfg), "--status", "quarantined", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["key"] == "big.txt" and "above the maximum" in row["last_error"]
    table = s3flow("files", "-c", str(cfg))
    assert "ok.txt" in table.stdout and "completed" in table.stdout
    assert "s3flow files (2)" in table.stdout
    # A full page says more may match (its count looked like the total).
    page = s3flow("files", "-c", str(cfg), "--limit", "1")
    assert "the first 1; more may match" in " ".join(page.stdout.split()), page.stdout
    shown = s3flow("files", "show", "big.txt", "-c", str(cfg))
    assert shown.returncode == 0, shown.stderr
    assert "quarantined" in shown.stdout and "above the maximum" in shown.stdout
    missing = s3flow("files", "show", "nope.txt", "-c", str(cfg))
    assert missing.returncode == 1 and "no record" in missing.stderr
    status = s3flow("status", "-c", str(cfg), "--json")
    (st,) = json.loads(status.stdout)
    assert st["state"]["counts"]["quarantined"] == 1 and st["state"]["counts"]["completed"] == 1
    harness.send_raw("poison")
    harness.run()
    dlq = s3flow("dlq", "list", "-c", str(cfg), "--json")
    assert dlq.returncode == 0, dlq.stderr
    (msg,) = json.loads(dlq.stdout)
    assert msg["error_class"] == "EnvelopeError" and msg["body"] == "poison"
    shown_msg = s3flow("dlq", "show", msg["message_id"], "-c", str(cfg))
    assert shown_msg.returncode == 0 and "EnvelopeError" in shown_msg.stdout
    bf = s3flow("backfill", "-p", "p", "-c", str(cfg))
    assert bf.returncode == 0, bf.stderr
    assert "listed 2: enqueued 0, already completed 1" in bf.stdout


def test_backfill_says_what_to_do_for_failed_files_it_leaves_to_their_retry(
    harness: Harness,
) -> None:
    """A plain backfill leaves failed files to their retry (a new notification would
    reset their failure budget); it counted them as "already queued" with no hint for
    when their message is gone (a crash after the DLQ send, or retention)."""
    harness.configure()
    cfg = harness.write_config()
    harness.put("flaky.txt", b"1\n")
    harness.purge()
    head = harness.s3.head_object(Bucket=harness.bucket, Key="flaky.txt")
    harness.end_record(
        "flaky.txt", content_version(head["ETag"], head["LastModified"]), FileStatus.FAILED
    )
    bf = s3flow("backfill", "-p", "p", "-c", str(cfg))
    assert bf.returncode == 0, bf.stderr
    assert "already queued 0, failed and awaiting their retry 1" in bf.stdout
    hint = " ".join(bf.stderr.split())
    assert "1 failed file(s) were left to their retry" in hint
    assert "`s3flow reprocess KEY...` sends them again" in hint
    assert harness.depth() == (0, 0)


def test_keys_and_errors_are_shown_as_they_are_not_as_markup(harness: Harness) -> None:
    """Keys and error texts are data, not Rich markup: `[/]` in a key crashed `files`
    (MarkupError) and `[draft]` vanished from `files show`."""
    harness.configure(validation={"max_bytes": 5})
    cfg = harness.write_config()
    harness.put("odd/[/]x.txt", b"1\n")
    harness.put("reports/[draft]/a.txt", b"0123456789\n")  # quarantined: too big
    harness.run()
    table = s3flow("files", "-c", str(cfg))
    assert table.returncode == 0, table.stderr
    assert "odd/[/]x.txt" in table.stdout and "reports/[draft]/a.txt" in table.stdout
    for key, status in (("odd/[/]x.txt", "completed"), ("reports/[draft]/a.txt", "quarantined")):
        shown = s3flow("files", "show", key, "-c", str(cfg))
        assert shown.returncode == 0, shown.stderr
        assert f"s3://{harness.bucket}/{key} version" in shown.stdout
        assert status in shown.stdout


def test_backfill_and_reprocess_name_a_bucket_that_does_not_exist(harness: Harness) -> None:
    """A pipeline bucket that is not there is named, with the endpoint asked and what to
    do: reprocess of a key said "no object 'k' in bucket ..." (a HEAD's 404 does not say
    whether the key or the bucket is missing), backfill a bare NoSuchBucket."""
    harness.configure()
    cfg = harness.write_config()
    gone = f"gone-{harness.bucket}"
    cfg.write_text(cfg.read_text().replace(f'"{harness.bucket}"', f'"{gone}"'))
    for args in (("backfill",), ("reprocess", "a.txt"), ("reprocess", "--prefix", "")):
        run = s3flow(*args, "-p", "p", "-c", str(cfg))
        assert run.returncode == 2, run.stdout + run.stderr
        text = " ".join(run.stderr.split())  # as one line, however the console wrapped it
        assert (
            f"{args[0]}: bucket '{gone}' does not exist at {harness.endpoint.url}: check the "
            "name (and the endpoint and region), or create it with `s3flow provision`"
        ) in text, run.stderr
        assert "Traceback" not in run.stderr
