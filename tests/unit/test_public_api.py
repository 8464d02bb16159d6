"""The package as a user sees it: typed, and what ``from s3flow import ...`` gives."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import s3flow
from s3flow.events import ObjectEvent

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_is_marked_typed_and_ships_the_marker() -> None:
    # PEP 561: without py.typed, mypy skips s3flow in a user's code ("missing library
    # stubs or py.typed marker"); the marker must also be in the wheel's package data.
    assert (ROOT / "src" / "s3flow" / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data = config["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["s3flow"]


def _run(code: str) -> str:
    """Run ``code`` in a fresh interpreter (what it imports stays there); its stdout."""
    env = {**os.environ, "PYTHONPATH": str(Path(s3flow.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_no_exported_name_is_also_a_submodule() -> None:
    # Importing a submodule sets it as an attribute of the package, which then hides the
    # lazy __getattr__: `from s3flow import provision` gave the module s3flow.provision
    # once s3flow.app (which imports it) had been imported.
    submodules = {m.name for m in pkgutil.iter_modules(s3flow.__path__)}
    assert not submodules & set(s3flow.__all__)


def test_every_export_is_its_object_whatever_was_imported_before() -> None:
    out = _run(
        "import importlib, pkgutil, types, s3flow\n"
        "for m in pkgutil.iter_modules(s3flow.__path__):\n"
        "    if m.name != '__main__':\n"
        "        importlib.import_module('s3flow.' + m.name)\n"
        "for name, module in s3flow._EXPORTS.items():\n"
        "    got = getattr(s3flow, name)\n"
        "    want = getattr(importlib.import_module(module), name)\n"
        "    if got is not want or isinstance(got, types.ModuleType):\n"
        "        print(name, got)\n"
        "from s3flow import provision\n"
        "print(callable(provision) and not isinstance(provision, types.ModuleType))\n"
    )
    assert out.splitlines() == ["True"]


def test_all_lists_every_export() -> None:
    assert set(s3flow.__all__) == {*s3flow._EXPORTS, "__version__"}


def test_a_processors_imports_leave_the_aws_sdk_and_the_cli_unloaded() -> None:
    # processors/base.py imports s3flow.state.base, and the state package imported its
    # DynamoDB store: `from s3flow import BaseProcessor` loaded ~780 modules (the AWS SDK,
    # aiohttp, rich, click, pygments) in ~0.4 s; a store is imported when first used.
    heavy = ["aiobotocore", "aiohttp", "botocore", "rich", "click", "pygments", "typer"]
    out = _run(
        "import sys\n"
        "from s3flow import BaseProcessor, ProcessContext, Result\n"
        "from s3flow.processors.base import OptionsProcessor\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    assert out.strip() == "[]"


def test_the_state_package_still_gives_its_stores() -> None:
    out = _run(
        "import sys, s3flow.state as st\n"
        "print('aiobotocore' in sys.modules)\n"
        "from s3flow.state import DynamoStateStore, SqliteStateStore, open_state_store\n"
        "from s3flow.state.dynamodb import DynamoStateStore as D\n"
        "store = open_state_store('sqlite::memory:')\n"
        "print(DynamoStateStore is D, isinstance(store, SqliteStateStore))\n"
        "print(type(open_state_store('dynamodb://p')).__name__)\n"
    )
    assert out.splitlines() == ["False", "True True", "DynamoStateStore"]


def test_a_processor_authors_names_are_exported() -> None:
    # OptionsProcessor (validated options), FileSink (write_file) and PipelineContext
    # (start()'s argument) were only in submodules.
    from s3flow.processors.base import OptionsProcessor, PipelineContext
    from s3flow.sinks.base import FileSink

    assert s3flow.OptionsProcessor is OptionsProcessor
    assert s3flow.PipelineContext is PipelineContext
    assert s3flow.FileSink is FileSink
    assert {"OptionsProcessor", "PipelineContext", "FileSink"} <= set(s3flow.__all__)


def _readme_processors() -> dict[str, str]:
    """The README's "Write a processor" Python blocks, by the module each names first."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Write a processor\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("\n", 1)[1] for b in section.split("```python")[1:]]
    blocks = [b.split("```", 1)[0] for b in blocks]
    return {b.split("\n", 1)[0].removeprefix("# "): b for b in blocks}


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.chunks = [data[:3], data[3:]]
        self.closed = False

    def __aiter__(self) -> Any:
        return self._iter()

    async def _iter(self) -> Any:
        for chunk in self.chunks:
            yield chunk

    def close(self) -> None:
        self.closed = True


class _Ctx:
    """What the README's processors use of a ProcessContext."""

    def __init__(self, data: bytes) -> None:
        self.event = ObjectEvent(bucket="b", key="in/a.txt", size=len(data))
        self.reader = _Reader(data)
        self.written: dict[str, bytes] = {}
        self.sink = self

    async def open(self) -> _Reader:
        return self.reader

    async def write(self, key: str, data: bytes, content_type: str) -> str:
        self.written[key] = data
        return f"file:///out/{key}"


async def test_the_readme_processors_run_as_documented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3flow import ConfigError, create_processor

    blocks = _readme_processors()
    assert set(blocks) == {"mypkg/upper.py", "mypkg/prefix.py"}
    for path, code in blocks.items():
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("mypkg", "mypkg.upper", "mypkg.prefix"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    upper = create_processor("mypkg.upper:Upper")
    ctx = _Ctx(b"one\ntwo\n")
    result = await upper.process(ctx)  # type: ignore[arg-type]
    assert result.outputs == ["file:///out/in/a.txt"] and ctx.reader.closed
    assert ctx.written == {"in/a.txt": b"ONE\nTWO\n"}

    prefix = create_processor("mypkg.prefix:Prefix", {"prefix": "# "})
    ctx = _Ctx(b"one\ntwo\n")
    result = await prefix.process(ctx)  # type: ignore[arg-type]
    assert ctx.written == {"in/a.txt": b"# one\n# two\n"} and result.counters == {"lines": 2}
    with pytest.raises(ConfigError, match="prefx"):
        create_processor("mypkg.prefix:Prefix", {"prefx": "# "})
