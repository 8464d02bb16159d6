"""sinks.local.LocalDirSink: atomic writes, read-back, and keys that must not escape."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3flow.errors import OutputPathError
from s3flow.sinks.base import Sink
from s3flow.sinks.local import LocalDirSink


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def all_names(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*")]


def resolved(path: Path) -> Path:
    return path.resolve()


def read_file(path: str | Path) -> bytes:
    return Path(path).read_bytes()


async def test_write_read_exists_round_trip(tmp_path: Path) -> None:
    sink = LocalDirSink(tmp_path)
    assert isinstance(sink, Sink)
    assert sink.root == str(resolved(tmp_path))
    key = "réports/2024 05/red flower+ü 🙂.json"
    assert await sink.exists(key) is False
    assert await sink.read(key) is None
    uri = await sink.write(key, b'{"a": 1}', "application/json")
    assert uri == str(resolved(tmp_path) / "réports" / "2024 05" / "red flower+ü 🙂.json")
    assert read_file(uri) == b'{"a": 1}'
    assert await sink.read(key) == b'{"a": 1}'
    assert await sink.exists(key) is True


async def test_nested_directories_are_created(tmp_path: Path) -> None:
    sink = LocalDirSink(tmp_path / "does" / "not" / "exist")
    await sink.write("a/b/c/d/e.txt", b"deep")
    assert (tmp_path / "does/not/exist/a/b/c/d/e.txt").read_bytes() == b"deep"


async def test_overwrite_replaces_content(tmp_path: Path) -> None:
    sink = LocalDirSink(tmp_path)
    await sink.write("k.json", b"first version, longer")
    await sink.write("k.json", b"second")
    assert await sink.read("k.json") == b"second"
    assert all_files(tmp_path) == ["k.json"]


async def test_empty_payload(tmp_path: Path) -> None:
    sink = LocalDirSink(tmp_path)
    await sink.write("empty", b"")
    assert await sink.read("empty") == b""
    assert await sink.exists("empty") is True


async def test_no_temp_files_left_behind(tmp_path: Path) -> None:
    sink = LocalDirSink(tmp_path)
    for i in range(5):
        await sink.write(f"d/{i}.txt", str(i).encode())
        await sink.write(f"d/{i}.txt", str(i * 10).encode())
    names = all_names(tmp_path)
    assert not [n for n in names if n.startswith(".s3flow-")]
    assert all_files(tmp_path) == [f"d/{i}.txt" for i in range(5)]


async def test_directory_is_not_a_file(tmp_path: Path) -> None:
    sink = LocalDirSink(tmp_path)
    await sink.write("dir/file", b"x")
    assert await sink.exists("dir") is False


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../escape.json",
        "a/../../escape.json",
        "a/..",
        "./a.json",
        "a/./b.json",
        "a//b.json",
        "a/",
        "..",
        ".",
        "nul\x00byte",
    ],
)
async def test_bad_keys_are_refused(tmp_path: Path, key: str) -> None:
    sink = LocalDirSink(tmp_path / "out")
    with pytest.raises(OutputPathError):
        await sink.write(key, b"x")
    with pytest.raises(OutputPathError):
        await sink.read(key)
    with pytest.raises(OutputPathError):
        await sink.exists(key)
    assert all_files(tmp_path) == []


def test_dots_inside_names_are_fine(tmp_path: Path) -> None:
    sink = LocalDirSink(tmp_path)
    assert sink.path_for("a..b/.hidden/x...json") == tmp_path.resolve() / "a..b/.hidden/x...json"


async def test_too_long_file_name_is_permanent(tmp_path: Path) -> None:
    sink = LocalDirSink(tmp_path)
    with pytest.raises(OutputPathError, match="too long"):
        await sink.write("x" * 300 + ".json", b"x")


async def test_outputs_get_the_mode_the_umask_gives(tmp_path: Path) -> None:
    """Outputs were 0600 (``mkstemp``'s mode, kept by the rename): other users and
    services could not read them. Now they get what ``open()`` gives under the umask."""
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    sink = LocalDirSink(tmp_path)
    uri = await sink.write("a/b.json", b"{}", "application/json")
    source = tmp_path / "src.bin"
    source.write_bytes(b"x")
    copied = await sink.write_file("a/c.bin", str(source), "application/octet-stream")
    for path in (uri, copied):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask
