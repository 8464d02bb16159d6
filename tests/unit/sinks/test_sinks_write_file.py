"""LocalDirSink.write_file and the metadata parameter (ignored by files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3flow.errors import OutputPathError
from s3flow.sinks.base import FileSink, write_local_file
from s3flow.sinks.local import LocalDirSink


async def test_write_file_copies_atomically(tmp_path: Path) -> None:
    sink = LocalDirSink(tmp_path / "out")
    assert isinstance(sink, FileSink)
    source = tmp_path / "doc.pdf"
    source.write_bytes(b"%PDF-" + b"x" * 3_000_000)
    uri = await sink.write_file("a/b/doc.pdf", str(source), "application/pdf", {"pages": "1"})
    target = tmp_path / "out" / "a" / "b" / "doc.pdf"
    assert uri == str(target)
    assert target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["doc.pdf"]  # no temp files


async def test_write_file_refuses_escaping_keys(tmp_path: Path) -> None:
    source = tmp_path / "doc.pdf"
    source.write_bytes(b"x")
    with pytest.raises(OutputPathError):
        await LocalDirSink(tmp_path / "out").write_file("../doc.pdf", str(source))


async def test_write_accepts_and_ignores_metadata(tmp_path: Path) -> None:
    sink = LocalDirSink(tmp_path)
    uri = await sink.write("k.txt", b"data", "text/plain", metadata={"a": "b"})
    assert uri == str(tmp_path / "k.txt")
    assert (tmp_path / "k.txt").read_bytes() == b"data"


class BytesSink:
    """A sink with ``write`` only (no ``write_file``): it records what it was given."""

    root = "mem://"

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, str, dict[str, str] | None]] = []

    async def write(
        self,
        relative_key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> str:
        self.calls.append((relative_key, data, content_type, metadata))
        return f"mem://{relative_key}"

    async def read(self, relative_key: str) -> bytes | None:
        return None

    async def exists(self, relative_key: str) -> bool:
        return False

    async def check(self) -> None:
        return None


class NoMetadataSink:
    """A sink written before ``metadata`` existed: passing it would be a TypeError."""

    root = "mem://"

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, str]] = []

    async def write(self, relative_key: str, data: bytes, content_type: str) -> str:
        self.calls.append((relative_key, data, content_type))
        return f"mem://{relative_key}"


async def test_write_local_file_streams_through_a_file_sink(tmp_path: Path) -> None:
    source = tmp_path / "a.zip"
    source.write_bytes(b"PK" + b"z" * 1000)
    uri = await write_local_file(LocalDirSink(tmp_path / "out"), "j/a.zip", str(source), "x/y")
    assert uri == str(tmp_path / "out" / "j" / "a.zip")
    assert (tmp_path / "out" / "j" / "a.zip").read_bytes() == source.read_bytes()


async def test_write_local_file_gives_the_bytes_and_metadata_to_a_plain_sink(
    tmp_path: Path,
) -> None:
    source = tmp_path / "a.zip"
    source.write_bytes(b"archive bytes")
    sink = BytesSink()
    uri = await write_local_file(sink, "a.zip", str(source), "application/zip", {"k": "v"})
    assert uri == "mem://a.zip"
    assert sink.calls == [("a.zip", b"archive bytes", "application/zip", {"k": "v"})]


async def test_write_local_file_leaves_metadata_out_for_a_sink_without_it(
    tmp_path: Path,
) -> None:
    source = tmp_path / "a.pdf"
    source.write_bytes(b"%PDF-")
    sink = NoMetadataSink()
    await write_local_file(sink, "a.pdf", str(source), "application/pdf", {"pages": "1"})  # type: ignore[arg-type]
    assert sink.calls == [("a.pdf", b"%PDF-", "application/pdf")]
