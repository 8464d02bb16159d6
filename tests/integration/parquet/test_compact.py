"""parquet-compact end to end: moto S3+SQS over HTTP, real worker / CLI subprocesses, Spark once.

Manifests are written by the tests themselves (the builder has its own tests);
the Parquet output is read back with pyarrow and DuckDB.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from itest_support import Harness, wait_for

pytestmark = pytest.mark.integration

DATES = ["2026-11-21", "2026-11-22", "2026-11-23"]


# --- helpers --------------------------------------------------------------------


def ndjson(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


class Data:
    """An input bucket with NDJSON files, and manifests over them."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.bucket = f"data-{uuid.uuid4().hex[:8]}"
        h.s3.create_bucket(Bucket=self.bucket)

    def put_many(self, items: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        def put(item: tuple[str, bytes]) -> dict[str, Any]:
            key, body = item
            resp = self.h.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
            return {
                "bucket": self.bucket,
                "key": key,
                "size": len(body),
                "etag": resp["ETag"].strip('"'),
                "version_id": None,
            }

        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(put, items))

    def manifest(
        self, manifest_id: str, date: str, files: list[dict[str, Any]], dataset: str = "events"
    ) -> str:
        """Write a manifest into the pipeline's bucket (sends its notification); return its URI."""
        doc = {
            "version": 1,
            "manifest_id": manifest_id,
            "dataset": dataset,
            "date": date,
            "created_at": "2026-11-23T12:00:00Z",
            "sealed_by": "test",
            "fencing_token": 1,
            "trigger": "count",
            "files": files,
            "total_files": len(files),
            "total_bytes": sum(f["size"] for f in files),
        }
        key = f"manifests/{dataset}/date={date}/{manifest_id}.json"
        self.h.s3.put_object(Bucket=self.h.bucket, Key=key, Body=json.dumps(doc).encode())
        return f"s3://{self.h.bucket}/{key}"


def parts(h: Harness, prefix: str = "curated/") -> list[str]:
    keys: list[str] = []
    for page in h.s3.get_paginator("list_objects_v2").paginate(Bucket=h.out_bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return sorted(k for k in keys if k.endswith(".parquet"))


def read_parts(h: Harness, keys: list[str]) -> pa.Table:
    tables = [
        pq.read_table(io.BytesIO(h.s3.get_object(Bucket=h.out_bucket, Key=k)["Body"].read()))
        for k in keys
    ]
    return pa.concat_tables(tables)


def configure(h: Harness, **options: Any) -> None:
    h.configure(
        processor="parquet-compact",
        prefix="manifests/",
        suffix=".json",
        output=f"s3://{h.out_bucket}/curated/",
        concurrency=3,
        visibility_timeout_s=60,
        options={"processes": 2, **options},
    )


def run_cli(h: Harness, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    cfg = h.write_config()
    return subprocess.run(
        [sys.executable, "-m", "s3flow", "run", "compact", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def row(rng: random.Random, i: int, date: str) -> dict[str, Any]:
    return {
        "id": i,
        "ts": f"{date}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
        "user": rng.randrange(10**9),
        "amount": round(rng.uniform(0, 1000), 2),
        "path": rng.choice(["/a", "/b/c", "/ü/ß", '/q?x="1"']),
        "tags": rng.sample(["x", "y", "z"], rng.randrange(3)),
        "geo": {"cc": rng.choice(["DE", "US", "JP"]), "lat": rng.uniform(-90, 90)},
    }


# --- tests --------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_thousand_files_three_dates_every_row_once(harness: Harness, tmp_path: Path) -> None:
    """1,000 NDJSON files (some gzip) over 3 dates -> 3 manifests -> worker -> Parquet."""
    h = harness
    configure(h)
    data = Data(h)
    rng = random.Random(5)
    expected: dict[int, dict[str, Any]] = {}
    items: dict[str, list[tuple[str, bytes]]] = {d: [] for d in DATES}
    next_id = 0
    for i in range(1000):
        date = DATES[i % 3]
        rows = [row(rng, next_id + j, date) for j in range(rng.randrange(5, 40))]
        next_id += len(rows)
        expected.update({r["id"]: r for r in rows})
        body = ndjson(rows)
        name = f"raw/{date}/f{i:04d}.ndjson"
        if i % 7 == 0:
            body, name = gzip.compress(body), name + ".gz"
        items[date].append((name, body))
    for n, date in enumerate(DATES):
        data.manifest(f"m{n}", date, data.put_many(items[date]))

    metrics = h.run(timeout_s=200)
    assert metrics.total("objects_processed") == 3
    assert metrics.total("dead_lettered") == 0

    keys = parts(h)
    assert keys == [f"curated/events/date={d}/part-m{n}-00000.parquet" for n, d in enumerate(DATES)]
    table = read_parts(h, keys)
    assert table.num_rows == len(expected)
    got = table.to_pylist()
    assert len({r["id"] for r in got}) == len(expected)
    for r in got:
        assert r == expected[r["id"]]
    assert table.schema.field("ts").type == pa.string()
    assert table.schema.field("geo").type == pa.struct([("cc", pa.string()), ("lat", pa.float64())])

    # DuckDB sees the same: every id exactly once, per date.
    local = tmp_path / "parts"
    for k in keys:
        dest = local / k
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(h.s3.get_object(Bucket=h.out_bucket, Key=k)["Body"].read())
    con = duckdb.connect()
    n, distinct, dates = con.execute(
        f"SELECT count(*), count(DISTINCT id), count(DISTINCT date) "
        f"FROM read_parquet('{local}/**/*.parquet', hive_partitioning = true)"
    ).fetchone()  # type: ignore[misc]
    assert (n, distinct, dates) == (len(expected), len(expected), 3)


DRIFT_FILES: list[list[Any]] = [
    [{"id": 1, "v": 1, "s": "a"}, {"id": 2, "v": 2, "s": "b"}],
    [{"id": 3, "v": 2.5, "s": "c", "new": True}],  # int -> float, new field
    [{"id": 4, "v": 3, "s": 7, "o": {"k": 1}}],  # string + int -> string
    [{"id": 5, "v": 4, "s": "d", "o": "flat"}],  # struct + string -> string (JSON text)
    [{"id": 6, "when": "2026-11-23"}, {"id": 7, "when": "later"}],  # not a timestamp
]


def drift_expected() -> list[dict[str, Any]]:
    base = {"id": None, "v": None, "s": None, "new": None, "o": None, "when": None}
    out = [
        {"id": 1, "v": 1.0, "s": "a"},
        {"id": 2, "v": 2.0, "s": "b"},
        {"id": 3, "v": 2.5, "s": "c", "new": True},
        {"id": 4, "v": 3.0, "s": "7", "o": '{"k":1}'},
        {"id": 5, "v": 4.0, "s": "d", "o": "flat"},
        {"id": 6, "when": "2026-11-23"},
        {"id": 7, "when": "later"},
    ]
    return [{**base, **r} for r in out]


@pytest.mark.timeout(120)
def test_schema_drift_and_malformed_lines_skipped_cli(harness: Harness) -> None:
    h = harness
    configure(h, compression="zstd")
    data = Data(h)
    items = [(f"d/f{i}.ndjson", ndjson(rows)) for i, rows in enumerate(DRIFT_FILES)]
    items.append(("d/bad.ndjson", ndjson([{"id": 8}]) + b'{"id": 9,\n' + b"[1]\n"))
    files = data.put_many(items)
    uri = data.manifest("drift", DATES[0], files)
    h.purge()

    res = run_cli(h, uri, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["malformed_lines"] == 2
    assert any("bad.ndjson line 2" in s for s in report["malformed_samples"])
    assert report["rows"] == 8
    keys = parts(h)
    assert keys == [f"curated/events/date={DATES[0]}/part-drift-00000.parquet"]
    table = read_parts(h, keys)
    assert table.schema.names == ["id", "v", "s", "new", "o", "when"]
    assert [str(f.type) for f in table.schema] == [
        "int64",
        "double",
        "string",
        "bool",
        "string",
        "string",
    ]
    want = [*drift_expected(), {**drift_expected()[0], **{k: None for k in ("v", "s")}, "id": 8}]
    assert table.to_pylist() == want
    meta = pq.ParquetFile(
        io.BytesIO(h.s3.get_object(Bucket=h.out_bucket, Key=keys[0])["Body"].read())
    )
    assert meta.metadata.row_group(0).column(0).compression == "ZSTD"


@pytest.mark.timeout(120)
def test_quarantine_policy_tags_the_file_and_leaves_it_out(harness: Harness) -> None:
    h = harness
    configure(h, malformed_lines="quarantine")
    data = Data(h)
    files = data.put_many(
        [
            ("q/good.ndjson", ndjson([{"id": 1}, {"id": 2}])),
            ("q/bad.ndjson", ndjson([{"id": 3}]) + b"not json\n"),
        ]
    )
    uri = data.manifest("q1", DATES[1], files)
    h.purge()
    res = run_cli(h, uri, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    [q] = report["quarantined"]
    assert q["uri"] == f"s3://{data.bucket}/q/bad.ndjson"
    assert q["reason"].startswith("malformed line 2: not JSON")
    assert read_parts(h, parts(h)).column("id").to_pylist() == [1, 2]
    tags = h.s3.get_object_tagging(Bucket=data.bucket, Key="q/bad.ndjson")["TagSet"]
    assert {"Key": "s3flow-status", "Value": "quarantined"} in tags


def test_an_input_overwritten_or_deleted_since_sealing_is_left_out_not_fatal(
    harness: Harness,
) -> None:
    """One file overwritten after its manifest was sealed failed the whole manifest for
    good (InputChangedError, permanent): no row of the other files ever reached Parquet.
    The newer upload has its own record and manifest; a deleted file is gone."""
    h = harness
    configure(h)
    data = Data(h)
    files = data.put_many(
        [
            ("o/a.ndjson", ndjson([{"id": 1}, {"id": 2}])),
            ("o/b.ndjson", ndjson([{"id": 3}])),
            ("o/c.ndjson", ndjson([{"id": 4}])),
        ]
    )
    uri = data.manifest("o1", DATES[2], files)
    h.s3.put_object(Bucket=data.bucket, Key="o/b.ndjson", Body=ndjson([{"id": 30}]))
    h.s3.delete_object(Bucket=data.bucket, Key="o/c.ndjson")
    h.purge()
    res = run_cli(h, uri, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    left = {s["uri"]: s["reason"] for s in report["superseded"]}
    assert set(left) == {f"s3://{data.bucket}/o/b.ndjson", f"s3://{data.bucket}/o/c.ndjson"}
    assert all(r.startswith("superseded: input s3://") for r in left.values()), left
    assert "gone or changed since the manifest was sealed" in left[f"s3://{data.bucket}/o/b.ndjson"]
    assert report["quarantined"] == []
    assert sorted(read_parts(h, parts(h)).column("id").to_pylist()) == [1, 2]
    tags = h.s3.get_object_tagging(Bucket=data.bucket, Key="o/b.ndjson")["TagSet"]
    assert tags == []  # the newer upload is not the one left out: never tagged


def test_an_input_gone_after_a_run_wrote_parts_is_not_left_out_on_a_rerun(
    harness: Harness,
) -> None:
    """A rerun of a manifest whose parts are written (its ack lost, say) must not rewrite
    them without a file that went since: those rows were in the dataset. And a manifest
    whose every input is gone has nothing to compact (a wrong root, not superseded files)."""
    h = harness
    configure(h)
    data = Data(h)
    files = data.put_many(
        [("r/a.ndjson", ndjson([{"id": 1}])), ("r/b.ndjson", ndjson([{"id": 2}]))]
    )
    uri = data.manifest("r1", "2026-11-24", files)
    h.purge()
    assert run_cli(h, uri).returncode == 0
    before = parts(h)
    h.s3.delete_object(Bucket=data.bucket, Key="r/b.ndjson")
    again = run_cli(h, uri)
    assert again.returncode == 2, again.stdout + again.stderr
    assert "an earlier run wrote its parts" in " ".join(again.stderr.split())
    assert parts(h) == before
    assert sorted(read_parts(h, before).column("id").to_pylist()) == [1, 2]
    h.s3.delete_object(Bucket=data.bucket, Key="r/a.ndjson")
    gone = data.manifest("r2", "2026-11-24", files)
    res = run_cli(h, gone)
    assert res.returncode == 2 and "nothing to compact" in " ".join(res.stderr.split())


@pytest.mark.timeout(120)
def test_cli_errors_are_clear(harness: Harness) -> None:
    h = harness
    configure(h)
    res = run_cli(h, f"s3://{h.bucket}/manifests/nope.json")
    assert res.returncode == 2
    assert "nope.json" in res.stderr
    res = run_cli(h, "not-a-uri")
    assert res.returncode == 2 and "s3://bucket/key" in res.stderr
    res = run_cli(h, f"s3://{h.bucket}/")
    assert res.returncode == 2 and "MANIFEST: S3 URI without a key" in res.stderr
    h.s3.put_object(Bucket=h.bucket, Key="manifests/bad.json", Body=b'{"version": 1}')
    res = run_cli(h, f"s3://{h.bucket}/manifests/bad.json")
    assert res.returncode == 2 and "missing field" in res.stderr
    assert parts(h) == []


@pytest.mark.timeout(180)
def test_killed_compaction_reruns_to_the_same_output(harness: Harness) -> None:
    h = harness
    configure(h, processes=1, parquet_target_mb=0.05, row_group_mb=0.05)
    data = Data(h)
    rng = random.Random(9)
    rows = [row(rng, i, DATES[2]) for i in range(40_000)]
    items = [(f"k/f{i:03d}.ndjson", ndjson(rows[i * 200 : (i + 1) * 200])) for i in range(200)]
    uri = data.manifest("kill", DATES[2], data.put_many(items))
    h.purge()
    prefix = f"curated/events/date={DATES[2]}/"
    stale = prefix + "part-kill-00999.parquet"
    h.s3.put_object(Bucket=h.out_bucket, Key=stale, Body=b"from an older run")

    cfg = h.write_config()
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3flow", "run", "compact", "-c", str(cfg), uri],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its process group: the pool workers die with it
    )
    try:
        wait_for(lambda: len(parts(h)) >= 3, timeout_s=90, what="the first parts")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    first = parts(h)
    assert stale in first  # killed before it could clean up

    res = run_cli(h, uri, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    n = len(report["parts"])
    assert n > 3
    assert len(first) - 1 < n  # the kill left the job unfinished
    assert parts(h) == [f"{prefix}part-kill-{i:05d}.parquet" for i in range(n)]
    assert f"s3://{h.out_bucket}/{stale}" in report["stale_parts_deleted"]
    table = read_parts(h, parts(h))
    assert table.column("id").to_pylist() == list(range(40_000))
    assert table.to_pylist() == rows


@pytest.mark.timeout(240)
def test_spark_executor_gives_the_same_output(harness: Harness) -> None:
    h = harness
    configure(h, parquet_target_mb=0.002)
    data = Data(h)
    rng = random.Random(3)
    items = [(f"s/f{i}.ndjson", ndjson(rows)) for i, rows in enumerate(DRIFT_FILES)]
    items += [
        (f"s/r{i}.ndjson", ndjson([row(rng, 100 + i * 50 + j, DATES[0]) for j in range(50)]))
        for i in range(6)
    ]
    items.append(("s/bad.ndjson", ndjson([{"id": 99}]) + b"{oops\n"))
    files = data.put_many(items)
    uri = data.manifest("sp", DATES[0], files)
    h.purge()
    local = run_cli(h, uri, "--json", "--output", f"s3://{h.out_bucket}/local/")
    assert local.returncode == 0, local.stderr
    spark = run_cli(
        h,
        uri,
        "--json",
        "--executor",
        "spark",
        "--output",
        f"s3://{h.out_bucket}/spark/",
        timeout=200,
    )
    assert spark.returncode == 0, spark.stderr
    rl, rs = json.loads(local.stdout), json.loads(spark.stdout)
    assert rs["executor"] == "spark"
    assert len(rl["parts"]) == len(rs["parts"]) > 1
    assert [p["rows"] for p in rl["parts"]] == [p["rows"] for p in rs["parts"]]
    assert rl["malformed_lines"] == rs["malformed_lines"] == 1
    tl = read_parts(h, parts(h, "local/"))
    ts = read_parts(h, parts(h, "spark/"))
    assert tl.schema.equals(ts.schema)
    assert tl.to_pylist() == ts.to_pylist()
    assert tl.num_rows == 7 + 300 + 1


def seal_tracked(h: Harness, manifest_id: str, day: str, files: list[Any]) -> dict[str, Any]:
    """Track ``files`` as pending in the state store and seal them into one manifest
    (as the builder does); return the manifest document to upload."""
    import asyncio

    from s3flow.pipelines.ndjson_parquet.manifests import manifest_document
    from s3flow.state import ManifestStatus, open_state_store
    from s3flow.state.records import ManifestRecord

    async def seal() -> dict[str, Any]:
        async with open_state_store(h.state_url) as store:
            assert store is not None
            for f in files:
                await store.add_pending("events", day, f)
            token = await store.acquire_lock("seal:events", owner="t", ttl_s=30)
            assert token is not None
            draft = ManifestRecord(
                manifest_id=manifest_id,
                dataset="events",
                date=day,
                status=ManifestStatus.SEALING,
                files=files,
                trigger="count",
                fencing_token=token,
                sealed_by="t",
                created_at=0.0,
            )
            sealed = await store.seal_manifest(draft, lock="seal:events", owner="t", token=token)
            assert sealed is not None
            return manifest_document(sealed)

    return asyncio.run(seal())


def tracked_state(
    h: Harness, manifest_id: str, day: str, files: list[Any]
) -> tuple[Any, list[Any]]:
    """The manifest's record and its files' tracked states."""
    import asyncio

    from s3flow.state import open_state_store

    async def state() -> tuple[Any, list[Any]]:
        async with open_state_store(h.state_url) as store:
            assert store is not None
            m = await store.get_manifest(manifest_id)
            return m, [await store.get_tracked("events", day, f.id) for f in files]

    return asyncio.run(state())


@pytest.mark.timeout(120)
def test_state_store_manifest_and_files_follow_the_compaction(harness: Harness) -> None:
    from s3flow.state import ManifestFileStatus, ManifestStatus
    from s3flow.state.records import ManifestFile

    h = harness
    configure(h)
    assert h.settings is not None
    data = Data(h)
    entries = data.put_many([(f"st/f{i}.ndjson", ndjson([{"id": i}])) for i in range(3)])
    files = [ManifestFile(e["bucket"], e["key"], e["size"], e["etag"]) for e in entries]
    day = DATES[0]

    doc = seal_tracked(h, "st-1", day, files)
    key = f"manifests/events/date={day}/st-1.json"
    h.s3.put_object(Bucket=h.bucket, Key=key, Body=json.dumps(doc).encode())
    h.purge()

    # An input deleted behind the manifest's back: left out, the rest compacted; the
    # file is recorded held out, the others completed.
    h.s3.delete_object(Bucket=data.bucket, Key="st/f1.ndjson")
    res = run_cli(h, f"s3://{h.bucket}/{key}")
    assert res.returncode == 0, res.stderr
    m, tracked = tracked_state(h, "st-1", day, files)
    assert m.status is ManifestStatus.COMPLETED and m.attempts == 1
    assert "1 files left out (changed or gone since sealing)" in m.detail, m.detail
    assert [t.status for t in tracked] == [
        ManifestFileStatus.COMPLETED,
        ManifestFileStatus.QUARANTINED,
        ManifestFileStatus.COMPLETED,
    ]
    assert read_parts(h, parts(h)).column("id").to_pylist() == [0, 2]


@pytest.mark.timeout(120)
def test_quarantined_files_are_recorded_quarantined_not_completed(harness: Harness) -> None:
    from s3flow.state import ManifestFileStatus, ManifestStatus
    from s3flow.state.records import ManifestFile

    h = harness
    configure(h, malformed_lines="quarantine")
    data = Data(h)
    entries = data.put_many(
        [
            ("sq/good.ndjson", ndjson([{"id": 1}, {"id": 2}])),
            ("sq/bad.ndjson", ndjson([{"id": 3}]) + b"not json\n"),
        ]
    )
    files = [ManifestFile(e["bucket"], e["key"], e["size"], e["etag"]) for e in entries]
    day = DATES[2]

    doc = seal_tracked(h, "sq-1", day, files)
    key = f"manifests/events/date={day}/sq-1.json"
    h.s3.put_object(Bucket=h.bucket, Key=key, Body=json.dumps(doc).encode())
    h.purge()
    res = run_cli(h, f"s3://{h.bucket}/{key}")
    assert res.returncode == 0, res.stderr
    m, (good, bad) = tracked_state(h, "sq-1", day, files)
    assert m.status is ManifestStatus.COMPLETED and "1 files quarantined" in m.detail
    assert good.status is ManifestFileStatus.COMPLETED
    assert bad.status is ManifestFileStatus.QUARANTINED
    assert bad.detail.startswith("malformed line 2: not JSON")
    assert read_parts(h, parts(h)).column("id").to_pylist() == [1, 2]
