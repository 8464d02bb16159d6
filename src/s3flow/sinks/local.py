"""Local directory sink: atomic, fsynced file writes."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from s3flow.errors import ConfigError, OutputPathError, RetryableError
from s3flow.sinks.base import OutputAttrs, SinkBase


def _umask() -> int:
    """This process's umask: read from /proc (setting it to read it would race with other
    threads creating files), else by setting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Mode of the files written: what ``open()`` would give (``mkstemp`` makes them 0600).
_FILE_MODE = 0o666 & ~_umask()


class LocalDirSink(SinkBase):
    """Writes outputs under a local directory.

    Each write goes to a temporary file in the target directory, is fsynced,
    then renamed over the final name (atomic), and the directory is fsynced:
    after ``write`` returns the output survives a crash.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).expanduser().resolve()
        self.root = str(self.directory)

    def path_for(self, relative_key: str) -> Path:
        """Map a key to a path inside the directory; refuse anything that escapes it."""
        parts = relative_key.split("/")
        if (
            not relative_key
            or relative_key.startswith("/")
            or any(p in ("", ".", "..") for p in parts)
            or "\x00" in relative_key
        ):
            raise OutputPathError(
                f"key {relative_key!r} cannot be a file under {self.directory}: "
                "empty, '.' or '..' path segments (use an s3:// output for such keys)"
            )
        return self.directory.joinpath(*parts)

    @staticmethod
    def _replace_atomically(path: Path, fill: Callable[[BinaryIO], object]) -> None:
        """Write a temporary file next to ``path`` with ``fill``, fsync, rename, fsync the dir."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".s3flow-", dir=path.parent)
        try:
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, "wb") as fh:
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _write_sync(self, path: Path, data: bytes) -> None:
        self._replace_atomically(path, lambda fh: fh.write(data))

    def _copy_sync(self, source: str, path: Path) -> None:
        with open(source, "rb") as src:
            self._replace_atomically(path, lambda fh: shutil.copyfileobj(src, fh, 1024 * 1024))

    async def _put(self, relative_key: str, data: bytes, attrs: OutputAttrs) -> str:
        """Write ``data`` to the file for ``relative_key`` (files have no metadata: ignored)."""
        path = self.path_for(relative_key)
        return await self._write_off_loop(path, lambda: self._write_sync(path, data))

    async def _put_file(self, relative_key: str, path: str, attrs: OutputAttrs) -> str:
        """Copy a local file in as the output (streamed; atomic and fsynced like ``write``)."""
        target = self.path_for(relative_key)
        return await self._write_off_loop(target, lambda: self._copy_sync(path, target))

    @staticmethod
    async def _write_off_loop(path: Path, write: Callable[[], None]) -> str:
        """Run a blocking write on a thread; OSError -> OutputPathError / RetryableError."""
        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            if len(path.name.encode()) > 255:
                raise OutputPathError(f"file name too long for {path}") from exc
            raise RetryableError(f"cannot write {path}: {exc}") from exc
        return str(path)

    async def read(self, relative_key: str) -> bytes | None:
        path = self.path_for(relative_key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    async def exists(self, relative_key: str) -> bool:
        return self.path_for(relative_key).is_file()

    async def check(self) -> None:
        """Create the directory if needed and write (then remove) a probe file."""

        def probe() -> None:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".s3flow-check-", dir=self.directory)
            os.close(fd)
            os.unlink(tmp)

        try:
            await asyncio.to_thread(probe)
        except OSError as exc:
            raise ConfigError(f"output directory {self.directory} is not writable: {exc}") from exc
