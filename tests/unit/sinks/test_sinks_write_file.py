"""LocalDirSink.write_file and the metadata parameter (ignored by files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3flow.errors import OutputPathError
from s3flow.sinks.base import FileSink
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
