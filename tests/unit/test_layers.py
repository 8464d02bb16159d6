"""Layers import downward only (DESIGN.md, "Layers and layout"), checked on every import.

Every ``import`` / ``from ... import`` of an ``s3flow`` module counts, including
those inside functions; README's "Layout" lists the same layers (checked). A
module belongs to the layer of the longest entry of ``LAYERS`` that prefixes its
dotted name. Rules:

* a module imports its own layer and the ones below, never one above;
* the core (everything below ``pipelines``) never imports a pipeline: it finds
  them by name through the processor registry (``processors/registry.py``);
* a pipeline never imports another pipeline.
"""

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
            "fastpath",  # the hot S3/SQS calls as signed requests on its own HTTP client
            "provisioning",
            "deploy",  # the CloudFormation export (tables are handed in, not imported)
            "metrics",
            "memory",
            "logs",
            "closing",  # AsyncClosing: `async with` that awaits close()
            "local",  # the embedded endpoint, its moto wrapper, the Kafka broker
        ),
    ),
    ("storage", ("objects", "state")),
    ("domain", ("events", "routing", "processors", "sinks", "validation", "quarantine")),
    ("engine", ("worker", "jobs", "executors")),
    ("assembly", ("app", "ops", "docs", "local.demo")),
    ("faces", ("cli", "web")),
    ("pipelines", ("pipelines",)),
    ("entry", ("__main__", "__init__")),
]
RANK = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}
PIPELINES = RANK["pipelines"]


def _dotted(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"] or ["__init__"]
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer rank of ``module`` (dotted, without the ``s3flow.`` prefix)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        rank = RANK.get(".".join(parts[:n]))
        if rank is not None:
            return rank
    return None


def pipeline_of(module: str) -> str | None:
    """``pipelines.csv_kafka.rows`` -> ``csv_kafka``; None outside pipelines."""
    parts = module.split(".")
    return parts[1] if parts[0] == "pipelines" and len(parts) > 1 else None


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
        out += [(node.lineno, n.removeprefix("s3flow.")) for n in names if n.startswith("s3flow.")]
    return out


def test_every_module_has_a_layer() -> None:
    missing = {_dotted(p) for p in _modules() if layer_of(_dotted(p)) is None}
    assert not missing, f"add these modules to a layer in {__file__}: {sorted(missing)}"


def test_the_readme_layout_lists_these_layers_in_order() -> None:
    # README's "Layout" carries DESIGN.md's layers (DESIGN.md lives outside the repo).
    readme = (SRC.parents[1] / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed = [line.split()[0] for line in block.splitlines() if line and not line[0].isspace()]
    assert listed == [name for name, _ in reversed(LAYERS)]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_downward_only(path: Path) -> None:
    own = _dotted(path)
    rank = layer_of(own)
    assert rank is not None
    if own == "__init__":
        return  # the package's public API re-exports (lazily) every layer
    bad = []
    for line, name in _imports(path):
        theirs = layer_of(name)
        if theirs is None:
            continue
        if theirs > rank:
            bad.append(f"line {line}: {name} ({LAYERS[theirs][0]}) from {LAYERS[rank][0]}")
        elif pipeline_of(name) and pipeline_of(own) and pipeline_of(name) != pipeline_of(own):
            bad.append(f"line {line}: {name} (another pipeline)")
    assert not bad, f"{own} imports upward or across: {bad}"


def test_the_check_can_fail() -> None:
    assert layer_of("worker.engine") == RANK["worker"]
    assert layer_of("local.demo") == RANK["local.demo"] > RANK["local"]
    assert layer_of("pipelines.csv_kafka.rows") == PIPELINES > RANK["cli"]
    assert pipeline_of("pipelines.csv_kafka.rows") == "csv_kafka"
    assert pipeline_of("pipelines.line_count") == "line_count"
