"""Helpers of the browser tests: a provisioned ``[jobs]`` project, a real `s3flow web` and a
real `s3flow worker` (subprocesses) on the emulator, and Debian's Chromium for Playwright."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from itest_support import HERE, spawn_worker
from jobs_support import stop_process, toml_text

from s3flow.app import provision_all
from s3flow.local.endpoint import free_port as free_port  # re-exported: test_web_page
from s3flow.settings import Settings, load_settings

SLOW = "s3flow_testprocs:SlowProcessor"
#: Where Debian's chromium package puts its launcher and its binary.
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")


def chromium_executable() -> str | None:
    """Debian's Chromium (``$S3FLOW_CHROMIUM`` first), or None when it is not installed.

    Playwright launches it through ``executable_path``: its own browser download
    cannot work here (``scripts/install dev`` installs the Debian package).
    """
    configured = os.environ.get("S3FLOW_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for path in (shutil.which("chromium"), *CHROMIUM_CANDIDATES):
        if path and os.access(path, os.X_OK):
            return path
    return None


class PageProject:
    """One provisioned ``[jobs]`` project whose uploads bucket lets ``origins`` POST to it.

    Templates: ``count`` (line-count), ``bundle`` (line-count + zip) and ``slow``
    (:class:`s3flow_testprocs.SlowProcessor` sleeping ``slow_s`` per file).
    """

    def __init__(
        self,
        tmp: Path,
        *,
        ports: list[int],
        slow_s: float = 3.0,
        max_file_bytes: int = 100_000,
        max_files: int = 5,
        web: dict[str, Any] | None = None,
    ) -> None:
        self.tmp = tmp
        self.project = f"p{uuid.uuid4().hex[:8]}"
        self.markers = tmp / "markers"
        self.markers.mkdir(exist_ok=True)
        self.origins = [f"http://127.0.0.1:{p}" for p in ports]
        self.data: dict[str, Any] = {
            "jobs": {
                "project": self.project,
                "branch": "web",
                "max_file_bytes": max_file_bytes,
                "max_files": max_files,
                "allowed_extensions": [".txt", ".log", ".csv"],
                "cors_origins": self.origins,
                "visibility_timeout_s": 10,
                "wait_time_s": 1,
                "progress_interval_s": 0.2,
            },
            "templates": [
                {
                    "name": "count",
                    "description": "Count lines",
                    "steps": [{"processor": "line-count"}],
                },
                {
                    "name": "bundle",
                    "description": "Count lines, then zip the counts",
                    "steps": [{"processor": "line-count"}, {"processor": "zip"}],
                },
                {
                    "name": "slow",
                    "description": "A slow step (tests)",
                    "steps": [
                        {
                            "processor": SLOW,
                            "options": {"sleep_s": slow_s, "marker_dir": str(self.markers)},
                        }
                    ],
                },
            ],
            "worker": {"shutdown_grace_s": 5, "ack_batch_window_s": 0.02},
            "state": {"url": f"sqlite:{tmp}/state.db"},
            **({"web": web} if web else {}),
        }
        self.settings: Settings = load_settings(None, self.data)
        self.cfg = tmp / "jobs.toml"
        self.cfg.write_text(toml_text(self.data))
        import asyncio

        asyncio.run(provision_all(self.settings))
        assert self.settings.jobs is not None
        self.bucket = self.settings.jobs.bucket

    def worker(self) -> subprocess.Popen[bytes]:
        """A real ``s3flow worker`` (bridge + job worker) with the test processors importable."""
        proc: subprocess.Popen[bytes] = spawn_worker(self.cfg, self.tmp / "worker.log")
        return proc


class WebProcess:
    """A real ``s3flow web -c CFG --port PORT`` subprocess; :attr:`url` once it answers."""

    def __init__(self, cfg: Path, port: int, log: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "s3flow", "web", "-c", str(cfg), "--port", str(port)],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, timeout_s: float = 30) -> WebProcess:
        """Wait until ``/healthz`` answers; fail with the server's log if it died."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"s3flow web exited: {self.log.read_text(errors='replace')}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise AssertionError(f"s3flow web did not answer within {timeout_s}s")

    def stop(self) -> None:
        """Stop it (SIGTERM)."""
        stop_process(self.proc)
