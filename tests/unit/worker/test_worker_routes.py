"""The handler's routing step: one HEAD per object (shared with identity and validation),
tags only when a rule needs them, the route in the result and no route = quarantine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, ClassVar

from s3flow.metrics import PipelineMetrics
from s3flow.processors.base import BaseProcessor, ProcessContext, Result
from s3flow.routing import Route
from s3flow.settings import PipelineSettings, WorkerSettings
from s3flow.sinks.local import LocalDirSink
from s3flow.worker.handler import MessageHandler, PipelineRuntime, WorkerObserver
from s3flow.worker.outcomes import Ack
from s3flow.worker.source import ReceivedMessage


class Recorder(BaseProcessor):
    """Returns the route the engine chose (as the handler adds it) and nothing else."""

    seen: ClassVar[list[str]] = []

    async def process(self, ctx: ProcessContext) -> Result:
        type(self).seen.append(ctx.event.key)
        return Result()


class FakeS3:
    def __init__(self, metadata: dict[str, str], tags: dict[str, str] | None = None) -> None:
        self.metadata = metadata
        self.tags = tags or {}
        self.calls: list[str] = []

    async def head_object(self, **kw: Any) -> dict[str, Any]:
        self.calls.append("HeadObject")
        return {
            "ETag": '"e"',
            "LastModified": 1,
            "ContentLength": 5,
            "ContentType": "text/plain",
            "Metadata": self.metadata,
        }

    async def get_object_tagging(self, **kw: Any) -> dict[str, Any]:
        self.calls.append("GetObjectTagging")
        return {"TagSet": [{"Key": k, "Value": v} for k, v in self.tags.items()]}

    async def put_object_tagging(self, **kw: Any) -> dict[str, Any]:
        self.calls.append("PutObjectTagging")
        return {}


def handler(p: PipelineSettings, s3: FakeS3, results: list[Result]) -> MessageHandler:
    class Observer(WorkerObserver):
        def object_finished(self, pipeline: str, event: Any, result: Any, error: Any) -> None:
            if result is not None:
                results.append(result)

    proc = Recorder({})
    rt = PipelineRuntime(p, "q", "dlq", proc, LocalDirSink(p.output), Route.from_settings(p))
    return MessageHandler(
        rt,
        s3=s3,
        store=None,
        worker=WorkerSettings(),
        metrics=PipelineMetrics(),
        observer=Observer(),
        stop=asyncio.Event(),
    )


def message(key: str = "a.txt") -> ReceivedMessage:
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "b"}, "object": {"key": key, "eTag": "e", "size": 5}},
    }
    return ReceivedMessage("m", "h", json.dumps({"Records": [record]}), 1, 0.0)


def settings(tmp_path: Path, **kw: Any) -> PipelineSettings:
    data: dict[str, Any] = {
        "name": "p",
        "bucket": "b",
        "queue": "q",
        "output": str(tmp_path),
        "processor": f"{__name__}:Recorder",
    }
    return PipelineSettings(**{**data, **kw})


async def test_one_head_serves_identity_validation_and_routing(tmp_path: Path) -> None:
    p = settings(
        tmp_path,
        validation={"content_types": ["text/plain"]},
        routes=[{"name": "heavy", "metadata": {"processor-type": "pool"}}, {"name": "rest"}],
    )
    s3, results = FakeS3({"processor-type": "pool"}), []
    outcome = await handler(p, s3, results).handle(message())
    assert isinstance(outcome, Ack)
    # moto-style event (no sequencer): identity needs the HEAD; validation and routing reuse it
    assert s3.calls == ["HeadObject"]
    (result,) = results
    assert result.detail["route"] == {
        "name": "heavy",
        "processor": f"{__name__}:Recorder",
        "executor": "inline",
    }


async def test_tags_are_read_only_when_a_rule_needs_them(tmp_path: Path) -> None:
    p = settings(tmp_path, routes=[{"tags": {"team": "a"}}, {"name": "rest"}])
    s3, results = FakeS3({}, {"team": "a"}), []
    await handler(p, s3, results).handle(message())
    assert s3.calls == ["HeadObject", "GetObjectTagging"]
    assert results[0].detail["route"]["name"] == "route-1"
    # key-only routes: nothing beyond identity's HEAD
    p = settings(tmp_path, routes=[{"key_glob": "*.txt"}, {"name": "rest"}])
    s3, results = FakeS3({}), []
    await handler(p, s3, results).handle(message())
    assert s3.calls == ["HeadObject"]


async def test_no_route_quarantines_and_acks(tmp_path: Path) -> None:
    p = settings(tmp_path, routes=[{"metadata": {"processor-type": "pool"}}])
    s3, results = FakeS3({}), []
    h = handler(p, s3, results)
    outcome = await h.handle(message())
    assert isinstance(outcome, Ack)
    assert results == [] and h.metrics.quarantined == 1
    assert "PutObjectTagging" in s3.calls


class Stateful(BaseProcessor):
    """Keeps pipeline-level state (a start hook): inline only."""

    async def start(self, pipeline: Any) -> None:
        return None

    async def process(self, ctx: ProcessContext) -> Result:
        return Result()


def test_routes_are_checked_at_start(tmp_path: Path) -> None:
    import pytest

    from s3flow.app import _routes_of
    from s3flow.errors import ConfigError

    p = settings(tmp_path, processor=f"{__name__}:Stateful", executor="pool")
    with pytest.raises(ConfigError, match="cannot run on executor 'pool'"):
        _routes_of(p)
    p = settings(
        tmp_path,
        routes=[
            {"key_glob": "*.csv", "processor": "line-count", "options": {"bogus": 1}},
            {"executor": "pool"},
        ],
    )
    with pytest.raises(ConfigError, match=r"(?s)route .route-1.*bogus: unknown option"):
        _routes_of(p)
    p = settings(tmp_path, routes=[{"key_glob": "*.csv", "processor": "nope"}, {}])
    with pytest.raises(ConfigError, match="unknown processor 'nope'"):
        _routes_of(p)
