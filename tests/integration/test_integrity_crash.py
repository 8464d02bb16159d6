"""Crash matrix: SIGKILL the worker at seeded random moments, then drain; nothing is lost.

200 objects with distinct known line counts; ``s3flow worker`` (not burst) is
killed with SIGKILL five times and restarted; each kill moment is drawn from
``random.Random(SEED)``: 0.3-2.5 s after the start (start-up included), 0-1.5 s
after the worker's first new result, or once 1-25 further results appeared
(``S3FLOW_ITEST_CRASH_SEED`` overrides the seed). A final
``s3flow worker --burst`` drains. A user then expects every result present and
right, empty queues and DLQ, every state record ``completed`` (none left
``processing``) and no record with more attempts than 1 + the number of kills.

Why a correct engine can pass with ``max_receive_count = 3``: the visibility
timeout is 10 s and all five kills happen within 18 s of the first start, so
no message can be in flight in three killed workers (a message caught by a
kill stays invisible for 10 s). A message can therefore have been received at
most twice before the final drain, which receives it a third time - unless
the engine itself spends receives (e.g. retrying a claim left by a dead
worker), which is what this test is meant to catch.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from integrity_support import (
    attempts_histogram,
    integrity_problems,
    result_keys,
    upload_corpus,
)
from itest_support import Harness, spawn_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.many_pollers]

SEED = int(os.environ.get("S3FLOW_ITEST_CRASH_SEED", "20261130"))
OBJECTS = 200
KILLS = 5
VISIBILITY_S = 10
KILL_WINDOW_S = 2 * VISIBILITY_S - 2  # every kill within this long after the first start


@dataclass
class Kill:
    """One SIGKILL: when and how it was chosen, and the results seen around it."""

    round: int
    mode: str  # "startup" / "working" (seconds after start / first result) or "progress"
    param: float
    at_s: float  # since the first start
    results_before: int
    results_at_kill: int

    def __str__(self) -> str:
        return (
            f"kill {self.round}: {self.mode}={self.param:g} at t={self.at_s:.1f}s, "
            f"results {self.results_before} -> {self.results_at_kill}"
        )


def _budget(t0: float) -> float:
    """Seconds left until the last moment a kill may happen (see the module doc)."""
    return max(0.0, KILL_WINDOW_S - (time.monotonic() - t0))


def _wait_quietly(cond: Callable[[], bool], timeout_s: float) -> None:
    """Wait for ``cond`` up to ``timeout_s``; when out of time, just go on (kill now)."""
    with contextlib.suppress(AssertionError):
        wait_for(cond, max(timeout_s, 0.05), "the kill condition")


def _grown(harness: Harness, target: int, proc: Any) -> Callable[[], bool]:
    """A condition: at least ``target`` results exist, or the worker has exited."""
    return lambda: len(result_keys(harness)) >= target or proc.poll() is not None


@pytest.mark.timeout(300)
def test_sigkill_at_random_moments_loses_nothing(harness: Harness, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    harness.configure(
        visibility_timeout_s=VISIBILITY_S,
        concurrency=12,
        max_receive_count=3,
        retry_base_s=1,
        wait_time_s=1,
    )
    config = harness.write_config()
    corpus = upload_corpus(harness, OBJECTS)
    t0 = time.monotonic()
    kills: list[Kill] = []
    for rnd in range(KILLS):
        log = tmp_path / f"worker-{rnd}.log"
        before = len(result_keys(harness))
        proc = spawn_worker(config, log)
        try:
            mode = rng.choice(["startup", "working", "progress"])
            if mode == "startup":  # anywhere from start-up to early work
                param: float = round(rng.uniform(0.3, 2.5), 2)
                time.sleep(min(param, _budget(t0)))  # the random kill moment (not a wait)
            else:
                # Once the worker is working (its first new result) ...
                _wait_quietly(_grown(harness, before + 1, proc), min(8.0, _budget(t0)))
                first = len(result_keys(harness))
                if mode == "working":  # ... a random moment later
                    param = round(rng.uniform(0.0, 1.5), 2)
                    time.sleep(min(param, _budget(t0)))  # the random kill moment
                else:  # ... or once a random number of further results appeared
                    param = rng.randint(1, 25)
                    _wait_quietly(_grown(harness, first + param, proc), min(8.0, _budget(t0)))
            assert proc.poll() is None, f"worker exited by itself:\n{log.read_text()}"
            proc.kill()
            proc.wait(timeout=10)
            kills.append(
                Kill(rnd, mode, param, time.monotonic() - t0, before, len(result_keys(harness)))
            )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    report = "\n".join(str(k) for k in kills)
    print(report)

    drain_log = tmp_path / "worker-drain.log"
    t_drain = time.monotonic()
    proc = spawn_worker(config, drain_log, "--burst")
    try:
        rc = proc.wait(timeout=120)
    except Exception:
        proc.kill()
        proc.wait(timeout=10)
        rc = None
    drain_s = time.monotonic() - t_drain
    drain_tail = "\n".join(drain_log.read_text(errors="replace").splitlines()[-5:])
    print(f"drain: exit {rc} after {drain_s:.1f}s\n{drain_tail}")

    problems = []
    if rc != 0:
        problems.append(f"final burst worker: exit code {rc} after {drain_s:.0f}s (120 s limit)")
    problems += integrity_problems(harness, corpus, max_attempts=1 + KILLS)
    assert not problems, (
        "after {} SIGKILLs and a drain:\n  - {}\nkills:\n{}\nattempts histogram: {}\n"
        "drain log tail:\n{}".format(
            KILLS,
            "\n  - ".join(problems),
            report,
            attempts_histogram(harness),
            drain_tail,
        )
    )
