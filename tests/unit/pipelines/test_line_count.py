"""LineCountProcessor.process with an in-memory object and a local sink."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from s3flow.errors import UndecodableContentError
from s3flow.objects import zstd
from s3flow.pipelines.line_count import (
    LineCountOptions,
    LineCountProcessor,
    counts_line_feed_bytes,
)

MakeCtx = Callable[..., Any]


async def run(make_ctx: MakeCtx, data: bytes, options: dict[str, Any] | None = None, **kw: Any):
    ctx = make_ctx(data, **kw)
    result = await LineCountProcessor(options).process(ctx)
    return ctx, result


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"", 0),
        (b"a", 1),
        (b"a\nb", 2),
        (b"a\nb\n", 2),
        (b"\n", 1),
        (b"\n\n\n", 3),
        (b"a\r\nb\r\n", 2),
        (b"x" * 10_000, 1),
    ],
)
async def test_line_counts(make_ctx: MakeCtx, data: bytes, lines: int) -> None:
    _, result = await run(make_ctx, data)
    assert result.counters["lines"] == lines
    assert result.detail["lines"] == lines
    assert result.detail["uncompressed_bytes"] == len(data)


async def test_line_count_across_small_chunks(make_ctx: MakeCtx) -> None:
    data = b"one\ntwo\nthree\nfour"
    ctx, result = await run(make_ctx, data, chunk_bytes=3)
    assert result.counters["lines"] == 4
    assert sum(ctx.progress) == len(data)
    assert ctx.body.reads > 5


async def test_output_document(make_ctx: MakeCtx) -> None:
    data = b"alpha\nbeta\ngamma\n"
    ctx, result = await run(make_ctx, data, key="logs/2024/a b+ü.txt", etag="etag-1")
    assert len(result.outputs) == 1
    written = ctx.sink.directory / "logs" / "2024" / "a b+ü.txt.json"
    assert result.outputs[0] == str(written)
    doc = json.loads(written.read_text(encoding="utf-8"))
    assert doc["bucket"] == "incoming"
    assert doc["key"] == "logs/2024/a b+ü.txt"
    assert doc["etag"] == "etag-1"
    assert doc["version_id"] is None
    assert doc["compressed_bytes"] == len(data)
    assert doc["uncompressed_bytes"] == len(data)
    assert doc["lines"] == 3
    assert doc["encoding"] == "identity"
    assert doc["worker_id"] == "worker-7"
    assert doc["pipeline"] == "counts"
    assert doc["processing_ms"] >= 0
    assert doc["processed_at"].endswith("+00:00")
    assert result.detail == doc
    assert result.counters["bytes_in"] == len(data)
    assert result.counters["bytes_out"] == written.stat().st_size
    assert ctx.body.closed is True


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("zstd", lambda d: zstd.compress(d)),
        ("bz2", bz2.compress),
        ("xz", lzma.compress),
    ],
)
async def test_compressed_input(make_ctx: MakeCtx, encoding: str, compress: Any) -> None:
    text = b"".join(b"line %d\n" % i for i in range(5000))
    data = compress(text)
    ctx, result = await run(make_ctx, data, key="in/data.log")
    doc = json.loads((ctx.sink.directory / "in" / "data.log.json").read_bytes())
    assert doc["lines"] == 5000
    assert doc["encoding"] == encoding
    assert doc["compressed_bytes"] == len(data)
    assert doc["uncompressed_bytes"] == len(text)
    assert result.counters["bytes_in"] == len(data)


async def test_multi_member_gzip(make_ctx: MakeCtx) -> None:
    data = gzip.compress(b"a\nb\n") + gzip.compress(b"c\nd")
    _, result = await run(make_ctx, data, key="x.gz")
    assert result.detail["lines"] == 4
    assert result.detail["uncompressed_bytes"] == 7


async def test_pzstd_file_starting_with_a_skippable_frame(make_ctx: MakeCtx) -> None:
    """pzstd writes a skippable frame (the next frame's size) before each frame: the
    file is zstd, not text with a few stray newlines in its compressed bytes."""
    text = b"".join(b'{"id": %d}\n' % i for i in range(2000))
    frames = b""
    for part in (text[:9000], text[9000:]):
        frame = zstd.compress(part)
        frames += struct.pack("<III", 0x184D2A50, 4, len(frame)) + frame
    _, result = await run(make_ctx, frames, key="in/data.ndjson.zst", chunk_bytes=5)
    assert result.detail["encoding"] == "zstd"
    assert result.detail["lines"] == 2000
    assert result.detail["uncompressed_bytes"] == len(text)


async def test_xz_lines_are_counted_decompressed(make_ctx: MakeCtx) -> None:
    """xz was read as stored: 'a\\nb\\n' compressed counted 3 lines of binary."""
    _, result = await run(make_ctx, lzma.compress(b"a\nb\n") * 2, key="in/x.xz")
    assert result.detail["encoding"] == "xz"
    assert result.detail["lines"] == 4


async def test_empty_gzip_member(make_ctx: MakeCtx) -> None:
    _, result = await run(make_ctx, gzip.compress(b""), key="x.gz")
    assert result.detail["lines"] == 0
    assert result.detail["encoding"] == "gzip"


async def test_repeat_overwrites_same_output(make_ctx: MakeCtx) -> None:
    _, r1 = await run(make_ctx, b"a\n")
    ctx2, r2 = await run(make_ctx, b"a\nb\nc\n")
    assert r1.outputs == r2.outputs
    doc = json.loads((ctx2.sink.directory / "in" / "file.txt.json").read_bytes())
    assert doc["lines"] == 3


async def test_valid_utf8_passes_with_text_encoding(make_ctx: MakeCtx) -> None:
    data = "héllo 🙂\nwörld\n".encode()
    # 1-byte chunks split the multi-byte characters across reads
    _, result = await run(make_ctx, data, {"text_encoding": "utf-8"}, chunk_bytes=1)
    assert result.detail["lines"] == 2


async def test_invalid_utf8_is_undecodable(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(b"good line\nbad \xff\xfe byte\n")
    with pytest.raises(UndecodableContentError) as info:
        await LineCountProcessor({"text_encoding": "utf-8"}).process(ctx)
    assert "utf-8" in str(info.value)
    assert "at byte 14" in str(info.value)  # offset of the first bad byte
    assert info.value.disposition.value == "permanent"
    assert ctx.body.closed is True
    assert not list(ctx.sink.directory.rglob("*.json"))


async def test_truncated_utf8_character_at_end(make_ctx: MakeCtx) -> None:
    data = "ok\né".encode()[:-1]
    with pytest.raises(UndecodableContentError, match="truncated"):
        await LineCountProcessor({"text_encoding": "utf-8"}).process(make_ctx(data))


#: U+0A0A is two 0x0A bytes in utf-16; U+0100 ends in 0x00 (it is no line feed either).
WIDE_TEXT = "ਊ one\nĀ two\r\n\nthree ਊ"


@pytest.mark.parametrize(
    "encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]
)
@pytest.mark.parametrize("text", [WIDE_TEXT, WIDE_TEXT + "\n", "Ā", "", "\n"])
@pytest.mark.parametrize("chunk_bytes", [1, 3, 1 << 20])
async def test_lines_of_wide_encodings_are_counted_in_the_text(
    make_ctx: MakeCtx, encoding: str, text: str, chunk_bytes: int
) -> None:
    """utf-16/32 lines were counted as 0x0A bytes: U+0A0A made two lines, a last byte
    0x00 one more, and a byte order mark alone was a line."""
    expected = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    data = text.encode(encoding)
    if encoding[-3:] in ("-le", "-be"):
        data = "\ufeff".encode(encoding) + data  # a BOM is no line, nor part of one
    opts = {"text_encoding": encoding}
    _, result = await run(make_ctx, data, opts, chunk_bytes=chunk_bytes)
    assert result.detail["lines"] == expected
    assert result.detail["uncompressed_bytes"] == len(data)


async def test_an_ebcdic_line_feed_is_its_own_byte(make_ctx: MakeCtx) -> None:
    data = "one\ntwo\nthree".encode("cp037")
    assert b"\n" not in data
    _, result = await run(make_ctx, data, {"text_encoding": "cp037"})
    assert result.detail["lines"] == 3


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
async def test_utf16_without_a_byte_order_mark_is_permanent_and_says_what_to_set(
    make_ctx: MakeCtx, encoding: str
) -> None:
    """It raised a bare UnicodeError: retried as a processor bug, then dead-lettered."""
    ctx = make_ctx("a\nb\n".encode(f"{encoding}-le"))
    with pytest.raises(UndecodableContentError) as info:
        await LineCountProcessor({"text_encoding": encoding}).process(ctx)
    assert info.value.disposition.value == "permanent"
    assert f"'{encoding}-le' or '{encoding}-be'" in str(info.value)
    assert ctx.body.closed is True


async def test_odd_utf16_bytes_are_a_truncated_character(make_ctx: MakeCtx) -> None:
    with pytest.raises(UndecodableContentError, match="truncated"):
        await run(make_ctx, "a\n".encode("utf-16") + b"x", {"text_encoding": "utf-16"})


@pytest.mark.parametrize(
    ("encoding", "by_bytes"),
    [
        (None, True),
        ("utf-8", True),
        ("utf-8-sig", True),
        ("latin-1", True),
        ("cp1252", True),
        ("shift_jis", True),
        ("gb18030", True),
        ("utf-16", False),
        ("UTF-16LE", False),
        ("utf-32-be", False),
        ("cp037", False),
        ("utf-7", False),
        ("hz", False),
    ],
)
def test_which_encodings_count_line_feed_bytes(encoding: str | None, by_bytes: bool) -> None:
    assert counts_line_feed_bytes(encoding) is by_bytes


@pytest.mark.parametrize("encoding", ["base64", "hex", "zlib", "rot13", "undefined", "nope"])
def test_a_text_encoding_that_cannot_decode_text_is_refused(encoding: str) -> None:
    with pytest.raises(ValidationError, match=encoding):
        LineCountOptions(text_encoding=encoding)


async def test_invalid_utf8_without_text_encoding_is_counted(make_ctx: MakeCtx) -> None:
    _, result = await run(make_ctx, b"\xff\xfe\n\x80")
    assert result.detail["lines"] == 2


def test_the_byte_counter_is_imported_when_the_processor_is_built() -> None:
    """numpy is imported by the constructor (start-up), not by the first object's count
    on the event loop; importing the module alone does not import it."""
    code = (
        "import sys\n"
        "from s3flow.pipelines.line_count import LineCountProcessor\n"
        "assert 'numpy' not in sys.modules, 'imported with the module'\n"
        "LineCountProcessor({})\n"
        "assert 'numpy' in sys.modules, 'not imported by the constructor'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
