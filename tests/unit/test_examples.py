"""Every example config in examples/ is valid and routes as its comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3flow.events import ObjectEvent
from s3flow.routing import ObjectFacts, RouteRule, RoutingTable
from s3flow.settings import load_settings

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path) -> None:
    settings = load_settings(path)
    assert settings.pipelines


@pytest.mark.parametrize(
    ("name", "heavy", "other"),
    [("routing-ecs-batch.toml", "batch", "ecs"), ("routing-local.toml", "pool", "subprocess")],
)
def test_processor_type_pool_is_heavy(name: str, heavy: str, other: str) -> None:
    p = load_settings(Path(__file__).parents[2] / "examples" / name).pipelines[0]
    table = RoutingTable.from_settings(p)
    event = ObjectEvent(bucket=p.bucket, key="docs/a.txt", size=10)

    def route(meta: dict[str, str]) -> RouteRule:
        got = table.select(event, ObjectFacts(metadata=meta))
        assert isinstance(got, RouteRule)
        return got

    assert route({"processor-type": "pool"}).executor == heavy
    assert route({"processor-type": "ecs"}).executor == other
    assert route({}).executor == other
    assert route({}).processor == "text-to-pdf"
