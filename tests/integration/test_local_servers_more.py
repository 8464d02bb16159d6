"""More local-server checks: concurrent starts of a shared JVM endpoint, the demo's
PDF stage run twice against one endpoint, and what ``s3proxy env`` prints."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from s3flow.local.aws.server import ElasticMQ
from s3flow.local.endpoint import LocalEndpoint

pytestmark = pytest.mark.integration


def _jvms_of(run_dir: Path) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "org.elasticmq.server.Main" in cmd and str(run_dir) in cmd:
            out.append(proc)
    return out


def test_concurrent_starts_of_one_run_dir_give_one_server(tmp_path: Path) -> None:
    run_dir = tmp_path / "elasticmq"

    def start() -> tuple[int | None, str, bool]:
        mq = ElasticMQ(run_dir=run_dir, detach=True).start(timeout_s=90)
        return mq.pid, mq.url, mq.reused

    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            got = [f.result() for f in [pool.submit(start), pool.submit(start)]]
        (pid1, url1, reused1), (pid2, url2, reused2) = got
        assert pid1 is not None and pid1 == pid2 and url1 == url2
        assert sorted([reused1, reused2]) == [False, True]
        assert [p.pid for p in _jvms_of(run_dir)] == [pid1]
        assert ElasticMQ(run_dir=run_dir).running()
    finally:
        ElasticMQ(run_dir=run_dir).stop(timeout_s=10)
        for leftover in _jvms_of(run_dir):  # never leave a JVM behind, even on failure
            leftover.kill()
    assert not _jvms_of(run_dir)


def test_pdf_upload_twice_within_60s(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A second demo against the same endpoint: PurgeQueue within 60 s is not fatal."""
    from s3flow.local.demo import pdf
    from s3flow.provisioning import provision
    from s3flow.settings import load_settings

    with LocalEndpoint() as ep:
        for k, v in ep.env().items():
            monkeypatch.setenv(k, v)
        settings = load_settings(
            None, {"pipelines": [pdf.PIPELINE], "state": {"url": f"sqlite:{tmp_path}/s.db"}}
        )
        asyncio.run(provision(settings))
        asyncio.run(pdf._upload(settings))
        asyncio.run(pdf._upload(settings))


def test_s3proxy_env_is_all_a_client_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``eval "$(scripts/services s3proxy env)"``, then an SDK client works: the endpoint,
    S3Proxy's credentials and the checksum settings it needs (it printed only the URL)."""
    from s3flow.local.aws import cli
    from s3flow.local.aws.server import S3Proxy

    server = S3Proxy(run_dir=tmp_path / "s3proxy-run", detach=True).start(timeout_s=90)
    try:
        monkeypatch.setattr(cli, "shared_server", lambda *a, **k: server)
        assert cli.main(["s3proxy", "env"]) == 0
        exports = capsys.readouterr().out
        assert f"AWS_ENDPOINT_URL_S3={server.url}" in exports
        client = (
            "import boto3\n"
            "from botocore.config import Config\n"
            "s3 = boto3.client('s3', region_name='us-east-1',"
            " config=Config(s3={'addressing_style': 'path'}))\n"
            "s3.create_bucket(Bucket='envb')\n"
            "s3.put_object(Bucket='envb', Key='k', Body=b'hello')\n"
            "print(s3.get_object(Bucket='envb', Key='k')['Body'].read().decode())\n"
        )
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        clean["HOME"] = str(tmp_path)  # no ~/.aws either
        run = subprocess.run(
            ["bash", "-c", f'eval "$1"; exec "{sys.executable}" -c "$2"', "-", exports, client],
            env=clean,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip() == "hello"
    finally:
        server.stop(timeout_s=10)
