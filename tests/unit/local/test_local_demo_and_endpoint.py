"""`s3flow local` / `s3flow demo` details that need no server: ports, URLs, the demo's
environment, exit codes, its checks, the skipped PDF stage, the sweep of JVM run dirs."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from s3flow.local import endpoint as ep
from s3flow.local.demo import pdf, run
from s3flow.pipelines.text_to_pdf import fonts


class _MotoLike(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture()
def busy_port() -> Iterator[int]:
    """Another HTTP server answering /moto-api/ on a 127.0.0.1 port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MotoLike)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_s3flow_local_on_a_busy_port_fails_with_one_line(busy_port: int) -> None:
    with pytest.raises(OSError), socket.create_server(("127.0.0.1", busy_port)):
        pass
    proc = subprocess.run(
        [sys.executable, "-m", "s3flow", "local", "--port", str(busy_port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "running" not in out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0] and "--port" in lines[0], out


def test_a_port_taken_after_the_check_is_in_use_not_the_childs_endpoint(
    busy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `s3flow local --port P` started together both found P free; the second took
    the first's server for its own (it answered while its child, still importing moto,
    had yet to fail its bind), said "running", then "exited unexpectedly"."""
    checks = iter([False])  # the check in start() ran before the other server bound P
    real = ep.port_in_use
    monkeypatch.setattr(ep, "port_in_use", lambda h, p: next(checks, real(h, p)))
    endpoint = ep.LocalEndpoint("127.0.0.1", busy_port, start_timeout_s=60)
    try:
        with pytest.raises(ep.LocalEndpointError, match=rf"port {busy_port} .*in use.*--port"):
            endpoint.start()
    finally:
        endpoint.stop()
    assert endpoint.pid is None


def test_port_in_use_is_false_for_a_free_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not ep.port_in_use("127.0.0.1", port)


def test_ipv6_urls_have_brackets() -> None:
    assert ep.host_url("::1", 80) == "http://[::1]:80"
    assert ep.host_url("127.0.0.1", 80) == "http://127.0.0.1:80"


@pytest.mark.parametrize(
    ("bound", "connect"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("", "127.0.0.1"),
        ("::", "::1"),
        ("[::]", "::1"),
        ("0:0:0:0:0:0:0:0", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("10.1.2.3", "10.1.2.3"),
        ("localhost", "localhost"),
    ],
)
def test_connect_host_is_loopback_for_a_wildcard_bind_address(bound: str, connect: str) -> None:
    assert ep.connect_host(bound) == connect


def test_the_endpoint_url_of_a_wildcard_bind_can_be_connected_to() -> None:
    assert ep.LocalEndpoint("0.0.0.0", 4566).url == "http://127.0.0.1:4566"
    assert ep.LocalEndpoint("::", 4566).url == "http://[::1]:4566"
    assert ep.LocalEndpoint("127.0.0.2", 4566).url == "http://127.0.0.2:4566"


def test_demo_env_clears_service_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    with run._env({"AWS_ENDPOINT_URL": "http://127.0.0.1:3"}):
        assert not [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL_")]
        assert os.environ["AWS_ENDPOINT_URL"] == "http://127.0.0.1:3"
    assert os.environ["AWS_ENDPOINT_URL_SQS"] == "http://127.0.0.1:1"
    assert os.environ["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:2"


def test_external_endpoint_gets_local_credentials_when_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    env = run._external_env("http://127.0.0.1:9")
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert ep.LOCAL_CREDENTIALS.items() <= env.items()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "mine")
    assert "AWS_ACCESS_KEY_ID" not in run._external_env("http://127.0.0.1:9")


class _Metrics:
    def __init__(self, dead: int) -> None:
        self.pipelines = {"counts": type("M", (), {"dead_lettered": dead})()}


def test_demo_fails_when_outputs_are_missing() -> None:
    files = run.sample_files()
    with pytest.raises(run.DemoCheckError, match="missing"):
        run._check_counts(files, {}, _Metrics(0))  # type: ignore[arg-type]
    good = {k: {} for k in files if k != run.BROKEN_KEY}
    run._check_counts(files, good, _Metrics(1))  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143), ("", 130)])
def test_interrupted_demo_exits_non_zero(
    monkeypatch: pytest.MonkeyPatch, name: str, code: int
) -> None:
    def interrupted(console: Console, endpoint_url: str | None) -> None:
        raise KeyboardInterrupt(name) if name else KeyboardInterrupt

    monkeypatch.setattr(run, "_run_demo", interrupted)
    assert run.run_demo(Console(file=open(os.devnull, "w")), endpoint_url="x") == code  # noqa: SIM115


def test_demo_check_error_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong(console: Console, endpoint_url: str | None) -> None:
        raise run.DemoCheckError("0 rows")

    monkeypatch.setattr(run, "_run_demo", wrong)
    assert run.run_demo(Console(file=open(os.devnull, "w")), endpoint_url="x") == 1  # noqa: SIM115


def test_demo_removes_its_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    made: list[str] = []
    real = run.tempfile.mkdtemp

    def mkdtemp(**kw: Any) -> str:
        made.append(real(dir=tmp_path, **kw))
        return made[-1]

    def no_broker(console: Console) -> Any:
        raise KeyboardInterrupt("SIGINT")

    monkeypatch.setattr(run.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(run, "_kafka_broker", no_broker)
    assert run.run_demo(Console(file=open(os.devnull, "w")), endpoint_url="http://x:1") == 130  # noqa: SIM115
    assert made and not Path(made[0]).exists()


def test_pdf_stage_skipped_without_fonts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fonts, "FONT_DIRS", (str(tmp_path),))
    console = Console(record=True, width=200)
    pdf.pdf_stage(console, "sqlite:/nonexistent/dir/state.db")
    text = console.export_text().strip()
    assert len(text.splitlines()) == 1 and "skipped" in text
    assert fonts.FONT_PACKAGE in text  # the reason says what to install


def test_abandoned_jvm_run_dirs_are_swept(tmp_path: Path) -> None:
    from s3flow.local.aws.server import _sweep_abandoned

    root = tmp_path / "aws-tmp"
    dead, alive, other = root / "elasticmq-dead", root / "s3proxy-alive", root / "unrelated"
    for d in (dead, alive, other):
        d.mkdir(parents=True)
    (dead / "owner.lock").touch()
    # A live owner (another process) holds the lock of "alive".
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,sys,time; f=open(sys.argv[1],'a'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True); time.sleep(30)",
            str(alive / "owner.lock"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline()
        _sweep_abandoned(root)
    finally:
        child.kill()
        child.wait()
    assert not dead.exists() and alive.exists() and other.exists()
