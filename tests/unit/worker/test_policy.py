"""The failure policy's outcomes: a wait that is not the file's fault is renewed before
the queue's redrive limit; merged outcomes keep that."""

from __future__ import annotations

from typing import Any

import pytest

from s3flow.errors import OutputUnavailableError
from s3flow.events import ObjectEvent
from s3flow.metrics import PipelineMetrics
from s3flow.settings import PipelineSettings
from s3flow.worker.handler import PipelineRuntime
from s3flow.worker.outcomes import DeadLetter, Retry
from s3flow.worker.policy import Attempt, FailurePolicy, merge_failures
from s3flow.worker.source import ReceivedMessage

EVENT = ObjectEvent(bucket="b", key="k.txt")


def _settings(**over: Any) -> PipelineSettings:
    return PipelineSettings(name="p", bucket="b", queue="q", output="s3://o/", **over)


@pytest.mark.parametrize(("receive", "renewed"), [(1, False), (11, False), (12, True), (20, True)])
async def test_an_output_outage_is_renewed_one_receive_before_the_redrive_limit(
    receive: int, renewed: bool
) -> None:
    """Each wait spends a receive: at the limit SQS moved the message to the DLQ with
    no reason (max_receive_count 3: the queue's limit is 13, so from receive 12)."""
    policy = FailurePolicy(
        _settings(max_receive_count=3), s3=None, store=None, metrics=PipelineMetrics()
    )
    msg = ReceivedMessage("m", "h", "{}", receive, 0.0)
    out = await policy.failed(Attempt(msg, EVENT), OutputUnavailableError("bucket gone"))
    assert isinstance(out, Retry) and out.renew is renewed


def test_the_queues_own_redrive_limit_decides_when_it_was_read() -> None:
    """A queue given by URL may have its own maxReceiveCount (5 here, not 13)."""
    rt = PipelineRuntime(
        settings=_settings(max_receive_count=3),
        queue_url="q",
        dlq_url="d",
        processor=None,
        sink=None,  # type: ignore[arg-type]
        route=None,  # type: ignore[arg-type]
        routes=None,
        redrive_limit=5,
    )
    assert rt.renew_at == 4
    rt.redrive_limit = None
    assert rt.renew_at == 12


def test_merged_failures_renew_when_any_record_does() -> None:
    a, b = ObjectEvent(bucket="b", key="a"), ObjectEvent(bucket="b", key="b")
    merged = merge_failures([(a, Retry(30, "X", "x")), (b, Retry(5, "Y", "y", renew=True))])
    assert merged == Retry(5, "Y", "y", renew=True)
    plain = merge_failures([(a, Retry(30, "X", "x")), (b, Retry(5, "Y", "y"))])
    assert plain == Retry(5, "Y", "y")
    dead = merge_failures([(a, DeadLetter("D", "d")), (b, Retry(5, "Y", "y", renew=True))])
    assert isinstance(dead, DeadLetter)


class _TagsDenied:
    async def get_object_tagging(self, **kw: Any) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        raise ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObjectTagging"
        )


async def test_refused_tags_are_the_operators_problem_not_the_files() -> None:
    """A missing s3:GetObjectTagging grant dead-lettered every object of a tag route at
    once ("failed permanently (AwsPermanentError)")."""
    from s3flow.errors import LookupRefusedError
    from s3flow.worker.routes import ObjectLookup

    with pytest.raises(LookupRefusedError, match=r"needs s3:GetObjectTagging") as info:
        await ObjectLookup(_TagsDenied(), EVENT).tags()
    policy = FailurePolicy(
        _settings(max_receive_count=1), s3=None, store=None, metrics=PipelineMetrics()
    )
    msg = ReceivedMessage("m", "h", "{}", 5, 0.0)  # past max_receive_count: not counted
    out = await policy.failed(Attempt(msg, EVENT), info.value)
    assert isinstance(out, Retry) and out.error_class == "LookupRefusedError"


@pytest.mark.parametrize(("renewals", "renewed"), [(0, True), (2, True), (3, False)])
async def test_a_refused_lookup_is_renewed_at_most_three_times(
    renewals: int, renewed: bool
) -> None:
    """A lookup refused for this object alone (a Deny on its prefix) looped for ever:
    its renewals are capped, then the queue's redrive takes it with its last error."""
    from s3flow.errors import LookupRefusedError

    policy = FailurePolicy(
        _settings(max_receive_count=3), s3=None, store=None, metrics=PipelineMetrics()
    )
    attrs = {"s3flow.renewals": {"StringValue": str(renewals)}}
    msg = ReceivedMessage("m", "h", "{}", 12, 0.0, message_attributes=attrs)
    out = await policy.failed(Attempt(msg, EVENT), LookupRefusedError("denied"))
    assert isinstance(out, Retry) and (out.renew, out.capped) == (renewed, True)
    # an output down is never capped, whatever renewals a capped wait counted
    down = await policy.failed(Attempt(msg, EVENT), OutputUnavailableError("gone"))
    assert isinstance(down, Retry) and (down.renew, down.capped) == (True, False)


class _Refused:
    def __init__(self, code: str) -> None:
        self.code = code

    async def get_object_tagging(self, **kw: Any) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": self.code, "Message": "no"}}, "GetObjectTagging")


async def test_only_an_access_denied_lookup_is_the_operators_problem() -> None:
    """'AccessDenied' in the key made a missing object (404) a lookup refused, retried
    for ever instead of skipped."""
    from s3flow.errors import ObjectMissingError
    from s3flow.worker.routes import ObjectLookup

    event = ObjectEvent(bucket="b", key="reports/AccessDenied-2026.csv")
    with pytest.raises(ObjectMissingError):
        await ObjectLookup(_Refused("NoSuchKey"), event).tags()
