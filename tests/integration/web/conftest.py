"""Fixtures of the web tests: a project on the emulator, a real server, a client, the store."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from page_support import chromium_executable
from playwright.sync_api import Browser, sync_playwright
from web_support import JobsEnv, WebThread

from s3flow.local.endpoint import LocalEndpoint
from s3flow.state.sqlite import SqliteStateStore


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright, one per test module (a missing Chromium
    fails the tests under ``CI``, else skips them)."""
    exe = chromium_executable()
    if exe is None:
        message = "Chromium is not installed: run scripts/install dev (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=exe)
        yield launched
        launched.close()


@pytest.fixture()
def jobs_env(endpoint: LocalEndpoint, s3: Any, sqs: Any, tmp_path: Path) -> JobsEnv:
    return JobsEnv(s3, sqs, tmp_path)


@pytest.fixture()
def web(jobs_env: JobsEnv) -> Iterator[WebThread]:
    with WebThread(jobs_env.settings()) as server:
        yield server


@pytest.fixture(scope="module")
def shared_web(
    endpoint: LocalEndpoint, s3: Any, sqs: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebThread]:
    """One server for a module's tests that only read or are refused (saves a start/stop each)."""
    env = JobsEnv(s3, sqs, tmp_path_factory.mktemp("shared-web"))
    with WebThread(env.settings()) as server:
        yield server


@pytest.fixture()
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


@pytest.fixture()
async def store(jobs_env: JobsEnv) -> AsyncIterator[SqliteStateStore]:
    """A third party's connection to the web app's state store (another writer)."""
    async with SqliteStateStore(jobs_env.db) as s:
        yield s
