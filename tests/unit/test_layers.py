"""Layers import downward only (DESIGN.md): checked on every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "s3flow"

# Lowest first; a module may import its own layer and the ones below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "settings",
            "errors",
            "aws",
            "local",
            "_moto_server",
            "provision",
            "metrics",
            "memory",
            "logs",
            "kafka_broker",
        ),
    ),
    ("storage", ("objects", "state")),
    (
        "domain",
        (
            "events",
            "routing",
            "processors",
            "sinks",
            "validation",
            "quarantine",
            "manifests",
            "csvkafka",
            "compaction",
        ),
    ),
    ("engine", ("worker",)),
    ("assembly", ("app", "demo", "ops", "docs")),
    ("faces", ("cli", "cli_kafka", "cli_parquet", "cli_compact", "__main__", "__init__")),
]
RANK = {top: rank for rank, (_, tops) in enumerate(LAYERS) for top in tops}


def _top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out += [(node.lineno, n) for n in names if n.startswith("s3flow.")]
    return out


def _own_top(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def test_every_module_has_a_layer() -> None:
    missing = {_own_top(p) for p in _modules()} - set(RANK)
    assert not missing, f"add these modules to a layer in {__file__}: {sorted(missing)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_downward_only(path: Path) -> None:
    own = _own_top(path)
    if own == "__init__":
        return  # the package's public API re-exports every layer
    bad = [
        f"line {line}: {name} ({LAYERS[RANK[_top(name)]][0]})"
        for line, name in _imports(path)
        if _top(name) in RANK and RANK[_top(name)] > RANK[own]
    ]
    assert not bad, f"{path.name} is in layer {LAYERS[RANK[own]][0]!r} but imports upward: {bad}"
