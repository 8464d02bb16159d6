"""``ndjson-manifest``: validate NDJSON files and batch them into manifests.

The first half of the ``ndjson-to-parquet`` pipeline (docs/pipelines/ndjson-to-parquet.md).
For each object (plain or compressed NDJSON):

1. validate: size within ``min_bytes``..``max_bytes``, readable (decompresses,
   UTF-8), first non-empty line a JSON object. An invalid file raises
   :class:`InvalidNdjsonError` (an :class:`~s3flow.errors.InvalidInputError`)
   with a readable reason; the engine tags the object, records it quarantined
   and acks its message, and the worker goes on;
2. find its date (in the key, or in a field of the first record);
3. track it as pending for ``(dataset, date)`` in the state store;
4. if that date now reaches ``manifest_max_files`` / ``manifest_max_bytes``,
   seal a manifest at once (:class:`s3flow.pipelines.ndjson_parquet.manifests.Sealer`).

A background task seals batches whose oldest file waited ``manifest_max_wait_s``
(every ``seal_interval_s``). At stop the processor runs one last pass: due
batches always, every pending file with ``seal_on_stop = true``.

The background task starts with the worker (``start()``), so batches due by
age are sealed even by a worker that receives no new file; ``s3flow manifests
seal`` forces a seal by hand.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, NonNegativeInt, PositiveFloat, field_validator

from s3flow.errors import ConfigError, CorruptDataError, InvalidInputError, TooLargeError
from s3flow.events import content_part
from s3flow.pipelines.ndjson_parquet.manifests import (
    DATASET_RE,
    Sealer,
    Triggers,
    date_from_key,
    date_from_record,
    is_manifest_key,
)
from s3flow.processors.base import (
    OptionsProcessor,
    PipelineContext,
    ProcessContext,
    Result,
)
from s3flow.settings import ByteRangeChecked, PipelineSettings, Regex
from s3flow.state.base import StateStore
from s3flow.state.records import (
    FileRecord,
    FileStatus,
    ManifestFile,
    ManifestFileStatus,
    ObjectId,
    TrackedFile,
)

log = logging.getLogger("s3flow.pipelines.ndjson_parquet.manifest_processor")


class InvalidNdjsonError(InvalidInputError):
    """The file is not acceptable NDJSON (size, readability, first record, date)."""


class NdjsonManifestOptions(ByteRangeChecked):
    """Options of the ``ndjson-manifest`` processor."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(
        default=None,
        description="Dataset name in manifests and their keys (default: the pipeline name).",
    )
    min_bytes: NonNegativeInt = Field(default=100_000, description="Smallest valid file (bytes).")
    max_bytes: int = Field(default=20_000_000, ge=1, description="Largest valid file (bytes).")
    date_source: Literal["key", "field"] = Field(
        default="key", description="Where a file's date comes from: its key or its first record."
    )
    date_pattern: Regex = Field(
        default=r"(?:^|/)(?:date=|dt=)?(\d{4}-\d{2}-\d{2})",
        description="Regex finding the date in the key (first group), for date_source='key'.",
    )
    date_field: str = Field(
        default="date",
        description=(
            "Dotted field of the first record holding the date (ISO string, or unix "
            "seconds/milliseconds), for date_source='field'. Dated in UTC: a timestamp "
            "with an offset by its UTC date, one without as UTC."
        ),
    )
    manifest_max_files: int = Field(default=200, ge=1, description="Seal at this many files.")
    manifest_max_bytes: int = Field(
        default=700_000_000, ge=1, description="Seal when pending files reach this many bytes."
    )
    manifest_max_wait_s: PositiveFloat = Field(
        default=900.0, description="Seal when the oldest pending file waited this long."
    )
    manifest_bucket: str | None = Field(
        default=None, description="Bucket of the manifest JSON objects (default: the source's)."
    )
    manifest_prefix: str = Field(
        default="manifests/", description="Key prefix of the manifest JSON objects."
    )
    seal_interval_s: float | None = Field(
        default=None,
        gt=0,
        description="Background sealing period (default min(manifest_max_wait_s / 4, 5)).",
    )
    lock_ttl_s: PositiveFloat = Field(default=60.0, description="TTL of the sealing lock.")
    seal_on_stop: bool = Field(
        default=False,
        description=(
            "At worker stop, seal every pending file (not only due batches): for batch "
            "runs (`worker --burst`) that must leave nothing pending."
        ),
    )
    first_record_max_bytes: int = Field(
        default=1_048_576,
        ge=64,
        description=(
            "Longest first line read to validate it; also the most blank lines and "
            "whitespace skipped before it (beyond, the file has no record)."
        ),
    )

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, v: str | None) -> str | None:
        if v is not None and not DATASET_RE.match(v):
            raise ValueError("use 1-64 of A-Z a-z 0-9 '_' '-' '.', starting with a letter/digit")
        return v


class NdjsonManifestProcessor(OptionsProcessor[NdjsonManifestOptions]):
    """Validates NDJSON files, tracks them per date and seals manifests."""

    name: ClassVar[str] = "ndjson-manifest"

    @classmethod
    async def describe_file(
        cls, pipeline: PipelineSettings, record: FileRecord, store: StateStore
    ) -> list[str]:
        """The file's manifest and what the compaction did with it (``files show``).

        The engine's record only says the builder tracked the file. Looked up when
        the date comes from the key (the default); a date read from the file's
        first record is not kept, so such files are not looked up.
        """
        t = await cls._tracked(pipeline, record, store)
        if t is None:
            return []
        detail = f": {t.detail}" if t.detail else ""
        return [
            f"in manifest {t.manifest_id or '(none yet)'} ({t.dataset} {t.date}): "
            f"{t.status.value}{detail}"
        ]

    @classmethod
    async def refuse_release(
        cls, pipeline: PipelineSettings, record: FileRecord, store: StateStore
    ) -> str | None:
        """A completed record is tracked already: running the builder on it again is a
        no-op (tracking is idempotent), so no manifest would take it again."""
        if record.status is not FileStatus.COMPLETED:
            return None  # quarantined by the builder (or failed): a release re-checks it
        where = f"s3://{record.bucket}/{record.key}"
        t = await cls._tracked(pipeline, record, store)
        if t is not None and t.status is ManifestFileStatus.QUARANTINED:
            return (
                f"{where} was held out of manifest {t.manifest_id} by the compaction "
                f"({t.detail or 'no reason recorded'}). The builder already tracks this "
                "upload, so a release would not compact it again; nothing was changed. "
                "Fix the file and upload it again: the builder tracks the new upload and "
                "seals it into a new manifest"
            )
        into = (
            f"manifest {t.manifest_id} ({t.status.value})" if t and t.manifest_id else "a manifest"
        )
        return (
            f"{where} is already tracked by the manifest builder, into {into}; a release "
            "would not put it into another manifest, so nothing was changed. To compact "
            "a manifest again: `s3flow manifests retry MANIFEST_ID` (a failed one) or "
            "`s3flow run compact MANIFEST_URI`; to replace the file, upload it again"
        )

    @classmethod
    async def _tracked(
        cls, pipeline: PipelineSettings, record: FileRecord, store: StateStore
    ) -> TrackedFile | None:
        """The builder's record of ``record``'s upload, when the date comes from the key
        (the default; a date read from the file's first record is not kept)."""
        opts = NdjsonManifestOptions.model_validate(pipeline.options)
        if opts.date_source != "key":
            return None
        day = date_from_key(record.key, re.compile(opts.date_pattern))
        if day is None:
            return None
        dataset = opts.dataset or pipeline.name
        oid = ObjectId(record.bucket, record.key, content_part(record.version))
        return await store.get_tracked(dataset, day, oid)

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.triggers = Triggers(
            max_files=self.opts.manifest_max_files,
            max_bytes=self.opts.manifest_max_bytes,
            max_wait_s=self.opts.manifest_max_wait_s,
        )
        self._pattern = re.compile(self.opts.date_pattern)
        self.sealer: Sealer | None = None
        self._task: asyncio.Task[None] | None = None
        self._attach_lock = asyncio.Lock()

    @property
    def seal_interval_s(self) -> float:
        """How often the background task looks for batches due by age."""
        return self.opts.seal_interval_s or min(self.opts.manifest_max_wait_s / 4, 5.0)

    def check_manifest_location(self, source_bucket: str) -> None:
        """ConfigError if manifests would be written among the input files.

        With the manifests in the source bucket, ``manifest_prefix`` must not be
        empty: every manifest would be an object of the watched bucket at its top.
        """
        bucket = self.opts.manifest_bucket or source_bucket
        if bucket == source_bucket and not self.opts.manifest_prefix:
            raise ConfigError(
                f"{self.name}: manifest_prefix must not be empty when manifests are "
                f"written to the source bucket {source_bucket!r} (set manifest_prefix, "
                "e.g. 'manifests/', or manifest_bucket)"
            )

    def make_sealer(
        self, store: StateStore, s3: Any, *, pipeline: str, owner: str, bucket: str
    ) -> Sealer:
        """A sealer for this pipeline's dataset (``bucket``: the source bucket)."""
        self.check_manifest_location(bucket)
        return Sealer(
            store,
            s3,
            dataset=self.opts.dataset or pipeline,
            owner=owner,
            triggers=self.triggers,
            bucket=self.opts.manifest_bucket or bucket,
            prefix=self.opts.manifest_prefix,
            lock_ttl_s=self.opts.lock_ttl_s,
        )

    async def start(self, pipeline: PipelineContext) -> None:
        """Start the sealer (and its age-trigger task) with the worker."""
        await self._attach(
            pipeline.store, pipeline.s3, pipeline.pipeline, pipeline.worker_id, pipeline.bucket
        )

    async def _attach(
        self, store: StateStore | None, s3: Any, pipeline: str, owner: str, bucket: str
    ) -> Sealer:
        if self.sealer is not None:
            return self.sealer
        async with self._attach_lock:
            if self.sealer is None:
                if store is None:
                    raise ConfigError(
                        f"{self.name}: needs a state store (state.url must not be 'none')"
                    )
                if not DATASET_RE.match(self.opts.dataset or pipeline):
                    raise ConfigError(
                        f"{self.name}: pipeline name {pipeline!r} is not a valid dataset "
                        "name; set the 'dataset' option"
                    )
                sealer = self.make_sealer(store, s3, pipeline=pipeline, owner=owner, bucket=bucket)
                self._task = asyncio.create_task(
                    sealer.run_forever(self.seal_interval_s), name=f"sealer:{sealer.dataset}"
                )
                self.sealer = sealer
        assert self.sealer is not None
        return self.sealer

    async def stop(self) -> None:
        """Stop the background task; a last pass seals due (or, seal_on_stop, all) batches."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.sealer is not None:
            try:
                await self.sealer.seal_due(force=self.opts.seal_on_stop)
            except Exception:
                log.exception("final manifest sealing pass failed")

    def _is_own_manifest(self, ctx: ProcessContext, dataset: str) -> bool:
        """Whether the event is a manifest this builder wrote (exact key shape).

        Only ``<manifest_prefix><dataset>/date=YYYY-MM-DD/<dataset>-YYYY-MM-DD-<token>-<seq>.json``
        in the manifest bucket (see :func:`s3flow.pipelines.ndjson_parquet.manifests.manifest_key`):
        an input file under an overlapping prefix is still an input.
        """
        bucket = self.opts.manifest_bucket or ctx.event.bucket
        return ctx.event.bucket == bucket and is_manifest_key(
            ctx.event.key, self.opts.manifest_prefix, dataset
        )

    def _check_size(self, size: int | None) -> None:
        if size is None:
            return
        if size < self.opts.min_bytes:
            raise InvalidNdjsonError(
                f"size {size} bytes is below the minimum of {self.opts.min_bytes} bytes"
            )
        if size > self.opts.max_bytes:
            raise InvalidNdjsonError(
                f"size {size} bytes is above the maximum of {self.opts.max_bytes} bytes"
            )

    async def _first_record(self, ctx: ProcessContext) -> tuple[dict[str, Any], Any]:
        """The first non-empty line parsed as a JSON object, and the object's info.

        Blank lines and whitespace before it are skipped as they come, not kept: more
        than ``first_record_max_bytes`` of them is a file with no record (a file of
        hundreds of MB of line feeds took memory for all of them, and time for their
        square). A UTF-8 BOM is dropped at the very start of the file only, as the
        compaction drops it (before any blank line: ``BOM LF {...}`` is fine).
        """
        limit = self.opts.first_record_max_bytes
        reader = await ctx.open()
        line = bytearray()  # the first record's bytes so far
        blank = 0  # whitespace bytes before it
        try:
            self._check_size(reader.info.size if ctx.event.size is None else None)
            try:
                async for chunk in _without_bom(reader):
                    if not line:
                        stripped = chunk.lstrip()
                        blank += len(chunk) - len(stripped)
                        if blank > limit:
                            raise InvalidNdjsonError(
                                f"no record: more than {limit} bytes of blank lines or "
                                "whitespace at the start (first_record_max_bytes)"
                            )
                        chunk = stripped
                    end = chunk.find(b"\n")
                    line += chunk if end < 0 else chunk[:end]
                    if end >= 0 or len(line) > limit:
                        break
            except (CorruptDataError, TooLargeError) as exc:
                raise InvalidNdjsonError(f"not readable: {exc}") from exc
        finally:
            reader.close()
        first = bytes(line).strip()
        if not first:
            raise InvalidNdjsonError("no record: the file is empty or blank")
        if len(first) > limit:
            raise InvalidNdjsonError(f"first record is longer than {limit} bytes")
        try:
            text = first.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidNdjsonError(
                f"not readable: first record is not UTF-8 (byte {exc.start}: {exc.reason})"
            ) from exc
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise InvalidNdjsonError(f"first record is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise InvalidNdjsonError(
                "first record nests objects and arrays too deeply to read (over a thousand levels)"
            ) from exc
        if not isinstance(record, dict):
            raise InvalidNdjsonError(
                f"first record is a JSON {type(record).__name__}, not an object"
            )
        return record, reader.info

    async def process(self, ctx: ProcessContext) -> Result:
        """Validate, date and track one file; seal at once if a count/bytes trigger fires."""
        event = ctx.event
        sealer = await self._attach(
            ctx.store, ctx.s3, ctx.pipeline, ctx.worker_id, ctx.event.bucket
        )
        if self._is_own_manifest(ctx, sealer.dataset):
            log.debug("%s is a manifest of this pipeline: skipped", event.uri())
            return Result(detail={"skipped": "manifest object"})
        self._check_size(event.size)
        record, info = await self._first_record(ctx)
        if self.opts.date_source == "key":
            day = date_from_key(event.key, self._pattern)
            if day is None:
                raise InvalidNdjsonError(f"no date in the key (pattern {self.opts.date_pattern!r})")
        else:
            day = date_from_record(record, self.opts.date_field)
            if day is None:
                raise InvalidNdjsonError(
                    f"first record has no date in field {self.opts.date_field!r}"
                )
        size = event.size if event.size is not None else info.size
        etag = (event.etag or info.etag or "").strip('"')
        file = ManifestFile(
            bucket=event.bucket,
            key=event.key,
            size=int(size or 0),
            etag=etag,
            version_id=event.version_id or info.version_id,
        )
        store = sealer.store
        added = await store.add_pending(sealer.dataset, day, file)
        sealed = []
        if self.triggers.due(await store.pending(sealer.dataset, day), 0.0) in ("count", "bytes"):
            sealed = await sealer.seal_due(dates=[day])
        return Result(
            outputs=[m.location for m in sealed if m.location],
            counters={"bytes_in": file.size, "manifests_sealed": len(sealed)},
            detail={
                "dataset": sealer.dataset,
                "date": day,
                "tracked": "added" if added else "already tracked",
                "sealed": [m.manifest_id for m in sealed],
            },
        )


async def _without_bom(reader: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """``reader``'s chunks without a UTF-8 BOM at the very start."""
    head = b""
    started = False
    async for chunk in reader:
        if started:
            yield chunk
            continue
        head += chunk
        if len(head) >= len(codecs.BOM_UTF8):
            started = True
            yield head.removeprefix(codecs.BOM_UTF8)
    if not started and head:
        yield head
