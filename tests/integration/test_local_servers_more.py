"""More local-server checks: concurrent starts of a shared JVM endpoint, and the demo's
PDF stage run twice against one endpoint."""

from __future__ import annotations

import asyncio
import concurrent.futures
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
    from s3flow.provision import provision
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
