"""routing.RoutingTable: [[pipelines.routes]] rules -> processor + executor + options."""

from __future__ import annotations

from typing import Any

import pytest

from s3flow.events import ObjectEvent
from s3flow.routing import Needs, NoRoute, ObjectFacts, RouteRule, RoutingTable
from s3flow.settings import PipelineSettings


def pipeline(routes: list[dict[str, Any]] | None = None, **kw: Any) -> PipelineSettings:
    data: dict[str, Any] = {
        "name": "docs",
        "bucket": "in",
        "queue": "q",
        "output": "s3://out/pdf/",
        "processor": "text-to-pdf",
        "options": {"font_size": 10},
        "executors": {
            "ecs": {"cluster": "c", "task_definition": "t", "container": "s3flow"},
            "batch": {"job_queue": "heavy", "job_definition": "d"},
        },
    }
    data.update(kw)
    if routes is not None:
        data["routes"] = routes
    return PipelineSettings(**data)


def ev(key: str = "a.txt", size: int | None = 100) -> ObjectEvent:
    return ObjectEvent(bucket="in", key=key, size=size)


def head(meta: dict[str, str] | None = None, ctype: str = "text/plain", size: int = 100) -> Any:
    return {"Metadata": meta or {}, "ContentType": ctype, "ContentLength": size}


HEAVY_ELSE_ECS = [
    {"name": "heavy", "metadata": {"processor-type": "pool"}, "executor": "batch"},
    {"executor": "ecs"},
]


def test_without_routes_the_pipeline_processor_is_the_one_default_rule() -> None:
    table = RoutingTable.from_settings(pipeline(executors={}))
    assert len(table.rules) == 1
    rule = table.rules[0]
    assert rule.name == "default"
    assert rule.processor == "text-to-pdf" and rule.executor == "inline"
    assert rule.options == {"font_size": 10}
    assert table.needs(ev()) == Needs()  # no lookup at all
    assert table.select(ev(), ObjectFacts()) is rule


def test_the_default_executor_comes_from_the_processor_unless_a_setting_names_one() -> None:
    cpu = {"text-to-pdf": "pool"}
    table = RoutingTable.from_settings(pipeline(executors={}), lambda p: cpu.get(p, "inline"))
    assert table.rules[0].executor == "pool"
    table = RoutingTable.from_settings(
        pipeline(executors={}, executor="subprocess"), lambda p: cpu.get(p, "inline")
    )
    assert table.rules[0].executor == "subprocess"


def test_metadata_pool_goes_to_batch_anything_else_to_ecs() -> None:
    table = RoutingTable.from_settings(pipeline(HEAVY_ELSE_ECS))
    assert [r.name for r in table.rules] == ["heavy", "default"]
    assert table.needs(ev()) == Needs(head=True)
    heavy = table.select(ev(), ObjectFacts.from_head(head({"processor-type": "pool"})))
    assert isinstance(heavy, RouteRule) and (heavy.name, heavy.executor) == ("heavy", "batch")
    light = table.select(ev(), ObjectFacts.from_head(head({"processor-type": "lambda"})))
    assert isinstance(light, RouteRule) and (light.name, light.executor) == ("default", "ecs")
    none = table.select(ev(), ObjectFacts.from_head(head()))
    assert isinstance(none, RouteRule) and none.executor == "ecs"


def test_metadata_names_are_case_insensitive_and_may_carry_the_header_prefix() -> None:
    table = RoutingTable.from_settings(
        pipeline([{"metadata": {"X-Amz-Meta-Processor-Type": "pool"}, "executor": "batch"}])
    )
    # boto3 reports user metadata without the prefix, lower case
    got = table.select(ev(), ObjectFacts.from_head(head({"processor-type": "pool"})))
    assert isinstance(got, RouteRule) and got.executor == "batch"
    # and a response that kept the header form still matches
    got = table.select(ev(), ObjectFacts.from_head(head({"X-Amz-Meta-Processor-Type": "pool"})))
    assert isinstance(got, RouteRule)


def test_metadata_values_match_exactly_or_as_a_glob() -> None:
    table = RoutingTable.from_settings(
        pipeline([{"metadata": {"tier": "gold*"}}, {"metadata": {"tier": "Silver"}}])
    )
    assert table.select(ev(), ObjectFacts.from_head(head({"tier": "gold-2"}))).name == "route-1"  # type: ignore[union-attr]
    assert table.select(ev(), ObjectFacts.from_head(head({"tier": "Silver"}))).name == "route-2"  # type: ignore[union-attr]
    miss = table.select(ev(), ObjectFacts.from_head(head({"tier": "silver"})))
    assert isinstance(miss, NoRoute)


def test_no_matching_route_gives_every_rules_reason() -> None:
    table = RoutingTable.from_settings(
        pipeline(
            [
                {"name": "pdfs", "key_glob": "*.txt", "metadata": {"processor-type": "pool"}},
                {"name": "big", "min_bytes": 1000},
            ]
        )
    )
    got = table.select(ev(size=10), ObjectFacts.from_head(head({"processor-type": "ecs"})))
    assert isinstance(got, NoRoute)
    assert got.reason.startswith("no route matches (")
    assert "pdfs: metadata 'processor-type' is 'ecs', not 'pool'" in got.reason
    assert "big: size 10 < min_bytes 1000" in got.reason


def test_first_match_wins() -> None:
    table = RoutingTable.from_settings(
        pipeline(
            [
                {"name": "a", "key_glob": "reports/*", "executor": "pool"},
                {"name": "b", "key_regex": r"\.txt$", "executor": "subprocess"},
                {"name": "c", "executor": "inline"},
            ]
        )
    )
    pick = lambda key: table.select(ev(key), ObjectFacts()).name  # type: ignore[union-attr]  # noqa: E731
    assert pick("reports/x.txt") == "a"
    assert pick("other/x.txt") == "b"
    assert pick("other/x.md") == "c"
    # key-only rules: no lookup needed whatever the key
    assert table.needs(ev("reports/x.txt")) == Needs()


@pytest.mark.parametrize(
    ("glob", "key", "taken"),
    [
        ("*.txt", "a/b/c.txt", True),  # '*' also matches '/'
        ("in/*.txt", "in/x.txt", True),
        ("in/*.txt", "in/x.TXT", False),  # case-sensitive
        ("in/?.txt", "in/ab.txt", False),
        ("in/[ab].txt", "in/b.txt", True),
    ],
)
def test_key_glob(glob: str, key: str, taken: bool) -> None:
    rule = RouteRule(name="r", processor="p", executor="inline", key_glob=glob)
    assert (rule.mismatch(ev(key), ObjectFacts()) is None) is taken


def test_size_range_is_inclusive_and_uses_the_event_size() -> None:
    rule = RouteRule(name="r", processor="p", executor="inline", min_bytes=10, max_bytes=20)
    facts = ObjectFacts()
    assert rule.mismatch(ev(size=10), facts) is None
    assert rule.mismatch(ev(size=20), facts) is None
    assert rule.mismatch(ev(size=9), facts) == "size 9 < min_bytes 10"
    assert rule.mismatch(ev(size=21), facts) == "size 21 > max_bytes 20"
    assert rule.needs(ev(size=15)) == Needs()
    # an event without a size needs the HEAD
    assert rule.needs(ev(size=None)) == Needs(head=True)
    assert rule.mismatch(ev(size=None), ObjectFacts.from_head(head(size=15))) is None
    assert rule.mismatch(ev(size=None), ObjectFacts.from_head(head(size=25))) is not None


def test_content_type_glob_ignores_parameters_and_case() -> None:
    rule = RouteRule(name="r", processor="p", executor="inline", content_type="text/*")
    assert (
        rule.mismatch(ev(), ObjectFacts.from_head(head(ctype="Text/Plain; charset=utf-8"))) is None
    )
    reason = rule.mismatch(ev(), ObjectFacts.from_head(head(ctype="application/pdf")))
    assert reason == "content type 'application/pdf' does not match 'text/*'"


def test_tags_need_their_own_lookup() -> None:
    table = RoutingTable.from_settings(
        pipeline([{"tags": {"team": "a*"}, "executor": "pool"}, {"executor": "inline"}])
    )
    assert table.needs(ev()) == Needs(tags=True)
    got = table.select(ev(), ObjectFacts(tags={"team": "analytics"}))
    assert isinstance(got, RouteRule) and got.executor == "pool"
    got = table.select(ev(), ObjectFacts(tags={}))
    assert isinstance(got, RouteRule) and got.executor == "inline"


def test_a_rule_ruled_out_by_its_key_needs_no_lookup() -> None:
    table = RoutingTable.from_settings(
        pipeline(
            [
                {"key_glob": "heavy/*", "metadata": {"processor-type": "pool"}},
                {"key_glob": "heavy/*", "tags": {"t": "x"}},
                {"executor": "inline"},
            ]
        )
    )
    assert table.needs(ev("light/a.txt")) == Needs()
    assert table.needs(ev("heavy/a.txt")) == Needs(head=True, tags=True)


def test_missing_lookups_are_a_caller_bug_not_a_silent_mismatch() -> None:
    rule = RouteRule(name="r", processor="p", executor="inline", metadata={"a": "b"})
    with pytest.raises(ValueError, match="needs the object's HEAD"):
        rule.mismatch(ev(), ObjectFacts())


def test_route_options_merge_over_the_pipelines_for_the_same_processor() -> None:
    table = RoutingTable.from_settings(
        pipeline(
            [
                {"key_glob": "big/*", "options": {"monospace": True}},
                {
                    "key_glob": "csv/*",
                    "processor": "line-count",
                    "options": {"text_encoding": "utf-8"},
                },
                {},
            ]
        )
    )
    same, other, default = table.rules
    assert same.processor == "text-to-pdf"
    assert same.options == {"font_size": 10, "monospace": True}
    assert other.processor == "line-count" and other.options == {"text_encoding": "utf-8"}
    assert default.options == {"font_size": 10}


def test_describe_names_route_processor_and_executor() -> None:
    rule = RouteRule(name="heavy", processor="text-to-pdf", executor="batch")
    assert rule.describe() == "route 'heavy': processor text-to-pdf on batch"


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        (
            [{}, {"key_glob": "*.txt"}],
            "route 2 .'route-2'. comes after the default route 'default'",
        ),
        # it said "route name 'default' is used twice", naming no route so called
        ([{"executor": "pool"}, {"executor": "inline"}], r"route 2 \('default'\) comes after"),
        ([{"name": "x", "min_bytes": 1}, {"name": "x"}], "route name 'x' is used twice"),
        ([{"min_bytes": 5, "max_bytes": 1}], "max_bytes must be >= min_bytes"),
        ([{"key_regex": "("}], "not a valid regular expression"),
        ([{"executor": "lambda"}], "Input should be 'inline', 'pool'"),
        ([{"key_glob": "", "processor": "line-count"}], "key_glob\n.*is empty"),
        ([{"content_type": " "}, {}], "content_type\n.*is empty"),
        ([{"key_regex": ""}], "key_regex\n.*is empty"),
        # S3 lower-cases metadata names: these two could never both match
        (
            [{"metadata": {"Kind": "a", "x-amz-meta-kind": "b"}}],
            "metadata names 'Kind' and 'x-amz-meta-kind' are the same name to S3",
        ),
        ([{"metadata": {"X-Amz-Meta-": "a"}}], "metadata name 'X-Amz-Meta-' is empty"),
        ([{"metadata": {"": "a"}}], "metadata name '' is empty"),
        ([{"tags": {"": "a"}}], "a tag key is empty"),
    ],
)
def test_bad_routes_are_refused_with_the_reason(routes: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pipeline(routes)


def test_a_container_executor_needs_its_table_and_an_s3_output() -> None:
    with pytest.raises(ValueError, match=r"\[pipelines.executors.batch\] is not set"):
        pipeline([{"executor": "batch"}], executors={})
    with pytest.raises(ValueError, match="the output must be s3://"):
        pipeline([{"executor": "ecs"}], output="/tmp/out")
    # a local directory is fine for the machine's own executors
    pipeline([{"executor": "subprocess"}], output="/tmp/out", executors={})
