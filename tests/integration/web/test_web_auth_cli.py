"""Tokens on a real server, the loopback rule, and `s3flow web` as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from web_support import JobsEnv, SseReader, WebThread, wait_until

from s3flow.errors import ConfigError
from s3flow.settings import load_settings
from s3flow.web.auth import hash_token
from s3flow.web.server import serve

pytestmark = pytest.mark.integration
TOKEN = "correct-horse-battery-staple"


async def test_with_tokens_every_api_call_needs_one(
    jobs_env: JobsEnv, client: httpx.AsyncClient
) -> None:
    settings = jobs_env.settings(tokens=[hash_token("other"), hash_token(TOKEN)])
    with WebThread(settings, consume_progress=False) as web:
        good = {"Authorization": f"Bearer {TOKEN}"}
        body = {
            "template": "count",
            "files": [{"name": "a.txt", "size": 4, "content_type": "text/plain"}],
        }
        for method, path in [
            ("GET", "/api/config"),
            ("GET", "/api/jobs"),
            ("GET", "/api/jobs/job-x"),
            ("GET", "/api/jobs/job-x/events"),
            ("POST", "/api/uploads"),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                r = await client.request(method, f"{web.url}{path}", headers=headers, json=body)
                assert r.status_code == 401, (method, path, headers)
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert "token" in r.json()["error"]
        r = await client.post(f"{web.url}/api/uploads", json=body, headers=good)
        assert r.status_code == 201
        job_id = r.json()["job_id"]
        r = await client.get(f"{web.url}/api/jobs/{job_id}", headers=good)
        assert r.status_code == 200 and r.json()["job_id"] == job_id
        assert (await client.get(f"{web.url}/api/config", headers=good)).json()["auth"] is True
        # EventSource cannot send headers: the events route takes ?token= (and only it).
        events = f"{web.url}/api/jobs/{job_id}/events"
        async with SseReader(client, events, params={"token": TOKEN}) as stream:
            assert [m.id for m in await stream.take(1)] == [1]
        r = await client.get(events, params={"token": "wrong"})
        assert r.status_code == 401
        r = await client.get(f"{web.url}/api/jobs/{job_id}", params={"token": TOKEN})
        assert r.status_code == 401
        assert (await client.get(f"{web.url}/healthz")).status_code == 200


def test_without_tokens_the_server_refuses_to_listen_beyond_loopback(jobs_env: JobsEnv) -> None:
    for host in ("0.0.0.0", "::", "10.1.2.3"):
        with pytest.raises(ConfigError, match=r"refusing to listen on .* without API tokens"):
            asyncio.run(serve(jobs_env.settings(), host=host, port=0))


def test_on_every_address_the_url_given_is_loopback(jobs_env: JobsEnv) -> None:
    """A server bound to 0.0.0.0 gives (and `s3flow web` prints) a URL that can be
    opened: http://0.0.0.0:PORT is no address to connect to."""
    settings = jobs_env.settings(tokens=[hash_token(TOKEN)])
    with WebThread(settings, consume_progress=False, host="0.0.0.0") as web:
        assert web.url.startswith("http://127.0.0.1:"), web.url
        assert httpx.get(f"{web.url}/healthz", timeout=10).status_code == 200


def test_a_busy_port_is_a_plain_error(jobs_env: JobsEnv) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="another server is using the port"):
            asyncio.run(serve(jobs_env.settings(), host="127.0.0.1", port=port))


def test_a_dynamodb_store_without_its_job_tables_stops_the_server(jobs_env: JobsEnv) -> None:
    """The web app checks the job tables at start (as the worker checks its own): it used
    to serve, then answer every request with an error about a missing table."""
    prefix = f"nosuch-{uuid.uuid4().hex[:8]}"
    data = jobs_env.data()
    data["state"] = {"url": f"dynamodb://{prefix}"}
    with pytest.raises(ConfigError) as stopped:
        asyncio.run(serve(load_settings(None, data), host="127.0.0.1", port=0))
    text = str(stopped.value)
    assert f"{prefix}-jobs, {prefix}-job-events do not exist" in text
    assert "s3flow provision" in text and f"{prefix}-files" not in text


def s3flow(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s3flow", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_hash_token_reads_stdin_or_generates_one() -> None:
    r = s3flow("web", "hash-token", stdin=f"{TOKEN}\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == hash_token(TOKEN) + "\n"
    r = s3flow("web", "hash-token", "--generate")
    assert r.returncode == 0, r.stderr
    token, hashed = r.stdout.splitlines()
    assert len(token) >= 40 and hashed == hash_token(token)
    r = s3flow("web", "hash-token", stdin="\n")
    assert r.returncode == 2 and "no token given" in r.stderr


def test_the_cli_refuses_an_open_api_beyond_loopback(jobs_env: JobsEnv, tmp_path: Path) -> None:
    cfg = jobs_env.toml(tmp_path / "jobs.toml")
    r = s3flow("web", "-c", str(cfg), "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 2
    assert "refusing to listen on '0.0.0.0' without API tokens" in r.stderr
    assert "hash-token" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_s3flow_web_serves_until_a_signal_even_with_a_stream_open(
    jobs_env: JobsEnv, tmp_path: Path, sig: signal.Signals
) -> None:
    cfg = jobs_env.toml(tmp_path / "jobs.toml", heartbeat_s=0.5)
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "s3flow", "web", "-c", str(cfg), "--port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"},
        )
    try:
        line = wait_until(
            lambda: next((ln for ln in log.read_text().splitlines() if "listening on" in ln), None),
            30,
            "the URL",
        )
        url = line.split("listening on ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        r = httpx.post(
            f"{url}/api/uploads",
            json={
                "template": "count",
                "files": [{"name": "a.txt", "size": 1, "content_type": "text/plain"}],
            },
        )
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
        lines: list[str] = []
        done = threading.Event()

        def read() -> None:
            with httpx.stream("GET", f"{url}/api/jobs/{job_id}/events", timeout=20) as s:
                for ln in s.iter_lines():
                    lines.append(ln)
            done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_until(lambda: "id: 1" in lines and ": heartbeat" in lines, 10, "event 1, a heartbeat")
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
        assert done.wait(5), "the open stream was not ended by the shutdown"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "stopped" in text
    assert "Traceback" not in text
