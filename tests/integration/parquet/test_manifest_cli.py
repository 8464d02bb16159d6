"""`s3flow manifests ...` as real subprocesses: burst leftovers, seal, list, show, retry."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from itest_support import Harness
from test_manifest_builder import DAY, body, options, pending_count, store_of, write_config

from s3flow.state import ManifestStatus

pytestmark = pytest.mark.integration


def s3flow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s3flow", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def _one_sealed_manifest(
    harness: Harness, tmp_path: Path, opts: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """Two files of one day through a burst run, sealed by hand: the config and the
    manifest's row of `manifests list --json`."""
    harness.configure(processor="ndjson-manifest", options=opts)
    cfg = write_config(harness, tmp_path / "s3flow.toml", opts)
    for i in range(2):
        harness.put(f"{DAY}/part-{i}.ndjson", body(2))
    harness.run(timeout_s=60)
    assert s3flow("manifests", "seal", "-p", "p", "--all", "-c", str(cfg)).returncode == 0
    (row,) = json.loads(s3flow("manifests", "list", "-c", str(cfg), "--json").stdout)
    return cfg, row


@pytest.mark.timeout(120)
def test_seal_list_show_retry(harness: Harness, tmp_path: Path) -> None:
    harness.configure(processor="ndjson-manifest", options=options())
    cfg = write_config(harness, tmp_path / "s3flow.toml", options())
    for i in range(3):
        harness.put(f"{DAY}/part-{i}.ndjson", body(2))
    harness.run(timeout_s=60)  # burst: below every threshold, nothing sealed
    assert pending_count(harness) == 3
    pending = s3flow("manifests", "pending", "-p", "p", "-c", str(cfg))
    assert pending.returncode == 0, pending.stderr
    assert DAY in pending.stdout and " 3 " in pending.stdout
    nothing = s3flow("manifests", "seal", "-p", "p", "-c", str(cfg))
    assert nothing.returncode == 0 and "nothing to seal" in nothing.stdout
    sealed = s3flow("manifests", "seal", "-p", "p", "--all", "-c", str(cfg))
    assert sealed.returncode == 0, sealed.stderr
    assert "(forced): 3 files" in sealed.stdout
    assert pending_count(harness) == 0
    listed = s3flow("manifests", "list", "-c", str(cfg), "--json")
    (row,) = json.loads(listed.stdout)
    mid = row["manifest_id"]
    assert (row["status"], row["total_files"], row["trigger"]) == ("sealed", 3, "forced")
    shown = s3flow("manifests", "show", mid, "-c", str(cfg), "--json")
    doc = json.loads(shown.stdout)
    assert [f["status"] for f in doc["files"]] == ["manifested"] * 3
    assert doc["location"].endswith(f"manifests/events/date={DAY}/{mid}.json")
    assert s3flow("manifests", "show", "nope", "-c", str(cfg)).returncode == 1

    async def to(status: ManifestStatus, detail: str = "") -> None:
        async with store_of(harness) as store:
            await store.set_manifest_status(mid, status, detail=detail)

    asyncio.run(to(ManifestStatus.PROCESSING))  # what the compaction side records
    refused = s3flow("manifests", "retry", mid, "-c", str(cfg))
    assert refused.returncode == 2 and "is processing" in refused.stderr
    asyncio.run(to(ManifestStatus.FAILED, "boom"))
    key = doc["location"].split("/", 3)[3]
    before = harness.s3.head_object(Bucket=harness.bucket, Key=key)["ETag"]
    retried = s3flow("manifests", "retry", mid, "-c", str(cfg))
    assert retried.returncode == 0, retried.stderr
    after = harness.s3.get_object(Bucket=harness.bucket, Key=key)
    assert after["ETag"] != before  # a new version: the compaction queue gets a new event
    assert json.loads(after["Body"].read())["republish"] == 2
    again = json.loads(s3flow("manifests", "show", mid, "-c", str(cfg), "--json").stdout)
    assert again["status"] == "sealed" and again["detail"] == "retry requested"
    assert {f["status"] for f in again["files"]} == {"manifested"}


@pytest.mark.timeout(120)
def test_retry_whose_publish_failed_can_be_retried(harness: Harness, tmp_path: Path) -> None:
    out = harness.out_bucket
    cfg, row = _one_sealed_manifest(harness, tmp_path, options(manifest_bucket=out))
    mid = row["manifest_id"]
    key = row["location"].split("/", 3)[3]

    async def fail_it() -> None:
        async with store_of(harness) as store:
            await store.set_manifest_status(mid, ManifestStatus.PROCESSING)
            await store.set_manifest_status(mid, ManifestStatus.FAILED, detail="boom")

    asyncio.run(fail_it())
    # The manifest bucket is gone: the retry's PutObject fails after the status moved.
    for obj in harness.s3.list_objects_v2(Bucket=out).get("Contents", []):
        harness.s3.delete_object(Bucket=out, Key=obj["Key"])
    harness.s3.delete_bucket(Bucket=out)
    broken = s3flow("manifests", "retry", mid, "-c", str(cfg))
    assert broken.returncode != 0 and "PutObject" in broken.stderr
    shown = json.loads(s3flow("manifests", "show", mid, "-c", str(cfg), "--json").stdout)
    assert shown["status"] == "sealed"
    # Once the bucket is back, retrying again publishes it.
    harness.s3.create_bucket(Bucket=out)
    retried = s3flow("manifests", "retry", mid, "-c", str(cfg))
    assert retried.returncode == 0, retried.stderr
    doc = json.loads(harness.s3.get_object(Bucket=out, Key=key)["Body"].read())
    assert (doc["manifest_id"], doc["republish"]) == (mid, 2)


@pytest.mark.timeout(120)
def test_seal_waits_for_a_dead_builders_lock(harness: Harness, tmp_path: Path) -> None:
    """After a SIGKILL the dead worker's sealing lock lives until its TTL: `seal --all`
    said "nothing to seal (or another builder holds the lock)", exit 0, and sealed nothing
    although every file was due."""
    harness.configure(processor="ndjson-manifest", options=options())
    cfg = write_config(harness, tmp_path / "s3flow.toml", options())
    for i in range(2):
        harness.put(f"{DAY}/part-{i}.ndjson", body(2))
    harness.run(timeout_s=60)
    assert pending_count(harness) == 2

    async def lock(token: int | None = None) -> int | None:
        async with store_of(harness) as store:
            if token is None:
                return await store.acquire_lock("manifests:events", owner="dead", ttl_s=3)
            renewed = await store.renew_lock("manifests:events", owner="dead", token=token, ttl_s=3)
            return token if renewed else None

    token = asyncio.run(lock())
    assert token is not None
    log = tmp_path / "seal.log"
    command = ["manifests", "seal", "-p", "p", "--all", "-c", str(cfg)]
    with log.open("wb") as out:
        seal = subprocess.Popen(
            [sys.executable, "-m", "s3flow", *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )

    def said() -> str:
        return " ".join(log.read_text(errors="replace").split())

    # The builder is alive (its lock renewed) until the command says it waits for it;
    # then it dies, and its lock lapses 3 s later. Renewing until then keeps the test
    # true however long the command takes to start on a loaded machine.
    deadline = time.monotonic() + 90
    while "another builder holds the sealing lock of 'p'" not in said():
        assert seal.poll() is None, said()
        assert time.monotonic() < deadline, said()
        assert asyncio.run(lock(token)) == token
        time.sleep(0.5)
    assert seal.wait(timeout=60) == 0, said()
    assert "(forced): 2 files" in said()
    assert pending_count(harness) == 0


@pytest.mark.timeout(120)
def test_a_file_the_compaction_held_out_shows_its_reason_and_is_not_released_in_vain(
    harness: Harness, tmp_path: Path
) -> None:
    """`manifests show` printed no reason for a quarantined file, and `files release`
    said "enqueued again" although the builder's rerun changed nothing."""
    cfg, row = _one_sealed_manifest(harness, tmp_path, options())
    mid = row["manifest_id"]
    why = "malformed line 2: not JSON (Expecting value)"

    async def compact_holding_out_the_first() -> str:
        async with store_of(harness) as store:
            m = await store.get_manifest(mid)
            assert m is not None
            held = m.files[0]
            await store.set_manifest_status(mid, ManifestStatus.PROCESSING)
            await store.set_manifest_status(
                mid, ManifestStatus.COMPLETED, quarantined={held.id: why}
            )
            return held.key

    held_key = asyncio.run(compact_holding_out_the_first())
    kept_key = next(f"{DAY}/part-{i}.ndjson" for i in range(2) if f"part-{i}" not in held_key)
    doc = json.loads(s3flow("manifests", "show", mid, "-c", str(cfg), "--json").stdout)
    got = {f["key"]: (f["status"], f["detail"]) for f in doc["files"]}
    assert got[held_key] == ("quarantined", why)
    assert got[kept_key][0] == "completed"
    table = s3flow("manifests", "show", mid, "-c", str(cfg))
    assert table.returncode == 0 and "not JSON (Expecting value)" in table.stdout
    held = s3flow("files", "release", held_key, "-p", "p", "-c", str(cfg))
    assert held.returncode == 2, held.stdout
    assert "held out of manifest" in held.stderr and "upload it again" in held.stderr
    assert "enqueued again" not in held.stdout
    kept = s3flow("files", "release", kept_key, "-p", "p", "-c", str(cfg))
    assert kept.returncode == 2 and "already tracked" in kept.stderr
