"""CLI output a new user copies from or acts on, against the real moto server: ids and keys
never truncated at 80 columns, --limit and --status checked, errors that name the right
command, a finished sentence, `upload` against the wrong server or none, and "not found"
said as an error."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from itest_support import Harness, s3_event
from itest_support import flat as _flat

from s3flow.local.endpoint import free_port
from s3flow.state.records import FileStatus

pytestmark = pytest.mark.integration

LONG_KEY = "logs/2026/12/02/service-alpha/instance-0042/part-000123-of-000999.jsonl.gz"


def _cli(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    """`s3flow ARGS` in a subprocess, its output piped (as a user's `| less` or `> file`)."""
    env = dict(os.environ, COLUMNS=str(columns))
    env.pop("S3FLOW_WEB_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "s3flow", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def _column(table: str, index: int) -> str:
    """The body cells of column ``index`` of a Rich table, joined without whitespace (a
    folded cell's pieces are on consecutive lines, each between the same borders)."""
    cells = [
        line.split("│")[index + 1]
        for line in table.splitlines()
        if line.startswith("│") and line.count("│") > index + 1
    ]
    return "".join("".join(cells).split())


def _to_dlq(h: Harness, key: str) -> str:
    """A notification of ``key`` put on the pipeline's DLQ; its message id."""
    body = json.dumps({"Records": [s3_event(h.bucket, key)]})
    return str(h.sqs.send_message(QueueUrl=h.dlq_url, MessageBody=body)["MessageId"])


# --- 1: ids and keys are never truncated ------------------------------------------------


def test_dlq_list_at_80_columns_shows_every_message_id_whole(harness: Harness) -> None:
    """At 80 columns (and at 120) `dlq list` cut the id to "66157e95-a33a-4254-b6…": it
    could not be copied into `dlq show`. Folded, the whole id is there."""
    harness.configure()
    cfg = harness.write_config()
    ids = [_to_dlq(harness, LONG_KEY), _to_dlq(harness, "short.txt")]

    for columns in (80, 120):
        run = _cli("dlq", "list", "-c", str(cfg), "--max", "10", columns=columns)

        assert run.returncode == 0, run.stdout + run.stderr
        assert "…" not in run.stdout, run.stdout
        listed = _column(run.stdout, 0)
        for mid in ids:
            assert mid in listed, (columns, run.stdout)
        assert f"s3://{harness.bucket}/{LONG_KEY}" in _column(run.stdout, 1), run.stdout


def test_files_at_80_columns_shows_every_key_whole(harness: Harness) -> None:
    """`s3flow files` piped (80 columns) showed keys as "logs/b…"."""
    harness.configure()
    cfg = harness.write_config()
    harness.end_record(LONG_KEY, "e1@0A1B", FileStatus.FAILED, error="boom")
    harness.end_record("b.txt", "e2@0A1B", FileStatus.DEAD, error="boom")

    run = _cli("files", "-c", str(cfg))

    assert run.returncode == 0, run.stdout + run.stderr
    assert "…" not in run.stdout, run.stdout
    keys = _column(run.stdout, 2)
    assert LONG_KEY in keys and "b.txt" in keys, run.stdout
    assert _column(run.stdout, 1) == harness.bucket * 2, run.stdout


# --- 2: --limit and --status of `s3flow files` -------------------------------------------


@pytest.mark.parametrize("value", ["0", "-3"])
def test_files_limit_below_one_is_a_usage_error(harness: Harness, value: str) -> None:
    """`files --limit 0` (or -3) printed an empty table and exit 0, unlike `dlq list --max 0`."""
    harness.configure()
    cfg = harness.write_config()
    harness.end_record("a.txt", "e1@0A1B", FileStatus.FAILED)

    run = _cli("files", "-c", str(cfg), "--limit", value)

    err = _flat(run.stderr)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"Invalid value for '--limit': must be at least 1 (got {value})" in err
    assert "how many object lifecycles `s3flow files` lists" in err
    assert "s3flow files" not in run.stdout


def test_files_bad_status_lists_the_valid_ones(harness: Harness) -> None:
    """`files --status bogus` said "'bogus' is not a valid FileStatus" and no more."""
    harness.configure()
    cfg = harness.write_config()

    run = _cli("files", "-c", str(cfg), "--status", "bogus")

    err = _flat(run.stderr)
    assert run.returncode == 2, run.stdout + run.stderr
    allowed = ", ".join(s.value for s in FileStatus)
    assert f"Invalid value for --status: 'bogus' is not a file status: use one of {allowed}" in err
    assert "FileStatus" not in err


# --- 3: reprocess names itself --------------------------------------------------------


def test_reprocess_prefix_outside_the_pipeline_names_reprocess(harness: Harness) -> None:
    """`reprocess --prefix zzz/` said "error: backfill: --prefix 'zzz/' is outside ..."."""
    harness.configure(prefix="in/")
    cfg = harness.write_config()

    run = _cli("reprocess", "-c", str(cfg), "-p", "p", "--prefix", "zzz/")
    back = _cli("backfill", "-c", str(cfg), "-p", "p", "--prefix", "zzz/")

    assert run.returncode == 2, run.stdout + run.stderr
    assert "error: reprocess: --prefix 'zzz/' is outside pipeline 'p'" in _flat(run.stderr)
    assert "backfill" not in run.stderr
    assert back.returncode == 2, back.stdout + back.stderr
    assert "error: backfill: --prefix 'zzz/' is outside" in _flat(back.stderr)
    # Refused before anything is listed: no progress bar is drawn first.
    assert "listing" not in back.stderr and "━" not in back.stderr, back.stderr
    assert _flat(back.stderr).startswith("error: backfill: --prefix"), back.stderr


def test_reprocess_of_a_missing_key_enqueues_nothing_and_says_so(harness: Harness) -> None:
    """A missing KEY was "HeadObject s3://b/k failed: 404: Not Found", after the keys
    before it had been enqueued; -p was required although one pipeline is configured."""
    harness.configure()
    cfg = harness.write_config()
    harness.put("here.txt", b"1\n")
    harness.purge()

    run = _cli("reprocess", "-c", str(cfg), "here.txt", "gone.txt")

    assert run.returncode == 2, run.stdout + run.stderr
    assert (
        f"error: reprocess: no object 'gone.txt' in bucket '{harness.bucket}'; nothing was enqueued"
    ) in _flat(run.stderr)
    assert harness.depth() == (0, 0)
    ok = _cli("reprocess", "-c", str(cfg), "here.txt")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert harness.depth() == (1, 0)


# --- 5: upload against the wrong server, or none -----------------------------------------


class _HtmlHandler(http.server.BaseHTTPRequestHandler):
    """A web server that is not s3flow: every request gets a long HTML page."""

    page = (
        "<!DOCTYPE html><html><head><title>Grafana</title></head><body>"
        + "<div class='filler'>some other application</div>" * 100
        + "<p>END-OF-PAGE</p></body></html>"
    ).encode()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture()
def html_server() -> Iterator[str]:
    """The URL of a real HTTP server on 127.0.0.1 that answers HTML (not the s3flow API)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_upload_to_a_server_that_is_not_s3flow_says_so_briefly(
    harness: Harness, html_server: str, tmp_path: Path
) -> None:
    """`upload --url` of another web server dumped its HTML page, and an httpx INFO log
    line of the request came first."""
    harness.configure()
    cfg = harness.write_config()
    f = tmp_path / "a.txt"
    f.write_text("1\n")

    run = _cli("upload", "-c", str(cfg), "--url", html_server, "-t", "count", str(f))

    err = _flat(run.stderr)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "httpx" not in run.stderr and "HTTP Request" not in run.stderr, run.stderr
    assert (
        f"error: the server at {html_server} did not answer as the s3flow API "
        "(POST /api/uploads: HTTP 200, text/html; charset=utf-8; it began"
    ) in err
    assert "<!DOCTYPE html><html><head><title>Grafana" in err  # a short excerpt
    assert "END-OF-PAGE" not in err and err.count("some other application") <= 1
    assert len(run.stderr) < 800, run.stderr
    assert "s3flow web" in err


def test_upload_with_no_server_listening_says_how_to_start_it(tmp_path: Path) -> None:
    """ "cannot reach the s3flow API at http://127.0.0.1:PORT: [Errno 111] Connection
    refused" gave no hint of what to do."""
    f = tmp_path / "a.txt"
    f.write_text("1\n")
    url = f"http://127.0.0.1:{free_port()}"

    run = _cli("upload", "--url", url, "-t", "count", "--api-wait-s", "1", str(f))

    err = _flat(run.stderr)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"waiting up to 1 s for the s3flow API at {url}" in err
    assert f"error: cannot reach the s3flow API at {url}:" in err
    assert "Is it running? Start it with `s3flow web -c <config>`" in err


def test_upload_goes_to_the_web_port_of_its_config_and_needs_a_scheme(tmp_path: Path) -> None:
    """`upload -c jobs.toml` went to :8080 although the same file set [web] port (where
    `s3flow web -c jobs.toml` listens); a --url without http:// was "unreachable"."""
    f = tmp_path / "a.txt"
    f.write_text("1\n")
    port = free_port()
    cfg = tmp_path / "jobs.toml"
    cfg.write_text(f'[web]\nhost = "0.0.0.0"\nport = {port}\n')

    run = _cli("upload", "-c", str(cfg), "-t", "count", "--api-wait-s", "0", str(f))

    assert run.returncode == 2, run.stdout + run.stderr
    assert f"error: cannot reach the s3flow API at http://127.0.0.1:{port}:" in _flat(run.stderr)

    bare = _cli("upload", "--url", f"127.0.0.1:{port}", "-t", "count", str(f))
    assert bare.returncode == 2, bare.stdout + bare.stderr
    assert (
        f"error: API URL '127.0.0.1:{port}' has no scheme: write 'http://127.0.0.1:{port}'"
        in _flat(bare.stderr)
    )


# --- 6: "not found" is an error like any other -------------------------------------------


def test_files_show_of_an_unknown_key_is_an_error_exit_1(harness: Harness) -> None:
    """`files show nosuch/key` exited 1 with a bare "no record of ..." (no "error:")."""
    harness.configure()
    cfg = harness.write_config()
    harness.end_record("nosuch/other", "e1@0A1B", FileStatus.FAILED)

    run = _cli("files", "show", "nosuch/key", "-c", str(cfg))

    err = _flat(run.stderr)
    assert run.returncode == 1, run.stdout + run.stderr
    assert err.startswith("error: no record of 'nosuch/key' in the state store"), err
    assert f"looked in bucket {harness.bucket}" in err
    assert "`s3flow files --key-prefix nosuch/` lists the keys it has records of" in err


def test_dlq_show_of_an_unknown_message_is_an_error_exit_1(harness: Harness) -> None:
    """`dlq show` of a message not on the DLQ: exit 1, said as an error."""
    harness.configure()
    cfg = harness.write_config()
    _to_dlq(harness, "a.txt")

    run = _cli("dlq", "show", "no-such-id", "-c", str(cfg))

    err = _flat(run.stderr)
    assert run.returncode == 1, run.stdout + run.stderr
    assert err.startswith("error: message no-such-id is not on the DLQ of pipeline 'p'"), err
    assert harness.depth(harness.dlq_url) == (1, 0)
