"""What the worker checks at start for routes that run their processor out of process."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from s3flow.app import _routes_of
from s3flow.errors import ConfigError
from s3flow.processors.base import BaseProcessor, ProcessContext, Result
from s3flow.settings import PipelineSettings


class Counted(BaseProcessor):
    """Counts its constructions; ``fail`` makes ``__init__`` refuse its options."""

    built: ClassVar[int] = 0

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        type(self).built += 1
        if self.options.get("fail"):
            raise ConfigError(f"counted: cannot use {self.options['fail']!r}")

    async def process(self, ctx: ProcessContext) -> Result:
        return Result()


def pipeline(tmp_path: Path, **kw: Any) -> PipelineSettings:
    data: dict[str, Any] = {
        "name": "docs",
        "bucket": "in",
        "queue": "q",
        "output": str(tmp_path / "out"),
    }
    data.update(kw)
    return PipelineSettings(**data)


@pytest.mark.parametrize("executor", ["pool", "subprocess"])
def test_a_route_whose_processor_refuses_its_options_stops_the_start(
    tmp_path: Path, executor: str
) -> None:
    """text-to-pdf checks its font in ``__init__``: a route on this machine with a font
    that does not exist fails the start, naming the route (not every object, in a child)."""
    p = pipeline(
        tmp_path,
        processor="text-to-pdf",
        executor=executor,
        routes=[
            {"name": "he", "key_glob": "he/*", "options": {"font_file": "/nonexistent.ttf"}},
            {},
        ],
    )
    with pytest.raises(ConfigError) as info:
        _routes_of(p)
    assert str(info.value) == (
        "pipeline 'docs', route 'he': text-to-pdf: font_file '/nonexistent.ttf' does not exist"
    )


def test_container_routes_only_check_options(tmp_path: Path) -> None:
    """ECS/Batch run the processor in their image: its files are not this machine's."""
    p = pipeline(
        tmp_path,
        processor="text-to-pdf",
        routes=[
            {"name": "he", "executor": "batch", "options": {"font_file": "/in/the/image.ttf"}},
        ],
        executors={"batch": {"job_queue": "q", "job_definition": "d"}},
        output="s3://out/pdf/",
    )
    table, _ = _routes_of(p)
    assert [r.executor for r in table.rules] == ["batch"]


def test_each_processor_is_built_once_and_only_to_check_it(tmp_path: Path) -> None:
    spec = f"{__name__}:Counted"
    p = pipeline(
        tmp_path,
        processor=spec,
        executor="pool",
        routes=[
            {"name": "a", "key_glob": "a/*", "options": {"x": 1}},
            {"name": "b", "key_glob": "b/*", "options": {"x": 1}},  # the same: not again
            {"name": "c", "key_glob": "c/*"},  # the pipeline's own: built already
            {"name": "bad", "options": {"fail": "this"}},
        ],
    )
    Counted.built = 0
    with pytest.raises(ConfigError, match="route 'bad': counted: cannot use 'this'"):
        _routes_of(p)
    assert Counted.built == 1 + 2  # the main one, then 'a' and 'bad'
    p = p.model_copy(update={"routes": p.routes[:3]})
    Counted.built = 0
    _, inline = _routes_of(p)
    assert Counted.built == 2 and len(inline) == 1  # pool routes keep no instance here


def test_a_subprocess_route_whose_command_is_missing_stops_the_start(tmp_path: Path) -> None:
    p = pipeline(
        tmp_path,
        routes=[{"name": "light", "executor": "subprocess"}],
        executors={"subprocess": {"command": [str(tmp_path / "bin" / "s3flow")]}},
    )
    with pytest.raises(ConfigError) as info:
        _routes_of(p)
    message = str(info.value)
    assert message.startswith(
        "pipeline 'docs', route 'light': [pipelines.executors.subprocess] command: "
        f"'{tmp_path}/bin/s3flow' does not exist; set it to the s3flow executable to run"
    )
    # a pipeline not using it is not held up by it
    p = p.model_copy(update={"routes": []})
    _routes_of(p)


@pytest.mark.parametrize("executor", ["ecs", "batch", "pool"])
def test_the_pipelines_processor_is_built_here_only_when_it_runs_here(
    tmp_path: Path, executor: str
) -> None:
    """A pipeline whose objects all run in a container does not build its processor on
    the worker's machine: its font exists in the image only. Run here, it must."""
    p = pipeline(
        tmp_path,
        processor="text-to-pdf",
        executor=executor,
        options={"font_file": "/in/the/image.ttf"},
        executors={
            "ecs": {"cluster": "c", "task_definition": "t", "container": "app"},
            "batch": {"job_queue": "q", "job_definition": "d"},
        },
        output="s3://out/pdf/",
    )
    if executor == "pool":
        with pytest.raises(ConfigError, match=r"font_file '/in/the/image\.ttf' does not exist"):
            _routes_of(p)
        return
    table, inline = _routes_of(p)
    assert [r.executor for r in table.rules] == [executor] and inline == {}
