"""sinks.receipts.receipt_sink: a receipt for every write that returned, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3flow.errors import OutputPathError
from s3flow.sinks.base import FileSink, Sink
from s3flow.sinks.local import LocalDirSink
from s3flow.sinks.receipts import WriteReceipt, receipt_sink


def read_file(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def resolved(path: Path) -> str:
    return str(path.resolve())


async def test_each_write_leaves_its_receipt_and_the_bytes_where_the_sink_puts_them(
    tmp_path: Path,
) -> None:
    receipts: dict[str, WriteReceipt] = {}
    sink = receipt_sink(LocalDirSink(tmp_path), receipts)
    assert isinstance(sink, Sink) and isinstance(sink, FileSink)
    assert sink.root == resolved(tmp_path)
    uri = await sink.write("a/out.json", b'{"n": 1}', "application/json")
    assert read_file(uri) == b'{"n": 1}'
    assert receipts == {uri: WriteReceipt(8, "application/json")}
    assert await sink.read("a/out.json") == b'{"n": 1}'
    assert await sink.exists("a/out.json") and not await sink.exists("a/other.json")
    await sink.check()


async def test_a_file_write_keeps_no_receipt(tmp_path: Path) -> None:
    """The file could change while it is uploaded: such an output is fetched."""
    src = tmp_path / "big.bin"
    src.write_bytes(b"z" * 5000)
    receipts: dict[str, WriteReceipt] = {}
    inner = LocalDirSink(tmp_path / "out")
    sink = receipt_sink(inner, receipts)
    assert sink.inner is inner
    uri = await sink.write_file("big.bin", str(src), "application/pdf")
    assert read_file(uri) == read_file(src)
    assert receipts == {}


async def test_a_failed_write_leaves_no_receipt(tmp_path: Path) -> None:
    receipts: dict[str, WriteReceipt] = {}
    sink = receipt_sink(LocalDirSink(tmp_path), receipts)
    with pytest.raises(OutputPathError):
        await sink.write("../escape.json", b"{}", "application/json")
    assert receipts == {}


class BytesOnlySink:
    """A sink with no ``write_file``."""

    def __init__(self) -> None:
        self.root = "mem://"
        self.stored: dict[str, tuple[bytes, str]] = {}

    async def write(
        self,
        relative_key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        self.stored[relative_key] = (data, content_type)
        return self.root + relative_key

    async def read(self, relative_key: str) -> bytes | None:
        got = self.stored.get(relative_key)
        return got[0] if got else None

    async def exists(self, relative_key: str) -> bool:
        return relative_key in self.stored

    async def check(self) -> None:
        return None


async def test_a_sink_without_write_file_is_offered_without_it() -> None:
    """A processor checks ``isinstance(sink, FileSink)`` and writes bytes otherwise: the
    wrapper must not offer what the wrapped sink cannot do."""
    inner = BytesOnlySink()
    assert isinstance(inner, Sink) and not isinstance(inner, FileSink)
    receipts: dict[str, WriteReceipt] = {}
    sink = receipt_sink(inner, receipts)
    assert isinstance(sink, Sink) and not isinstance(sink, FileSink)
    assert sink.inner is inner
    uri = await sink.write("f.txt", b"hello", "text/plain")
    assert uri == "mem://f.txt" and inner.stored == {"f.txt": (b"hello", "text/plain")}
    assert receipts == {uri: WriteReceipt(5, "text/plain")}
