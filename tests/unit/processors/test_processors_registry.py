"""processors: the registry, import paths, the decorator and option checks."""

from __future__ import annotations

import functools
from typing import Any, ClassVar
from unittest import mock

import pytest

import s3flow.processors.registry as registry
from s3flow.errors import ConfigError
from s3flow.pipelines.line_count import LineCountProcessor
from s3flow.processors import (
    BaseProcessor,
    ProcessContext,
    Processor,
    Result,
    available_processors,
    create_processor,
    register_processor,
)


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Registrations made by a test go to a copy that is dropped afterwards."""
    copy = dict(registry._REGISTRY)
    monkeypatch.setattr(registry, "_REGISTRY", copy)
    return copy


def test_line_count_by_name() -> None:
    proc = create_processor("line-count")
    assert isinstance(proc, LineCountProcessor)
    assert isinstance(proc, Processor)
    assert proc.name == "line-count"
    assert proc.cpu_bound is False
    assert proc.text_encoding is None  # type: ignore[attr-defined]


def test_line_count_with_options() -> None:
    proc = create_processor("line-count", {"text_encoding": "utf-8"})
    assert isinstance(proc, LineCountProcessor)
    assert proc.text_encoding == "utf-8"


def test_line_count_is_available() -> None:
    assert "line-count" in available_processors()


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ConfigError) as info:
        create_processor("no-such-processor")
    msg = str(info.value)
    assert "'no-such-processor'" in msg
    assert "line-count" in msg
    assert "module:attribute" in msg


def test_module_attr_path() -> None:
    proc = create_processor("s3flow.pipelines.line_count:LineCountProcessor")
    assert isinstance(proc, LineCountProcessor)


def test_module_attr_path_passes_options() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        create_processor("s3flow.pipelines.line_count:LineCountProcessor", {"x": 1})


def test_bad_module_path() -> None:
    with pytest.raises(ConfigError) as info:
        create_processor("s3flow_no_such_module_xyz:Thing")
    assert "cannot import module 's3flow_no_such_module_xyz'" in str(info.value)


def test_missing_attribute_in_module() -> None:
    with pytest.raises(ConfigError) as info:
        create_processor("s3flow.pipelines.line_count:NoSuchClass")
    assert "has no 'NoSuchClass'" in str(info.value)


def test_line_count_unknown_option() -> None:
    with pytest.raises(ConfigError) as info:
        create_processor("line-count", {"text_encodng": "utf-8"})
    msg = str(info.value)
    assert "text_encodng" in msg
    assert "text_encoding" in msg


def test_line_count_unknown_text_encoding() -> None:
    with pytest.raises(ConfigError, match="klingon-8"):
        LineCountProcessor({"text_encoding": "klingon-8"})


def test_register_processor_decorator(isolated_registry: dict[str, Any]) -> None:
    @register_processor("unit-test-echo")
    class Echo(BaseProcessor):
        name: ClassVar[str] = "unit-test-echo"

        async def process(self, ctx: ProcessContext) -> Result:
            return Result(detail={"options": self.options})

    assert isolated_registry["unit-test-echo"] is Echo
    assert "unit-test-echo" in available_processors()
    proc = create_processor("unit-test-echo", {"a": 1})
    assert isinstance(proc, Echo)
    assert proc.options == {"a": 1}


def test_registration_does_not_leak_between_tests() -> None:
    assert "unit-test-echo" not in available_processors()


def test_factory_type_error_becomes_config_error(isolated_registry: dict[str, Any]) -> None:
    @register_processor("unit-test-strict")
    class Strict:
        def __init__(self) -> None:  # takes no options
            pass

        async def process(self, ctx: ProcessContext) -> Result:
            return Result()

    with pytest.raises(ConfigError, match="bad options"):
        create_processor("unit-test-strict")


def test_object_without_process_is_refused(isolated_registry: dict[str, Any]) -> None:
    register_processor("unit-test-noproc")(lambda options: object())
    with pytest.raises(ConfigError, match="no process"):
        create_processor("unit-test-noproc")


@pytest.mark.parametrize("spec", [":Thumbs", ".myprocs:Thumbs", "..x:Y", "my procs:Y", "mod:"])
def test_a_malformed_module_path_is_a_config_error(spec: str) -> None:
    # ':Thumbs' raised ValueError (Empty module name), '.myprocs:Thumbs' TypeError (the
    # 'package' argument is required): tracebacks, and the worker exited 1, not 2.
    with pytest.raises(ConfigError, match=r"not a 'module:Class' path") as info:
        create_processor(spec)
    assert repr(spec) in str(info.value)
    assert isinstance(info.value, registry.ProcessorSpecError)
    assert info.value.error_class == "ConfigError"  # in results and DLQ messages


async def test_a_plain_def_process_is_a_permanent_error_naming_the_fix(
    isolated_registry: dict[str, Any],
) -> None:
    # It failed every object ("object Result can't be used in 'await' expression"),
    # retried, then dead-lettered. Refused when it returns (not when it is built: a
    # plain def returning an awaitable, or a decorated async def, is a processor too).
    from s3flow.events import ObjectEvent
    from s3flow.executors.base import ObjectJob
    from s3flow.executors.one import run_object

    @register_processor("unit-test-sync")
    class Sync(BaseProcessor):
        def process(self, ctx: ProcessContext) -> Result:  # type: ignore[override]
            return Result()

    class Delegates(BaseProcessor):
        def process(self, ctx: ProcessContext) -> Any:  # type: ignore[override]
            return self._run(ctx)

        async def _run(self, ctx: ProcessContext) -> Result:
            return Result(counters={"delegated": 1})

    job = ObjectJob(
        processor="unit-test-sync",
        options={},
        event=ObjectEvent(bucket="in", key="a.txt"),
        output="s3://out/",
        timeout_s=10,
    )
    with pytest.raises(ConfigError, match=r"make it `async def process\(self, ctx\)`"):
        await run_object(create_processor("unit-test-sync"), job, s3=None, sink=None)  # type: ignore[arg-type]
    done = await run_object(Delegates({}), job, s3=None, sink=None)  # type: ignore[arg-type]
    assert done.counters == {"delegated": 1}


def test_async_process_in_any_form_is_accepted(isolated_registry: dict[str, Any]) -> None:
    async def run(ctx: ProcessContext, scale: int) -> Result:
        return Result(counters={"scale": scale})

    class Partial:
        def __init__(self, options: dict[str, Any]) -> None:
            self.process = functools.partial(run, scale=2)

    class Awaitable:  # a callable object: what it returns is awaited
        async def __call__(self, ctx: ProcessContext) -> Result:
            return Result()

    class CallableProcess:
        def __init__(self, options: dict[str, Any]) -> None:
            self.process = Awaitable()

    class Wrapped(BaseProcessor):
        @_passthrough
        async def process(self, ctx: ProcessContext) -> Result:
            return Result()

    for name, cls in [("p", Partial), ("c", CallableProcess), ("w", Wrapped)]:
        register_processor(f"unit-test-{name}")(cls)
        assert isinstance(create_processor(f"unit-test-{name}"), cls)
    register_processor("unit-test-mock")(lambda options: mock.Mock())
    create_processor("unit-test-mock")


def _passthrough(fn: Any) -> Any:
    """A plain-def decorator of an ``async def`` (returns its coroutine)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper
