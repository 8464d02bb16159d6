"""Local servers never outlive the process that started them (issue 18).

Each owner runs in its own session (so a signal reaches its pid only), is stopped by
SIGTERM, SIGINT, SIGKILL or an exception, and then its server process (the embedded
AWS endpoint, ``python -m s3flow.local.moto_server``; the Kafka broker, a JVM) must be gone
and its port free within a few seconds.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from itest_support import wait_for

from s3flow.local.endpoint import free_port
from s3flow.local.kafka_broker import java_available, maven_available, port_free

pytestmark = pytest.mark.integration

ENDPOINT_GONE_S = 10.0
KAFKA_GONE_S = 40.0  # SIGTERM is a clean broker shutdown; stop() allows it 30 s too
SIGNALS = ["SIGTERM", "SIGINT", "SIGKILL"]

# A program that uses s3flow as a library and owns a server: it starts it (from a
# short-lived thread with "thread"), prints READY <server pid> <port>, then waits for a
# line on stdin and dies of an exception. It installs no signal handlers of its own.
LIBRARY_OWNER = r"""
import os, sys, threading, time
kind, how = sys.argv[1], sys.argv[2]
if kind == "endpoint":
    from s3flow.local.endpoint import LocalEndpoint
    server = LocalEndpoint()
else:
    from s3flow.local.kafka_broker import KafkaBroker
    server = KafkaBroker()
if how == "thread":
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join()
    while os.path.exists(f"/proc/self/task/{starter.native_id}"):  # the OS thread is gone too
        time.sleep(0.01)
else:
    server.start()
print("READY", server.pid, server.port, flush=True)
sys.stdin.readline()
raise RuntimeError("the owner fails")
"""


@dataclass
class Owner:
    """An owner process, its output file and (once up) its server children."""

    proc: subprocess.Popen[bytes]
    log: Path
    servers: list[psutil.Process] = field(default_factory=list)
    port: int = 0

    @property
    def server(self) -> psutil.Process:
        assert len(self.servers) == 1, self.servers
        return self.servers[0]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, how: str) -> None:
        """``how``: a signal name (sent to the owner's pid only) or "raise"."""
        if how == "raise":
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.flush()
        else:
            os.kill(self.proc.pid, getattr(signal, how))

    def cleanup(self) -> None:
        """Whatever a failed test left behind: kill the owner and its servers."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for server in self.servers:
            if not _gone(server):
                server.kill()


def _start_owner(
    cmd: list[str], log: Path, *, env: dict[str, str] | None = None, sigint_ignored: bool = False
) -> Owner:
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # signals for the owner reach its pid only
        # As for `cmd &` in a script: a non-interactive shell starts it with SIGINT
        # ignored. Otherwise as from a terminal: SIGINT's default, whatever this pytest
        # inherited (a suite started with `&` hands its SIG_IGN on to every child).
        preexec_fn=lambda: signal.signal(
            signal.SIGINT, signal.SIG_IGN if sigint_ignored else signal.SIG_DFL
        ),
    )
    return Owner(proc, log)


def _library_owner(kind: str, how: str, log: Path) -> Owner:
    return _start_owner([sys.executable, "-c", LIBRARY_OWNER, kind, how], log)


def _gone(proc: psutil.Process) -> bool:
    """Exited (a zombie nobody reaped yet counts as exited: it holds no port)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_ready(owner: Owner, timeout_s: float) -> Owner:
    """Wait for the owner's READY line; check the server is its child and holds the port."""

    def ready() -> re.Match[str] | None:
        assert owner.proc.poll() is None, f"the owner exited early:\n{owner.output()}"
        return re.search(r"^READY (\d+) (\d+)$", owner.output(), re.M)

    match = wait_for(ready, timeout_s, "the owner to start its server")
    owner.servers, owner.port = [psutil.Process(int(match.group(1)))], int(match.group(2))
    assert owner.server.ppid() == owner.proc.pid
    assert not port_free(owner.port)
    return owner


def _only_child(owner: Owner, port: int, timeout_s: float) -> Owner:
    """Wait until the owner has a child process and ``port`` is taken; that child is the server."""

    def child() -> psutil.Process | None:
        assert owner.proc.poll() is None, f"the owner exited early:\n{owner.output()}"
        kids = psutil.Process(owner.proc.pid).children()
        return kids[0] if len(kids) == 1 and not port_free(port) else None

    owner.servers, owner.port = [wait_for(child, timeout_s, "the server child")], port
    return owner


def _assert_server_stops(owner: Owner, timeout_s: float) -> None:
    server = owner.server
    wait_for(lambda: _gone(server), timeout_s, f"server pid {server.pid} to exit")
    wait_for(lambda: port_free(owner.port), timeout_s, f"port {owner.port} to be free")


@pytest.fixture()
def owners() -> Iterator[list[Owner]]:
    """Owners a test starts; whatever is left of them is killed afterwards."""
    started: list[Owner] = []
    yield started
    for owner in started:
        owner.cleanup()


def _require_kafka() -> None:
    # As tests/integration/kafka/conftest.py: skipped locally, a failure in CI.
    if not java_available() or not maven_available():
        reason = "the Kafka broker needs Java 17+ and Maven (scripts/services kafka install)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


# --- the embedded AWS endpoint -------------------------------------------------------


@pytest.mark.parametrize("how", [*SIGNALS, "SIGINT-background-job"])
def test_s3flow_local_stops_its_endpoint(how: str, owners: list[Owner], tmp_path: Path) -> None:
    port = free_port()
    s3flow = [sys.executable, "-m", "s3flow", "local", "--port", str(port)]
    background = how == "SIGINT-background-job"
    owner = _start_owner(s3flow, tmp_path / "local.log", sigint_ignored=background)
    how = "SIGINT" if background else how
    owners.append(owner)
    _only_child(owner, port, 60)
    wait_for(lambda: "press Ctrl-C" in owner.output(), 30, "s3flow local to be up")

    owner.stop(how)
    _assert_server_stops(owner, ENDPOINT_GONE_S)
    code = owner.proc.wait(timeout=ENDPOINT_GONE_S)
    if how == "SIGKILL":
        assert code == -signal.SIGKILL
    else:  # stopped the server, waited for it, exit 0
        assert code == 0, owner.output()
        assert owner.output().rstrip().endswith("stopped")


@pytest.mark.parametrize("how", ["raise", *SIGNALS])
def test_library_owner_stops_its_endpoint(how: str, owners: list[Owner], tmp_path: Path) -> None:
    owner = _library_owner("endpoint", how, tmp_path / "owner.log")
    owners.append(owner)
    _wait_ready(owner, 60)

    owner.stop(how)
    _assert_server_stops(owner, ENDPOINT_GONE_S)
    code = owner.proc.wait(timeout=ENDPOINT_GONE_S)
    if how == "raise":
        assert code == 1
        assert "RuntimeError: the owner fails" in owner.output()


def test_endpoint_started_from_a_thread_lives_until_the_owner_dies(
    owners: list[Owner], tmp_path: Path
) -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* exits: the server must survive
    # its short-lived starter thread and still go with the owner process.
    owner = _library_owner("endpoint", "thread", tmp_path / "owner.log")
    owners.append(owner)
    _wait_ready(owner, 60)
    assert not _gone(owner.server)
    with urllib.request.urlopen(f"http://127.0.0.1:{owner.port}/moto-api/", timeout=5):
        pass

    owner.stop("SIGKILL")
    _assert_server_stops(owner, ENDPOINT_GONE_S)


# --- the Kafka broker ----------------------------------------------------------------


@pytest.mark.parametrize("how", SIGNALS)
def test_library_owner_stops_its_kafka_broker(
    how: str, owners: list[Owner], tmp_path: Path
) -> None:
    _require_kafka()
    owner = _library_owner("kafka", how, tmp_path / "owner.log")
    owners.append(owner)
    _wait_ready(owner, 180)
    assert "java" in owner.server.name()

    owner.stop(how)
    _assert_server_stops(owner, KAFKA_GONE_S)


def test_s3flow_demo_stops_its_servers_on_sigterm(owners: list[Owner], tmp_path: Path) -> None:
    _require_kafka()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT")}
    owner = _start_owner([sys.executable, "-m", "s3flow", "demo"], tmp_path / "demo.log", env=env)
    owners.append(owner)

    def kafka_up() -> re.Match[str] | None:
        assert owner.proc.poll() is None, f"the demo exited early:\n{owner.output()}"
        return re.search(r"Kafka: 127\.0\.0\.1:(\d+)", owner.output())

    # Both servers up: the embedded endpoint, then the private Kafka broker.
    kafka_port = int(wait_for(kafka_up, 180, "the demo's Kafka broker").group(1))
    endpoint = re.search(r"endpoint: http://127\.0\.0\.1:(\d+)", owner.output())
    assert endpoint is not None, owner.output()
    owner.servers = psutil.Process(owner.proc.pid).children()
    names = sorted(server.name() for server in owner.servers)
    assert any("java" in n for n in names) and any("python" in n for n in names), names

    owner.stop("SIGTERM")
    # The demo's own shutdown (its worker, then the broker's clean stop) under a loaded
    # suite: more than the broker alone gets.
    # An interrupted demo did not finish: 128 + the signal, so `scripts/demo && ...` stops.
    code = owner.proc.wait(timeout=2 * KAFKA_GONE_S)
    assert code == 128 + signal.SIGTERM, owner.output()
    assert "interrupted" in owner.output()
    for server in owner.servers:
        wait_for(lambda s=server: _gone(s), 10, f"demo server pid {server.pid} to exit")
    for port in (int(endpoint.group(1)), kafka_port):
        wait_for(lambda p=port: port_free(p), 10, f"port {port} to be free")
