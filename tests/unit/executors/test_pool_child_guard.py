"""A script that starts a worker without ``if __name__ == "__main__":`` is told so.

The pool's children are spawned: each imports the parent's main module again, so an
unguarded ``asyncio.run(run_worker(...))`` started a second worker in every pool child
(polling the same queues). ``run_worker`` now refuses to run in a pool child.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import s3flow
from s3flow.executors.pool import in_pool_child, pool_context

# What an unguarded script does: in the parent, a pool child is started (the worker
# runs an object on the pool); in the child, the script's top level runs again.
_UNGUARDED = """
import asyncio, multiprocessing
from concurrent.futures import ProcessPoolExecutor
from s3flow import load_settings, run_worker
from s3flow.executors.pool import pool_context

settings = load_settings(None, {"state": {"url": "none"}, "aws": {"region": "us-east-1"}})
if multiprocessing.current_process().name != "MainProcess":
    asyncio.run(run_worker(settings, burst=True))
with ProcessPoolExecutor(1, mp_context=pool_context()) as pool:
    print(pool.submit(abs, -1).result())
"""


@pytest.mark.parametrize(
    "context",
    ["pool_context()", "multiprocessing.get_context('spawn')"],
    ids=["pool", "spawn"],  # spawn: compaction's and csv-to-kafka ranges' own children
)
def test_run_worker_refuses_to_run_in_a_pool_child(tmp_path: Path, context: str) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED.replace("mp_context=pool_context()", f"mp_context={context}"))
    env = {**os.environ, "PYTHONPATH": str(Path(s3flow.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode != 0, done.stdout
    assert "run_worker() was called in a spawned child process" in done.stderr
    assert 'put the call under `if __name__ == "__main__":`' in done.stderr


def test_only_a_pool_child_is_one() -> None:
    assert not in_pool_child()
    with ProcessPoolExecutor(1, mp_context=pool_context()) as pool:
        assert pool.submit(in_pool_child).result(timeout=60)
