"""The whole ``ndjson-to-parquet`` pipeline end to end on the real endpoint.

1,000 NDJSON files over 3 dates land in a bucket -> the ``ndjson-manifest``
builder seals manifests per date -> each manifest's notification reaches the
``parquet-compact`` pipeline -> Parquet parts per date. Every row is read back
with pyarrow: each exactly once, in its date's partition, values equal.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from itest_support import Harness

from s3flow.app import run_worker
from s3flow.provisioning import provision
from s3flow.settings import Settings, load_settings
from s3flow.state import ManifestStatus, open_state_store

pytestmark = [pytest.mark.integration, pytest.mark.many_pollers]

DATES = ["2026-11-21", "2026-11-22", "2026-11-23"]
FILES = 1000
ROWS_PER_FILE = 4
MAX_FILES = 100  # per manifest: each date gets 3 full manifests + 1 sealed at stop


def _rows(n: int, date: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{n:04d}-{r}",
            "date": date,
            "n": n * ROWS_PER_FILE + r,
            "price": (n % 97) * 1.25,
            "tag": ["a", "b", None][r % 3],
        }
        for r in range(ROWS_PER_FILE)
    ]


def _settings(h: Harness, **compact_options: Any) -> Settings:
    base = {
        "concurrency": 16,
        "visibility_timeout_s": 60,
        "wait_time_s": 1,
        "retry_base_s": 1,
    }
    return load_settings(
        None,
        {
            "worker": {"shutdown_grace_s": 30, "ack_batch_window_s": 0.02},
            "state": {"url": h.state_url},
            "pipelines": [
                {
                    **base,
                    "name": "events",
                    "processor": "ndjson-manifest",
                    "bucket": h.bucket,
                    "prefix": "raw/",
                    "queue": f"{h.queue}-ndjson",
                    "output": f"s3://{h.out_bucket}/unused/",
                    "options": {
                        "min_bytes": 1,
                        "manifest_max_files": MAX_FILES,
                        "manifest_bucket": h.out_bucket,
                        "manifest_prefix": "manifests/",
                        "seal_on_stop": True,
                    },
                },
                {
                    **base,
                    "name": "compact",
                    "processor": "parquet-compact",
                    "bucket": h.out_bucket,
                    "prefix": "manifests/",
                    "suffix": ".json",
                    "queue": f"{h.queue}-compact",
                    "output": f"s3://{h.out_bucket}/curated/",
                    "concurrency": 2,
                    "options": {"processes": 2, **compact_options},
                },
            ],
        },
    )


def _purge(h: Harness, queue: str) -> None:
    url = h.sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    h.sqs.purge_queue(QueueUrl=url)


def _list(h: Harness, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in h.s3.get_paginator("list_objects_v2").paginate(Bucket=h.out_bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return sorted(keys)


@pytest.mark.timeout(300)
def test_thousand_files_three_dates_every_row_exactly_once(harness: Harness) -> None:
    h = harness
    settings = _settings(h)
    asyncio.run(provision(settings))
    _purge(h, f"{h.queue}-ndjson")  # the s3:TestEvents of the new notifications
    _purge(h, f"{h.queue}-compact")

    expected: dict[str, dict[str, Any]] = {}
    for n in range(FILES):
        date = DATES[n % 3]
        rows = _rows(n, date)
        body = "".join(json.dumps(r) + "\n" for r in rows).encode()
        if n % 10 == 0:
            body = gzip.compress(body)  # some gzip files in the mix
        h.put(f"raw/{date}/part-{n:04d}-{uuid.uuid4().hex[:4]}.ndjson", body)
        expected.update({r["id"]: r for r in rows})

    # 1. The builder: every file tracked, manifests sealed (3 x 100 per date by
    #    count while running, the remainder of each date at stop: seal_on_stop).
    built = asyncio.run(
        asyncio.wait_for(run_worker(settings, burst=True, pipelines=["events"]), 180)
    )
    assert built.pipelines["events"].objects_processed == FILES

    async def manifests() -> list[Any]:
        async with open_state_store(settings.state.url) as store:
            return await store.list_manifests(dataset="events")

    sealed = asyncio.run(manifests())
    per_date = Counter(m.date for m in sealed)
    assert per_date == {d: 4 for d in DATES}
    for d in DATES:
        sizes = sorted(m.total_files for m in sealed if m.date == d)
        assert sizes[1:] == [MAX_FILES] * 3
        assert sum(sizes) == len([n for n in range(FILES) if DATES[n % 3] == d])
    assert len(_list(h, "manifests/events/")) == len(sealed)

    # 2. Compaction: each manifest's notification -> Parquet parts.
    compacted = asyncio.run(
        asyncio.wait_for(run_worker(settings, burst=True, pipelines=["compact"]), 180)
    )
    assert compacted.pipelines["compact"].objects_processed == len(sealed)
    assert compacted.pipelines["compact"].dead_lettered == 0
    assert {m.status for m in asyncio.run(manifests())} == {ManifestStatus.COMPLETED}

    # 3. Read every part back: each row exactly once, in its date's partition.
    seen: Counter[str] = Counter()
    for key in _list(h, "curated/events/"):
        assert key.endswith(".parquet"), key
        date = key.split("date=", 1)[1].split("/", 1)[0]
        body = h.s3.get_object(Bucket=h.out_bucket, Key=key)["Body"].read()
        for row in pq.read_table(io.BytesIO(body)).to_pylist():
            seen[row["id"]] += 1
            assert row["date"] == date, (key, row)
            want = expected[row["id"]]
            assert {k: row[k] for k in want} == want
    assert set(seen) == set(expected)
    assert max(seen.values()) == 1


def _toml(settings: Settings, path: Path) -> Path:
    """The pipelines of ``settings`` as a config file for the CLI."""

    def value(v: Any) -> str:
        return json.dumps(v)  # strings, numbers and booleans read the same in TOML

    lines = ["[state]", f"url = {value(settings.state.url)}"]
    for p in settings.pipelines:
        lines += ["[[pipelines]]"] + [
            f"{k} = {value(getattr(p, k))}"
            for k in ("name", "processor", "bucket", "prefix", "queue", "output")
        ]
        lines += ["[pipelines.options]"] + [f"{k} = {value(v)}" for k, v in p.options.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.timeout(180)
def test_files_show_tells_what_the_compaction_did_with_a_file(
    harness: Harness, tmp_path: Path
) -> None:
    """The builder's own record of a file says "completed" (it tracked the file); the
    file's fate in its manifest - quarantined by the compaction here - is shown too."""
    h = harness
    settings = _settings(h, malformed_lines="quarantine")
    asyncio.run(provision(settings))
    _purge(h, f"{h.queue}-ndjson")
    _purge(h, f"{h.queue}-compact")
    good = f"raw/{DATES[0]}/good.ndjson"
    bad = f"raw/{DATES[0]}/bad.ndjson"
    h.put(good, b'{"id": 1}\n{"id": 2}\n')
    h.put(bad, b'{"id": 3}\nnot json\n')  # the first record is valid: the builder takes it
    for pipeline in ("events", "compact"):
        asyncio.run(asyncio.wait_for(run_worker(settings, burst=True, pipelines=[pipeline]), 120))
    config = _toml(settings, tmp_path / "s3flow.toml")

    def show(key: str) -> str:
        res = subprocess.run(
            [sys.executable, "-m", "s3flow", "files", "show", key, "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert res.returncode == 0, res.stderr
        return res.stdout

    out = show(bad)
    assert "completed, attempts 1, pipeline events" in out  # the builder's record
    assert f"(events {DATES[0]}): quarantined: malformed line 2" in out
    assert "in manifest events-" in out
    assert f"(events {DATES[0]}): completed" in show(good)


@pytest.mark.timeout(180)
def test_the_worker_logs_which_malformed_lines_it_skipped(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Under ``skip`` the manifest's record keeps only a count: the worker's log names
    the lines (a record nested deeper than Arrow's limit among them: it used to fail
    the whole manifest)."""
    h = harness
    settings = _settings(h)
    asyncio.run(provision(settings))
    _purge(h, f"{h.queue}-ndjson")
    _purge(h, f"{h.queue}-compact")
    deep = b'{"id": 3, "x": ' + b"[" * 100 + b"]" * 100 + b"}\n"
    h.put(f"raw/{DATES[0]}/a.ndjson", b'{"id": 1}\nnot json\n' + deep + b'{"id": 4}\n')
    caplog.set_level(logging.WARNING, logger="s3flow")
    for pipeline in ("events", "compact"):
        asyncio.run(asyncio.wait_for(run_worker(settings, burst=True, pipelines=[pipeline]), 120))
    (warning,) = [r.getMessage() for r in caplog.records if "malformed lines" in r.getMessage()]
    assert "2 malformed lines skipped" in warning, warning
    assert f"s3://{h.bucket}/raw/{DATES[0]}/a.ndjson line 2: not JSON" in warning
    assert "line 3: objects and arrays nested 100 levels deep" in warning
    parts = [k for k in _list(h, "curated/") if k.endswith(".parquet")]
    assert parts, _list(h, "")
