"""objects: codec detection, incremental decoders, and the streaming ObjectReader."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import zlib
from collections.abc import AsyncIterator, Callable

import pytest

from s3flow import objects
from s3flow.errors import CorruptDataError
from s3flow.objects import (
    ObjectInfo,
    ObjectReader,
    detect_encoding,
    make_decoder,
    zstd,
)

MiB = 1024 * 1024
PIECE_MAX = 4 * MiB

# --- detect_encoding -----------------------------------------------------------

GZ = gzip.compress(b"hello\n", mtime=0)  # stable test ids (pytest-xdist compares them)
ZST = zstd.compress(b"hello\n")
BZ = bz2.compress(b"hello\n")
XZ = lzma.compress(b"hello\n")


def skippable(payload: bytes, nibble: int = 0) -> bytes:
    """A zstd skippable frame (pzstd starts its files with one holding the frame sizes)."""
    return struct.pack("<II", 0x184D2A50 | nibble, len(payload)) + payload


#: How pzstd lays out a file: a skippable frame with the next frame's size, then it.
PZSTD = skippable(struct.pack("<I", len(ZST))) + ZST


@pytest.mark.parametrize(
    ("head", "content_encoding", "key", "expected"),
    [
        # magic bytes win over everything
        (GZ[:10], None, "x.txt", "gzip"),
        (GZ[:10], "zstd", "x.bz2", "gzip"),
        (ZST[:10], None, "x.txt", "zstd"),
        (ZST[:10], "gzip", "x.gz", "zstd"),
        (BZ[:10], None, "x.txt", "bz2"),
        (bz2.compress(b"")[:10], None, "x.txt", "bz2"),  # an empty stream
        (BZ[:10], "gzip", "x.gz", "bz2"),
        (XZ[:10], None, "x.txt", "xz"),
        (XZ[:10], "gzip", "x.gz", "xz"),
        (PZSTD[:10], None, "x.txt", "zstd"),  # a skippable frame first (pzstd)
        (skippable(b"meta", 0xF)[:10], None, "x.txt", "zstd"),
        (b"P*M\x19rest", None, "x.txt", "identity"),  # not a skippable frame's magic
        (b"`*M\x18rest", None, "x.txt", "identity"),
        # data with no magic is identity, whatever metadata and suffix say
        (b"plain text", "gzip", "x.txt", "identity"),
        (b"plain text", None, "x.gz", "identity"),
        (b"BZh", None, "x.bz2", "identity"),  # 'BZh' + non-digit is not bz2
        (b"BZhx rest", None, "x.txt", "identity"),
        # text that starts like a header is text: the header is checked further
        (b"BZh9 is how a bzip2 stream starts.\n"[:10], None, "x.txt", "identity"),
        (b"BZh91AY&SY"[:8], None, "x.txt", "identity"),  # too short to be bz2
        (b"(\xb5/\xfd\x08caf\xe9 ", None, "x.txt", "identity"),  # reserved bit set
        (b"(\xb5/\xfd", None, "x.txt", "identity"),
        (b"\x1f", None, "x.txt", "identity"),
        # no data: Content-Encoding, then suffix
        (b"", "gzip", "a.txt", "gzip"),
        (b"", "x-gzip", "a.txt", "gzip"),
        (b"", " GZIP ", "a.txt", "gzip"),
        (b"", "zstd", "a.txt", "zstd"),
        (b"", "bzip2", "a.txt", "bz2"),
        (b"", "x-bzip2", "a.txt", "bz2"),
        (b"", "xz", "a.txt", "xz"),
        (b"", "x-xz", "a.txt", "xz"),
        (b"", "gzip", "a.zst", "gzip"),
        (b"", None, "a.gz", "gzip"),
        (b"", None, "A.GZIP", "gzip"),
        (b"", None, "a.zst", "zstd"),
        (b"", None, "a.zstd", "zstd"),
        (b"", None, "a.bz2", "bz2"),
        (b"", None, "a.XZ", "xz"),
        (b"", None, "a.txt", "identity"),
        (b"", "identity", "a.txt", "identity"),
        (b"", None, "", "identity"),
    ],
)
def test_detect_encoding(
    head: bytes, content_encoding: str | None, key: str, expected: str
) -> None:
    assert detect_encoding(head, content_encoding, key) == expected


def test_make_decoder_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="brotli"):
        make_decoder("brotli")


# --- decoders --------------------------------------------------------------------


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def decode(encoding: str, data: bytes, size: int | None = None) -> bytes:
    decoder = make_decoder(encoding)
    out = bytearray()
    for piece in chunks(data, size or max(1, len(data))):
        for part in decoder.feed(piece):
            assert len(part) <= PIECE_MAX
            out += part
    decoder.finish()
    return bytes(out)


PART_A = b"first member line\n" * 300 + os.urandom(3000)
PART_B = "second 🙂 part\n".encode() * 500

Compress = Callable[[bytes], bytes]
CODECS: dict[str, Compress] = {
    "gzip": gzip.compress,
    "zstd": lambda d: zstd.compress(d),
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "identity": lambda d: d,
}
SIZES = [1, 7, 4096, None]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"chunk{s or 'whole'}")
@pytest.mark.parametrize("encoding", sorted(CODECS))
def test_round_trip_single(encoding: str, size: int | None) -> None:
    data = CODECS[encoding](PART_A)
    assert decode(encoding, data, size) == PART_A


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"chunk{s or 'whole'}")
@pytest.mark.parametrize("encoding", ["gzip", "zstd", "bz2", "xz"])
def test_round_trip_concatenated_members(encoding: str, size: int | None) -> None:
    compress = CODECS[encoding]
    data = compress(PART_A) + compress(PART_B) + compress(b"") + compress(b"tail")
    assert decode(encoding, data, size) == PART_A + PART_B + b"tail"


def test_zstd_streamed_frames_without_content_size() -> None:
    frames = b""
    for part in (PART_A, PART_B):
        cobj = zstd.ZstdCompressor()
        frames += cobj.compress(part) + cobj.flush()
    assert decode("zstd", frames, 7) == PART_A + PART_B


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"chunk{s or 'whole'}")
def test_zstd_skippable_frames_are_skipped(size: int | None) -> None:
    a, b = zstd.compress(PART_A), zstd.compress(PART_B)
    data = skippable(struct.pack("<I", len(a))) + a + skippable(b"x" * 100, 0xF) + b
    assert decode("zstd", data, size) == PART_A + PART_B


def test_identity_passes_through_and_skips_empty() -> None:
    decoder = make_decoder("identity")
    assert list(decoder.feed(b"")) == []
    assert list(decoder.feed(b"abc")) == [b"abc"]
    decoder.finish()


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "bz2", "xz"])
def test_empty_input_is_fine(encoding: str) -> None:
    assert decode(encoding, b"") == b""


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"chunk{s or 'whole'}")
@pytest.mark.parametrize("encoding", ["gzip", "zstd", "bz2", "xz"])
def test_truncated_input_fails_on_finish(encoding: str, size: int | None) -> None:
    data = CODECS[encoding](PART_A)
    with pytest.raises(CorruptDataError, match="truncated"):
        decode(encoding, data[: len(data) // 2], size)


@pytest.mark.parametrize("encoding", ["gzip", "zstd", "bz2", "xz"])
def test_truncated_second_member_fails(encoding: str) -> None:
    compress = CODECS[encoding]
    second = compress(PART_B)
    with pytest.raises(CorruptDataError, match="truncated"):
        decode(encoding, compress(PART_A) + second[:-5], 4096)


@pytest.mark.parametrize("encoding", ["gzip", "bz2", "zstd", "xz"])
def test_garbage_in_the_middle(encoding: str) -> None:
    data = CODECS[encoding](PART_A * 4)
    mid = len(data) // 2
    broken = data[:mid] + b"\x00garbage!" * 50 + data[mid:]
    with pytest.raises(CorruptDataError):
        decode(encoding, broken, 4096)


@pytest.mark.parametrize("encoding", ["gzip", "bz2", "zstd", "xz"])
def test_garbage_after_last_member(encoding: str) -> None:
    with pytest.raises(CorruptDataError):
        decode(encoding, CODECS[encoding](PART_A) + b"this is not compressed", 4096)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"chunk{s or 'whole'}")
def test_trailing_zero_padding_after_gzip_is_tolerated(size: int | None) -> None:
    data = gzip.compress(PART_A) + b"\x00" * 1000
    assert decode("gzip", data, size) == PART_A


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"chunk{s or 'whole'}")
def test_zero_padding_between_xz_streams_is_tolerated(size: int | None) -> None:
    data = lzma.compress(PART_A) + b"\x00" * 8 + lzma.compress(PART_B) + b"\x00" * 4
    assert decode("xz", data, size) == PART_A + PART_B


def test_xz_needing_too_much_memory_says_so() -> None:
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": objects.XZ_MEMLIMIT + 2**20}]
    data = lzma.compress(b"hello\n", filters=filters)
    with pytest.raises(CorruptDataError, match="MiB to decompress") as info:
        decode("xz", data)
    assert info.value.disposition.value == "permanent"


def test_corrupt_error_is_permanent_and_chained() -> None:
    decoder = make_decoder("gzip")
    with pytest.raises(CorruptDataError) as info:
        list(decoder.feed(b"\x1f\x8b\x08\x00garbage-garbage-garbage"))
    assert isinstance(info.value.__cause__, zlib.error)
    assert info.value.disposition.value == "permanent"


def _bounded_zero_run(encoding: str, compressed: bytes, total: int) -> None:
    decoder = make_decoder(encoding)
    produced = 0
    biggest = 0
    for piece in chunks(compressed, MiB):
        for part in decoder.feed(piece):
            biggest = max(biggest, len(part))
            produced += len(part)
    decoder.finish()
    assert produced == total
    assert biggest <= PIECE_MAX


def test_gzip_bomb_pieces_are_bounded() -> None:
    total = 100 * 1000 * 1000
    compressed = gzip.compress(bytes(total), compresslevel=1)
    assert len(compressed) < 1 * MiB  # one feed() would hold the whole 100 MB
    _bounded_zero_run("gzip", compressed, total)


def test_bz2_bomb_pieces_are_bounded() -> None:
    total = 30 * 1000 * 1000
    _bounded_zero_run("bz2", bz2.compress(bytes(total)), total)


def test_xz_bomb_pieces_are_bounded() -> None:
    total = 100 * 1000 * 1000
    _bounded_zero_run("xz", lzma.compress(bytes(total), preset=0), total)


def test_zstd_bomb_pieces_are_bounded() -> None:
    total = 100 * 1000 * 1000
    _bounded_zero_run("zstd", zstd.compress(bytes(total)), total)


# --- ObjectReader ----------------------------------------------------------------


def info(key: str = "in/x.txt", content_encoding: str | None = None) -> ObjectInfo:
    return ObjectInfo(
        bucket="incoming",
        key=key,
        etag="e",
        version_id=None,
        size=None,
        content_encoding=content_encoding,
        content_type=None,
        metadata={},
    )


async def read_all(reader: ObjectReader) -> bytes:
    return b"".join([piece async for piece in reader])


@pytest.mark.parametrize("encoding", sorted(CODECS))
async def test_reader_decompresses_and_counts(encoding: str, fake_body: type) -> None:
    data = CODECS[encoding](PART_A + PART_B)
    body = fake_body(data)
    reader = ObjectReader(info(), body, chunk_bytes=1000)
    assert await read_all(reader) == PART_A + PART_B
    assert reader.encoding == encoding
    assert reader.compressed_bytes == len(data)
    assert reader.uncompressed_bytes == len(PART_A + PART_B)
    reader.close()
    assert body.closed is True


async def test_reader_big_chunks_use_thread_path(fake_body: type) -> None:
    payload = os.urandom(600 * 1024) * 2
    data = gzip.compress(payload, compresslevel=1)
    reader = ObjectReader(info(), fake_body(data), chunk_bytes=512 * 1024)
    assert await read_all(reader) == payload
    assert reader.encoding == "gzip"


@pytest.mark.parametrize("chunk_kib", [64, 1024])  # both the inline and the thread path
async def test_reader_memory_is_bounded_for_one_highly_compressible_read(
    fake_body: type, chunk_kib: int
) -> None:
    # ~1 MiB of gzip that inflates to 512 MiB: handed over piece by piece, never
    # held at once (a whole read's output used to be collected in one list).
    import tracemalloc

    total = 512 * 1024 * 1024
    data = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9) * (total // (64 << 20))
    reader = ObjectReader(info(), fake_body(data), chunk_bytes=chunk_kib * 1024)
    tracemalloc.start()
    try:
        seen = 0
        async for piece in reader:
            seen += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == total
    assert peak < 48 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB while streaming"


async def test_reader_empty_object(fake_body: type) -> None:
    reader = ObjectReader(info(key="a.gz"), fake_body(b""))
    assert await read_all(reader) == b""
    assert reader.compressed_bytes == 0
    assert reader.uncompressed_bytes == 0


async def test_reader_truncated_gzip_raises(fake_body: type) -> None:
    data = gzip.compress(PART_A)
    reader = ObjectReader(info(), fake_body(data[:-10]), chunk_bytes=100)
    with pytest.raises(CorruptDataError):
        await read_all(reader)


async def test_reader_translates_body_errors() -> None:
    from s3flow.errors import AwsError

    class Broken:
        async def read(self, n: int) -> bytes:
            raise ConnectionResetError("peer reset")

        def close(self) -> None:
            raise RuntimeError("close must be swallowed")

    reader = ObjectReader(info(), Broken())
    with pytest.raises(AwsError, match="peer reset"):
        await read_all(reader)
    reader.close()  # does not raise


async def test_reader_detects_gzip_when_first_read_is_short(fake_body: type) -> None:
    data = gzip.compress(b"hello\n")
    reader = ObjectReader(info(key="x.txt"), fake_body(data, step=1))
    assert await read_all(reader) == b"hello\n"
    assert reader.encoding == "gzip"


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (bz2.compress(b"hello\n"), "bz2"),
        (b"BZh9 is how a bzip2 stream starts.\n", "identity"),
        (b"BZh9", "identity"),  # shorter than any bz2 stream
    ],
)
async def test_reader_tells_bz2_from_text_that_starts_alike(
    fake_body: type, data: bytes, encoding: str
) -> None:
    """A text object starting with "BZh9" was taken for bz2 and dead-lettered as corrupt."""
    reader = ObjectReader(info(key="x.txt"), fake_body(data, step=1))
    out = await read_all(reader)
    assert reader.encoding == encoding
    assert out == (b"hello\n" if encoding == "bz2" else data)


@pytest.mark.parametrize("with_numpy", [True, False])
@pytest.mark.parametrize(
    "chunk",
    [b"", b"\n", b"a", b"a\nb", b"x" * 5000, b"a\nb\n" * 3000, bytes(range(256)) * 5000],
)
def test_line_feeds_are_counted_with_and_without_numpy(
    chunk: bytes, with_numpy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if with_numpy:
        assert objects._numpy() is not None  # a dev install has numpy
    else:
        monkeypatch.setattr(objects, "_numpy", lambda: None)
    assert objects.count_byte(chunk, 10) == chunk.count(b"\n")


async def test_batched_joins_chunks_into_batches_of_at_least_the_size() -> None:
    from s3flow.objects import batched

    async def chunks(*sizes: int) -> AsyncIterator[bytes]:
        for i, n in enumerate(sizes):
            yield bytes([i]) * n

    got = [b async for b in batched(chunks(3, 3, 5, 1, 2, 0), 6)]
    assert [len(b) for b in got] == [6, 6, 2]  # the last one shorter
    assert b"".join(got) == b"".join([bytes([i]) * n for i, n in enumerate((3, 3, 5, 1, 2))])
    assert [b async for b in batched(chunks(), 6)] == []  # nothing: no empty batch
    assert [len(b) async for b in batched(chunks(10), 6)] == [10]


# --- open_object: a read of one upload --------------------------------------------


class _OneUploadS3:
    """GetObject of an object whose eTag is ``e2``, answering If-Match as S3 does."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    async def get_object(self, **kw: object) -> dict[str, object]:
        from botocore.exceptions import ClientError

        self.calls.append(kw)
        if "IfMatch" in kw and str(kw["IfMatch"]).strip('"') != "e2":
            raise ClientError(
                {
                    "Error": {"Code": "PreconditionFailed", "Message": "not held"},
                    "ResponseMetadata": {"HTTPStatusCode": 412},
                },
                "GetObject",
            )

        class Body:
            async def read(self, n: int = -1) -> bytes:
                return b""

            def close(self) -> None:
                pass

        return {"ETag": '"e2"', "Body": Body(), "ContentLength": 0}


@pytest.mark.parametrize("byte_range", [None, (0, 10)])
async def test_open_object_if_match_reads_only_that_upload(
    byte_range: tuple[int, int] | None,
) -> None:
    from s3flow.errors import ObjectChangedError
    from s3flow.objects import open_object

    s3 = _OneUploadS3()
    reader = await open_object(s3, "b", "k", if_match="e2", byte_range=byte_range)
    reader.close()
    assert s3.calls[-1]["IfMatch"] == '"e2"'  # the entity tag, quoted as HTTP wants it
    with pytest.raises(ObjectChangedError, match=r"upload eTag e1 is not the object now"):
        await open_object(s3, "b", "k", if_match="e1", byte_range=byte_range)
    reader = await open_object(s3, "b", "k", byte_range=byte_range)  # unconditional
    reader.close()
    assert "IfMatch" not in s3.calls[-1]


async def test_a_processor_reads_only_the_upload_its_event_names() -> None:
    """ProcessContext.open and BundleContext's reads carry the event's condition."""
    import json
    from typing import Any

    from s3flow.errors import ObjectChangedError
    from s3flow.events import ObjectEvent, parse_body
    from s3flow.processors.base import BundleContext, ProcessContext

    def event(etag: str, **obj: str) -> ObjectEvent:
        o = {"key": "k", "eTag": etag, "sequencer": "01", **obj}
        rec = {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}
        body = {"Records": [{**rec, "s3": {"bucket": {"name": "b"}, "object": o}}]}
        return parse_body(json.dumps(body)).events[0]

    s3 = _OneUploadS3()
    sink: Any = None
    old = event("e1")
    ctx = ProcessContext(event=old, pipeline="p", worker_id="w", s3=s3, sink=sink)
    with pytest.raises(ObjectChangedError):
        await ctx.open()
    bundle = BundleContext(job_id="j", inputs=[old], s3=s3, sink=sink)
    with pytest.raises(ObjectChangedError):
        await bundle.open(old)
    with pytest.raises(ObjectChangedError):
        await bundle.open_raw(old)
    # A versionId names the upload itself: no condition.
    versioned = event("e1", versionId="v1")
    ctx = ProcessContext(event=versioned, pipeline="p", worker_id="w", s3=s3, sink=sink)
    (await ctx.open()).close()
    assert "IfMatch" not in s3.calls[-1]
