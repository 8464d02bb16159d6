"""Every command's ``--help`` keeps the config tables its help text names.

Typer renders help with Rich markup, where ``[local]`` is a style tag and vanishes:
"default: [local] port" would print as "default:  port". Help text writes a table
name as ``\\[local]`` (or ``\\[[pipelines]]``); this renders every command's help and
checks that each table name its help strings mention is printed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from s3flow.cli import app
from s3flow.cli.common import RunGroup

#: A config table named in help text: [local], \[state], [[pipelines]], [pipelines.options].
_TABLE = re.compile(r"\\?(\[\[?[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*\]\]?)")
#: Rich style tags a help string may use on purpose (these are not table names).
_STYLES = frozenset({"bold", "dim", "italic", "red", "green", "yellow", "cyan", "b", "i", "u"})


#: A click command (typer vendors its own click: kept untyped here, as in s3flow.cli.common).
Command = Any


def _commands(cmd: Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command under ``cmd`` (itself included), with the words that reach it."""
    yield path, cmd
    if hasattr(cmd, "list_commands"):  # a group
        ctx = cmd.context_class(cmd)
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None:
                yield from _commands(sub, (*path, name))


def _all_commands() -> list[tuple[tuple[str, ...], Command]]:
    found = list(_commands(typer.main.get_command(app)))
    if RunGroup.generic is not None:  # `s3flow run PROCESSOR ...`: any processor's name
        found.append((("run", "line-count"), RunGroup.generic))
    return found


def _texts(cmd: Command) -> Iterator[str]:
    """The help strings written for ``cmd``: its own and each parameter's."""
    for text in (cmd.help, cmd.short_help, cmd.epilog):
        if text:
            yield text
    for param in cmd.params:
        text = getattr(param, "help", None)
        if text:
            yield text


def _tables(cmd: Command) -> set[str]:
    """The config tables ``cmd``'s help strings name, as ``--help`` should print them."""
    out = set()
    for text in _texts(cmd):
        for match in _TABLE.finditer(text):
            name = match.group(1).strip("[]")
            if name not in _STYLES:
                out.add(match.group(1))
    return out


#: The commands whose help strings name a config table.
NAMING_TABLES = [(path, cmd) for path, cmd in _all_commands() if _tables(cmd)]


def test_the_walk_finds_the_commands_whose_help_names_tables() -> None:
    names = {" ".join(path) for path, _ in NAMING_TABLES}
    # The ones this test was written for: a walk that missed them would check nothing.
    assert {"local", "upload", "state", "state prune"} <= names, names


@pytest.mark.parametrize(
    ("path", "cmd"),
    [pytest.param(path, cmd, id=" ".join(path) or "s3flow") for path, cmd in NAMING_TABLES],
)
def test_help_keeps_the_table_names_its_text_mentions(path: tuple[str, ...], cmd: Command) -> None:
    tables = _tables(cmd)
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    missing = sorted(t for t in tables if t not in shown)
    assert not missing, (
        f"`s3flow {' '.join(path)} --help` drops {missing} (Rich markup: write them as "
        f"'\\\\[table]' in the help string):\n{result.output}"
    )


def test_no_help_text_shows_rest_markup() -> None:
    """``--help`` printed docstrings' reStructuredText literally: ````-p jobs-processing````."""
    raw = sorted(
        f"s3flow {' '.join(path)}: {text[:60]!r}"
        for path, cmd in _all_commands()
        for text in _texts(cmd)
        if "``" in text or ":mod:" in text or ":class:" in text or ":func:" in text
    )
    assert not raw, raw
