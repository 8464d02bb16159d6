"""Shared by the core-integrity tests: a corpus of known objects and a user's checks.

:func:`upload_corpus` puts ``n`` small text objects with distinct, known line
counts (moto sends one notification per put). :func:`integrity_problems`
checks everything a user would after the workers are done and returns one
line per violated expectation (empty = all good), so one run reports every
failure at once:

* every object has a result, and its ``lines`` and byte counts are right;
* the DLQ holds nothing (visible or in flight);
* the source queue holds nothing (visible or in flight);
* every object's state record is ``completed`` and none is left ``processing``;
* no record took more attempts than allowed (``max_attempts``).
"""

from __future__ import annotations

import collections
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from itest_support import Harness, wait_for


@dataclass(frozen=True)
class Expected:
    """What the line-count result of one uploaded object must say."""

    key: str
    lines: int
    size: int
    etag: str


def corpus_body(i: int) -> bytes:
    """Object ``i``'s content: ``i + 1`` lines (odd ``i``: no newline at the end)."""
    body = b"".join(f"object {i:04d} line {j}\n".encode() for j in range(i + 1))
    return body[:-1] if i % 2 else body


def upload_corpus(harness: Harness, n: int, prefix: str = "obj/") -> dict[str, Expected]:
    """Put ``n`` objects (in parallel) and wait until the queue has their ``n`` notifications."""

    def put(i: int) -> Expected:
        key = f"{prefix}{i:04d}.txt"
        body = corpus_body(i)
        resp = harness.s3.put_object(Bucket=harness.bucket, Key=key, Body=body)
        return Expected(key, i + 1, len(body), str(resp["ETag"]).strip('"'))

    with ThreadPoolExecutor(8) as pool:
        corpus = {e.key: e for e in pool.map(put, range(n))}
    wait_for(lambda: harness.depth()[0] >= n, 30, f"{n} notifications on the queue")
    return corpus


def result_keys(harness: Harness) -> set[str]:
    """The object keys that have a result (``res/<key>.json``) so far."""
    out: set[str] = set()
    paginator = harness.s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=harness.out_bucket, Prefix="res/"):
        for o in page.get("Contents", []):
            out.add(o["Key"][len("res/") : -len(".json")])
    return out


def fetch_results(harness: Harness, keys: list[str]) -> dict[str, dict[str, Any] | None]:
    """Every key's parsed result (None if missing), fetched in parallel."""
    with ThreadPoolExecutor(8) as pool:
        return dict(zip(keys, pool.map(harness.result, keys), strict=True))


@dataclass(frozen=True)
class StateRow:
    """One ``files`` record of the SQLite state store."""

    key: str
    version: str
    status: str
    attempts: int
    last_error_class: str | None
    last_error: str | None


def state_rows(harness: Harness) -> list[StateRow]:
    """The state records of the harness's source bucket, read-only (sqlite3 directly)."""
    assert harness.state_url.startswith("sqlite:")
    path = harness.state_url[len("sqlite:") :]
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT key, version, status, attempts, last_error_class, last_error "
            "FROM files WHERE bucket = ? ORDER BY key",
            (harness.bucket,),
        ).fetchall()
    finally:
        conn.close()
    return [StateRow(*r) for r in rows]


def _some(items: list[Any], n: int = 5) -> str:
    return ", ".join(str(x) for x in items[:n]) + (" ..." if len(items) > n else "")


def integrity_problems(
    harness: Harness, corpus: dict[str, Expected], *, max_attempts: int | None = None
) -> list[str]:
    """Check everything a user would; one line per violated expectation."""
    problems: list[str] = []
    keys = sorted(corpus)
    results = fetch_results(harness, keys)
    missing = [k for k in keys if results[k] is None]
    wrong: list[str] = []
    for k in keys:
        r, e = results[k], corpus[k]
        if r is None:
            continue
        got = (r.get("lines"), r.get("uncompressed_bytes"), r.get("compressed_bytes"))
        if got != (e.lines, e.size, e.size) or r.get("key") != k:
            wrong.append(f"{k}: lines/uncompressed/compressed {got} != {(e.lines, e.size, e.size)}")
    if missing:
        problems.append(f"results missing: {len(missing)} of {len(keys)} ({_some(missing)})")
    if wrong:
        problems.append(f"results wrong: {len(wrong)} ({_some(wrong, 3)})")

    dlq = harness.depth(harness.dlq_url)
    if dlq != (0, 0):
        bodies = [m.get("MessageAttributes", {}) for m in harness.dlq_messages()]
        classes = collections.Counter(
            a.get("s3flow.error-class", {}).get("StringValue", "(moved by SQS redrive)")
            for a in bodies
        )
        problems.append(
            f"DLQ not empty: {dlq[0]} visible + {dlq[1]} in flight (error classes: {dict(classes)})"
        )
    src = harness.depth()
    if src != (0, 0):
        problems.append(f"source queue not empty: {src[0]} visible + {src[1]} in flight")

    rows = state_rows(harness)
    by_status = collections.Counter(r.status for r in rows)
    processing = [r.key for r in rows if r.status == "processing"]
    if processing:
        problems.append(
            f"state records left 'processing': {len(processing)} ({_some(processing)}); "
            f"statuses {dict(by_status)}"
        )
    completed = {r.key for r in rows if r.status == "completed"}
    not_completed = [k for k in keys if k not in completed]
    if not_completed:
        problems.append(
            f"objects without a 'completed' state record: {len(not_completed)} "
            f"({_some(not_completed)}); statuses {dict(by_status)}"
        )
    if max_attempts is not None:
        over = [f"{r.key}={r.attempts}" for r in rows if r.attempts > max_attempts]
        if over:
            problems.append(f"records with attempts > {max_attempts}: {len(over)} ({_some(over)})")
    drift = counter_drift(harness)
    if drift:
        problems.append(f"status counters differ from a recount of the records: {drift}")
    return problems


def counter_drift(harness: Harness) -> dict[tuple[str, str], tuple[int, int]]:
    """(pipeline, status) -> (counter, records) where ``s3flow status``'s counters are wrong.

    The SQLite store keeps them in the transaction of every transition, so
    they match a full recount whatever process was killed when.
    """
    path = harness.state_url[len("sqlite:") :]
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        counters = conn.execute("SELECT pipeline, status, n FROM file_counts")
        have = {(p, s): n for p, s, n in counters if n}
        want = {
            (p, s): n
            for p, s, n in conn.execute(
                "SELECT pipeline, status, count(*) FROM files GROUP BY pipeline, status"
            )
        }
    finally:
        conn.close()
    return {
        k: (have.get(k, 0), want.get(k, 0))
        for k in sorted(set(have) | set(want))
        if have.get(k, 0) != want.get(k, 0)
    }


def attempts_histogram(harness: Harness) -> dict[int, int]:
    """attempts -> number of records (for the test output)."""
    return dict(sorted(collections.Counter(r.attempts for r in state_rows(harness)).items()))
