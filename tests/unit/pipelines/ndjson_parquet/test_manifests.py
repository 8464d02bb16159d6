"""Manifest domain rules: dates, triggers, batch choice, the JSON document, options."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from s3flow.errors import ConfigError
from s3flow.pipelines.ndjson_parquet.manifest_processor import (
    InvalidNdjsonError,
    NdjsonManifestOptions,
    NdjsonManifestProcessor,
)
from s3flow.pipelines.ndjson_parquet.manifests import (
    Sealer,
    Triggers,
    date_from_key,
    date_from_record,
    is_manifest_key,
    manifest_document,
    manifest_id,
    manifest_key,
    valid_date,
)
from s3flow.processors import create_processor
from s3flow.state.records import (
    ManifestFile,
    ManifestFileStatus,
    ManifestRecord,
    ManifestStatus,
    PendingSummary,
    TrackedFile,
)

DEFAULT = re.compile(NdjsonManifestOptions().date_pattern)


@pytest.mark.parametrize(
    ("key", "day"),
    [
        ("2025-12-23/events-001.ndjson", "2025-12-23"),
        ("raw/2025-12-23/x.ndjson.gz", "2025-12-23"),
        ("raw/date=2025-01-02/x.ndjson", "2025-01-02"),
        ("raw/dt=2025-01-02/x.ndjson", "2025-01-02"),
        ("2025-02-30/impossible.ndjson", None),
        ("undated/x.ndjson", None),
        ("raw/x-2025-12-23.ndjson", None),  # a date inside a name is not a date prefix
    ],
)
def test_date_from_key(key: str, day: str | None) -> None:
    assert date_from_key(key, DEFAULT) == day


def test_date_from_key_custom_pattern() -> None:
    assert date_from_key("x/20251223-a.json", re.compile(r"(\d{8})")) is None  # not ISO
    assert date_from_key("x/a-2025-12-23.json", re.compile(r"-(\d{4}-\d{2}-\d{2})\.")) == (
        "2025-12-23"
    )


@pytest.mark.parametrize(
    ("record", "field", "day"),
    [
        ({"date": "2025-12-23"}, "date", "2025-12-23"),
        ({"ts": "2025-12-23T23:59:59Z"}, "ts", "2025-12-23"),
        ({"meta": {"at": 1766448000}}, "meta.at", "2025-12-23"),
        ({"at": 1766448000123}, "at", "2025-12-23"),  # milliseconds
        ({"at": True}, "at", None),
        ({"date": "soon"}, "date", None),
        ({"other": 1}, "date", None),
        ({"meta": 3}, "meta.at", None),
        # a timestamp with an offset is dated in UTC, one without is UTC
        ({"ts": "2026-03-01T23:30:00-05:00"}, "ts", "2026-03-02"),
        ({"ts": "2026-03-02T01:00:00+02:00"}, "ts", "2026-03-01"),
        ({"ts": "2026-03-01T23:30:00.123456789-0500"}, "ts", "2026-03-02"),
        ({"ts": "2026-03-01 23:30-05"}, "ts", "2026-03-02"),
        ({"ts": "2026-03-01T23:30-05:00[America/New_York]"}, "ts", "2026-03-02"),
        ({"ts": "2026-03-01T18:00:00+05:30"}, "ts", "2026-03-01"),
        ({"ts": "2026-12-31T23:59:60-01:00"}, "ts", "2027-01-01"),  # a leap second
        ({"ts": "2026-03-01T24:00:00Z"}, "ts", "2026-03-02"),  # the end of the day
        ({"ts": "2026-03-01T23:30:00"}, "ts", "2026-03-01"),
        ({"ts": "2026-03-01t23:30:00z"}, "ts", "2026-03-01"),
        ({"ts": "9999-12-31T23:00:00-02:00"}, "ts", None),  # after year 9999 in UTC
        ({"ts": "2026-03-01 whenever"}, "ts", "2026-03-01"),  # no time: the date
    ],
)
def test_date_from_record(record: dict[str, object], field: str, day: str | None) -> None:
    assert date_from_record(record, field) == day


def test_valid_date() -> None:
    assert valid_date("2024-02-29") == "2024-02-29"
    assert valid_date("2023-02-29") is None


def test_triggers_fire_at_the_thresholds() -> None:
    t = Triggers(max_files=3, max_bytes=100, max_wait_s=60)

    def s(count: int, size: int, oldest: float | None = 1000.0) -> PendingSummary:
        return PendingSummary("ds", "2025-12-23", count, size, oldest)

    assert t.due(s(0, 0, None), 5000) is None
    assert t.due(s(2, 99), 1059.9) is None
    assert t.due(s(3, 10), 1000) == "count"
    assert t.due(s(2, 100), 1000) == "bytes"
    assert t.due(s(1, 1), 1060) == "age"


def _tracked(sizes: list[int]) -> list[TrackedFile]:
    return [
        TrackedFile("ds", "d", ManifestFile("b", f"k{i}", n, "e"), ManifestFileStatus.PENDING)
        for i, n in enumerate(sizes)
    ]


def test_take_respects_both_limits_and_never_returns_nothing() -> None:
    t = Triggers(max_files=3, max_bytes=100)
    assert [f.key for f in t.take(_tracked([10, 10, 10, 10]))] == ["k0", "k1", "k2"]
    assert [f.key for f in t.take(_tracked([60, 30, 20]))] == ["k0", "k1"]
    assert [f.key for f in t.take(_tracked([500, 1]))] == ["k0"]  # too big alone: still goes
    assert t.take([]) == []


def _record() -> ManifestRecord:
    return ManifestRecord(
        manifest_id=manifest_id("events", "2025-12-23", 42, 3),
        dataset="events",
        date="2025-12-23",
        status=ManifestStatus.SEALED,
        files=[ManifestFile("in", "2025-12-23/a.ndjson", 10, "e1", None)],
        trigger="age",
        fencing_token=42,
        sealed_by="host-1",
        created_at=1766448000.5,
    )


def test_manifest_document_follows_the_contract() -> None:
    m = _record()
    assert m.manifest_id == "events-2025-12-23-000042-0003"
    assert manifest_key("manifests/", m) == (
        "manifests/events/date=2025-12-23/events-2025-12-23-000042-0003.json"
    )
    doc = manifest_document(m)
    assert doc == {
        "version": 1,
        "manifest_id": "events-2025-12-23-000042-0003",
        "dataset": "events",
        "date": "2025-12-23",
        "created_at": "2025-12-23T00:00:00.500+00:00",
        "sealed_by": "host-1",
        "fencing_token": 42,
        "trigger": "age",
        "files": [
            {
                "bucket": "in",
                "key": "2025-12-23/a.ndjson",
                "size": 10,
                "etag": "e1",
                "version_id": None,
            }
        ],
        "total_files": 1,
        "total_bytes": 10,
    }
    assert manifest_document(m) == doc  # deterministic: a re-publish writes the same bytes
    assert manifest_document(m, republish=2)["republish"] == 2


def test_the_compaction_reader_accepts_the_document() -> None:
    reader = pytest.importorskip("s3flow.pipelines.ndjson_parquet.compaction.manifest")
    parsed = reader.parse_manifest(json.dumps(manifest_document(_record())).encode())
    assert parsed.manifest_id == "events-2025-12-23-000042-0003"
    assert [(f.key, f.size, f.etag) for f in parsed.files] == [("2025-12-23/a.ndjson", 10, "e1")]


def test_options_defaults_and_errors() -> None:
    proc = create_processor("ndjson-manifest", {})
    assert isinstance(proc, NdjsonManifestProcessor)
    o = proc.opts
    assert (o.min_bytes, o.max_bytes) == (100_000, 20_000_000)
    assert (o.manifest_max_files, o.manifest_max_bytes, o.manifest_max_wait_s) == (
        200,
        700_000_000,
        900,
    )
    assert proc.seal_interval_s == 5
    with pytest.raises(ConfigError, match=r"manifest_max_file: unknown option"):
        create_processor("ndjson-manifest", {"manifest_max_file": 3})
    with pytest.raises(ConfigError, match="max_bytes must be >= min_bytes"):
        create_processor("ndjson-manifest", {"min_bytes": 10, "max_bytes": 5})
    with pytest.raises(ConfigError, match="dataset"):
        create_processor("ndjson-manifest", {"dataset": "a/b"})
    with pytest.raises(ConfigError, match="date_pattern"):
        create_processor("ndjson-manifest", {"date_pattern": "("})


def test_is_manifest_key_matches_only_the_exact_manifest_shape() -> None:
    mid = manifest_id("events", "2025-12-23", 12, 3)
    assert is_manifest_key(f"manifests/events/date=2025-12-23/{mid}.json", "manifests/", "events")
    assert is_manifest_key(f"events/date=2025-12-23/{mid}.json", "", "events")
    for key in [
        "manifests/events/2025-12-23/part-1.ndjson",  # an input under the prefix
        f"manifests/events/date=2025-12-24/{mid}.json",  # date mismatch
        f"manifests/other/date=2025-12-23/{mid}.json",  # another dataset
        f"manifests/events/date=2025-12-23/{mid}.ndjson",
        "manifests/events/date=2025-12-23/events-2025-12-23-x-0003.json",
        f"raw/events/date=2025-12-23/{mid}.json",  # another prefix
    ]:
        assert not is_manifest_key(key, "manifests/", "events"), key


def test_empty_manifest_prefix_in_the_source_bucket_is_refused() -> None:
    proc = NdjsonManifestProcessor({"manifest_prefix": ""})
    with pytest.raises(ConfigError, match="manifest_prefix must not be empty"):
        proc.make_sealer(object(), None, pipeline="events", owner="w", bucket="src")  # type: ignore[arg-type]
    other = NdjsonManifestProcessor({"manifest_prefix": "", "manifest_bucket": "manifests"})
    sealer = other.make_sealer(object(), None, pipeline="events", owner="w", bucket="src")  # type: ignore[arg-type]
    assert (sealer.bucket, sealer.prefix) == ("manifests", "")


def test_a_date_pattern_that_is_not_a_regex_is_refused_with_the_reason() -> None:
    from pydantic import ValidationError

    from s3flow.pipelines.ndjson_parquet.manifest_processor import NdjsonManifestOptions

    with pytest.raises(ValidationError, match=r"(?s)date_pattern.*not a valid regular expression"):
        NdjsonManifestOptions(dataset="events", date_pattern="(")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_bytes": -1}, "min_bytes: Input should be greater than or equal to 0"),
        ({"manifest_max_wait_s": 0}, "manifest_max_wait_s: Input should be greater than 0"),
        ({"lock_ttl_s": 0}, "lock_ttl_s: Input should be greater than 0"),
        ({"min_bytes": 10, "max_bytes": 5}, "max_bytes must be >= min_bytes"),
    ],
)
def test_out_of_bounds_options_name_the_key(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NdjsonManifestProcessor(options)


class _LockOnTheWire:
    """The lock calls of a state store; ``acquire_lock`` answers once ``answer`` is set."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()
        self.calls: list[tuple[Any, ...]] = []

    async def acquire_lock(self, name: str, *, owner: str, ttl_s: float) -> int | None:
        self.asked.set()
        await self.answer.wait()
        self.calls.append(("acquire_lock", name, owner))
        return 4

    async def release_lock(self, name: str, *, owner: str, token: int) -> bool:
        self.calls.append(("release_lock", name, owner, token))
        return True


async def test_a_sealing_pass_cancelled_while_taking_the_lock_releases_it() -> None:
    """A builder stopping cancels its background pass; had the store granted that pass
    the lock, every builder's last pass (seal_on_stop) would find it held until its TTL
    and skip: the last files of a burst would stay unsealed."""
    store = _LockOnTheWire()
    sealer = Sealer(
        store,  # type: ignore[arg-type]
        None,
        dataset="events",
        owner="w1",
        triggers=Triggers(),
        bucket="b",
        prefix="manifests/",
    )
    passing = asyncio.ensure_future(sealer.seal_due())
    await store.asked.wait()
    passing.cancel()
    await asyncio.sleep(0)
    store.answer.set()
    with pytest.raises(asyncio.CancelledError):
        await passing
    assert store.calls == [
        ("acquire_lock", "manifests:events", "w1"),
        ("release_lock", "manifests:events", "w1", 4),
    ]


# --- the first record ------------------------------------------------------------------


class _Body:
    """A GetObject body: ``data`` read in ``chunk``-sized pieces; counts the bytes read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    async def read(self, n: int) -> bytes:
        piece = self.data[self.at : self.at + n]
        self.at += len(piece)
        return piece

    def close(self) -> None:
        pass


def _first_record(
    data: bytes, *, max_uncompressed: int | None = None, **options: Any
) -> tuple[Any, _Body]:
    """The builder's first-record check of an object holding ``data``."""
    from types import SimpleNamespace

    from s3flow.objects import ObjectInfo, ObjectReader

    body = _Body(data)
    info = ObjectInfo("b", "2026-01-01/a.ndjson", "e", None, len(data), None, None, {})

    async def open_object() -> ObjectReader:
        return ObjectReader(info, body, 64 * 1024, max_uncompressed_bytes=max_uncompressed)

    processor = NdjsonManifestProcessor({"min_bytes": 0, **options})
    ctx = SimpleNamespace(event=SimpleNamespace(size=len(data)), open=open_object)
    record, _ = asyncio.run(processor._first_record(ctx))  # type: ignore[arg-type]
    return record, body


def test_blank_lines_before_the_first_record_are_skipped_without_keeping_them() -> None:
    record, _ = _first_record(b"\n \r\n\t" * 100_000 + b'{"id": 1}\n{"id": 2}\n')
    assert record == {"id": 1}


def test_a_file_of_only_blank_lines_past_the_limit_has_no_record() -> None:
    """A file starting with hundreds of MB of line feeds was kept whole in memory and
    stripped again at every read (quadratic): it is a file with no record once the
    blank lines pass first_record_max_bytes."""
    with pytest.raises(InvalidNdjsonError, match="no record: more than 65536 bytes of blank"):
        _first_record(b"\n" * 10_000_000 + b'{"id": 1}\n', first_record_max_bytes=65536)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'\xef\xbb\xbf\n{"id": 120}\n', id="bom-then-blank-line"),
        pytest.param(b'\xef\xbb\xbf{"id": 120}\n', id="bom-then-record"),
        pytest.param(b'\xef\xbb\xbf  \r\n\n{"id": 120}', id="bom-then-whitespace"),
    ],
)
def test_a_bom_at_the_start_is_dropped_before_blank_lines(data: bytes) -> None:
    """The compaction reads these files (it drops a BOM at the start of the file); the
    builder quarantined the first ("first record is not valid JSON")."""
    record, _ = _first_record(data)
    assert record == {"id": 120}


def test_a_bom_after_a_blank_line_is_not_valid_json() -> None:
    """As in the compaction, where a BOM not at the start of the file makes its line
    malformed."""
    with pytest.raises(InvalidNdjsonError, match="first record is not valid JSON"):
        _first_record(b'\n\xef\xbb\xbf{"id": 120}\n')


def test_a_file_decompressing_past_the_limit_is_quarantined_naming_the_limit() -> None:
    """TooLargeError (permanent) dead-lettered the file, though a file failing the
    builder's checks is quarantined: it is an InvalidNdjsonError, "not readable"."""
    import gzip

    data = gzip.compress(b" " * 300_000 + b'{"id": 1}\n')
    with pytest.raises(InvalidNdjsonError, match=r"not readable: .*max_uncompressed_bytes = 1,000"):
        _first_record(data, max_uncompressed=1000)
