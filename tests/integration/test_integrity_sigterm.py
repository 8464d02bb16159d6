"""SIGTERM with a full queue and many objects in flight: nothing stays invisible.

150 objects and ``s3flow worker`` (not burst). Once the worker has objects in
flight it gets SIGTERM. A user then expects: exit code 0; within 1 s of the
exit no message of the queue is in flight (everything unfinished was released
with visibility 0, not left invisible for the 60 s visibility timeout); the
printed summary says ``released N`` with N at least the number of objects cut
short; no state record left ``processing``; every object that finished has
its result, a ``completed`` record and its message deleted.

Scenarios:

* ``grace-0`` / ``grace-3s``: concurrency 16, every third object slow (60 s),
  the rest fast (0.3 s); ``--shutdown-grace-s`` 0 (everything in flight is
  cut short) or 3 (the fast ones finish, the slow ones are released).
* ``late-arrivals``: concurrency 200 (all 150 slow objects in flight, so the
  one poller sits in a 20 s long poll on an empty queue), grace 0, and 10 more
  objects arrive 0.2 s after SIGTERM - as notifications keep coming while a
  worker stops. A long poll abandoned by the worker is still served by SQS,
  which would hand it those messages and keep them invisible for the whole
  visibility timeout.
"""

from __future__ import annotations

import random
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from integrity_support import fetch_results, state_rows
from itest_support import Harness, spawn_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.many_pollers]

OBJECTS = 150
SLOW_S = 60.0
FAST_S = 0.3


@dataclass(frozen=True)
class Scenario:
    grace_s: float
    concurrency: int
    slow_every: int  # every n-th object is slow (1 = all)
    wait_time_s: int = 1
    late: int = 0  # objects put 0.2 s after SIGTERM
    pollers: int = 0  # worker.pollers_per_pipeline (0 = the default; many_pollers keeps it)

    def __str__(self) -> str:
        return f"grace {self.grace_s}s, concurrency {self.concurrency}, late {self.late}"


SCENARIOS = {
    "grace-0": Scenario(grace_s=0.0, concurrency=16, slow_every=3),
    "grace-3s": Scenario(grace_s=3.0, concurrency=16, slow_every=3),
    "late-arrivals": Scenario(
        grace_s=0.0, concurrency=200, slow_every=1, wait_time_s=20, late=10, pollers=1
    ),
}


def _keys(marker: Path, what: str, before_ns: int | None = None) -> set[str]:
    """Keys with a ``what`` marker (written before ``before_ns``, time.monotonic_ns)."""
    return {
        p.read_text()
        for p in marker.glob(f"{what}-*")
        if before_ns is None or int(p.name.rsplit("-", 1)[1]) < before_ns
    }


def _put_all(harness: Harness, keys: list[str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: harness.put(k, f"{k}\n".encode()), keys))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_sigterm_releases_all_in_flight_work(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    sc = SCENARIOS[name]
    marker = tmp_path / "m"
    marker.mkdir()
    harness.configure(
        processor="s3flow_integrity_procs:MixedSpeedProcessor",
        concurrency=sc.concurrency,
        visibility_timeout_s=60,
        max_receive_count=3,
        retry_base_s=1,
        wait_time_s=1,  # the queue's default (configure() drains the queue with it)
        options={"fast_s": FAST_S, "slow_s": SLOW_S, "marker_dir": str(marker)},
    )
    assert harness.settings is not None
    harness.settings.pipelines[0].wait_time_s = sc.wait_time_s  # the worker's long polls
    config = harness.write_config()
    keys = [f"{'slow' if i % sc.slow_every == 0 else 'fast'}-{i:03d}.txt" for i in range(OBJECTS)]
    random.Random(7).shuffle(keys)
    _put_all(harness, keys)
    wait_for(lambda: harness.depth()[0] >= OBJECTS, 30, "all notifications queued")
    total = OBJECTS + sc.late
    in_flight_target = min(sc.concurrency, OBJECTS)
    if sc.pollers:
        monkeypatch.setenv("S3FLOW_WORKER__POLLERS_PER_PIPELINE", str(sc.pollers))

    log = tmp_path / "worker.log"
    proc = spawn_worker(config, log, "--shutdown-grace-s", str(sc.grace_s))
    try:
        wait_for(
            lambda: len(_keys(marker, "started") - _keys(marker, "done")) >= in_flight_target,
            60,
            f"{in_flight_target} objects in flight",
        )
        in_flight_at_term = harness.depth()[1]
        t_term = time.monotonic()
        t_term_ns = time.monotonic_ns()
        proc.send_signal(signal.SIGTERM)
        if sc.late:
            time.sleep(0.2)  # the moment the late notifications arrive (not a wait)
            _put_all(harness, [f"late-{i:03d}.txt" for i in range(sc.late)])
        rc = proc.wait(timeout=sc.grace_s + 60)
        t_exit = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    depth_at_exit = harness.depth()
    try:
        wait_for(lambda: harness.depth()[1] == 0, 1.0, "no message in flight")
        invisible_after_1s = 0
    except AssertionError:
        invisible_after_1s = harness.depth()[1]
    text = log.read_text(errors="replace")
    tail = "\n".join(text.splitlines()[-4:])

    started, done = _keys(marker, "started"), _keys(marker, "done")
    cut_short = started - done
    released = [int(n) for n in re.findall(r"released (\d+)", text)]
    print(
        f"{name}: exit {rc} after {t_exit - t_term:.1f}s; in flight at SIGTERM "
        f"{in_flight_at_term}; depth at exit {depth_at_exit}; started {len(started)}, "
        f"done {len(done)}, cut short {len(cut_short)}; summary released {released}"
    )

    problems: list[str] = []
    if rc != 0:
        problems.append(f"exit code {rc} (expected 0)")
    if t_exit - t_term > sc.grace_s + 10:
        problems.append(f"exit took {t_exit - t_term:.1f}s after SIGTERM (grace {sc.grace_s}s)")
    if invisible_after_1s:
        problems.append(
            f"ApproximateNumberOfMessagesNotVisible = {invisible_after_1s} 1 s after the exit "
            f"(at exit: {depth_at_exit[1]}; in flight at SIGTERM: {in_flight_at_term})"
        )
    if not released:
        problems.append("no 'released N' in the worker's summary")
    elif cut_short and (released[-1] == 0 or released[-1] < len(cut_short)):
        problems.append(
            f"summary says released {released[-1]}, but {len(cut_short)} objects were cut short"
        )
    rows = {r.key: r for r in state_rows(harness)}
    processing = sorted(k for k, r in rows.items() if r.status == "processing")
    if processing:
        problems.append(f"state records left 'processing': {len(processing)} ({processing[:5]})")
    # Objects the processor finished (well before SIGTERM, or within a real grace)
    # must be recorded and have their result; every completed one's message is deleted.
    # "Well before": 2 s, room for the output write and the state update after the
    # processor's marker on a loaded machine (grace 0 rightly cuts those short).
    finished = done if sc.grace_s >= 1 else _keys(marker, "done", t_term_ns - 2_000_000_000)
    not_completed = sorted(k for k in finished if k not in rows or rows[k].status != "completed")
    if not_completed:
        problems.append(
            f"finished objects not 'completed' in the state: {len(not_completed)} "
            f"({not_completed[:5]})"
        )
    completed = sorted(k for k, r in rows.items() if r.status == "completed")
    no_result = sorted(k for k, r in fetch_results(harness, completed).items() if r is None)
    if no_result:
        problems.append(f"completed objects without a result: {len(no_result)}")
    visible = harness.depth()[0]
    if visible != total - len(completed):
        problems.append(
            f"{visible} messages visible after the exit, expected {total - len(completed)} "
            f"({total} - {len(completed)} completed): acks not flushed, "
            "or messages stranded in flight"
        )
    assert not problems, "after SIGTERM ({}):\n  - {}\nworker log tail:\n{}".format(
        sc, "\n  - ".join(problems), tail
    )
