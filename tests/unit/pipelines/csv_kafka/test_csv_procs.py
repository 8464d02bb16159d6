"""csv-to-kafka range processes: what crosses the process boundary pickles, errors too."""

from __future__ import annotations

import asyncio
import pickle
from types import SimpleNamespace
from typing import Any

from botocore.config import Config

from s3flow.errors import ObjectChangedError, RetryableError, S3flowError, superseded_text
from s3flow.pipelines.csv_kafka.checkpoint import ObjectRef
from s3flow.pipelines.csv_kafka.errors import BadRowError, KafkaUnavailableError
from s3flow.pipelines.csv_kafka.options import parse_options
from s3flow.pipelines.csv_kafka.procs import RangeJob, S3Access, _picklable


class _Creds:
    async def get_frozen_credentials(self) -> Any:
        return SimpleNamespace(access_key="AK", secret_key="SK", token="TOK")


def _client() -> Any:
    meta = SimpleNamespace(
        endpoint_url="http://127.0.0.1:9", region_name="eu-west-1", config=Config(retries={})
    )
    return SimpleNamespace(meta=meta, _request_signer=SimpleNamespace(_credentials=_Creds()))


def test_s3_access_copies_the_parent_client_and_pickles() -> None:
    access = asyncio.run(S3Access.of(_client()))
    assert (access.endpoint_url, access.region) == ("http://127.0.0.1:9", "eu-west-1")
    assert (access.access_key, access.secret_key, access.token) == ("AK", "SK", "TOK")
    job = RangeJob(
        options=parse_options({"topic": "t", "partition": 2}).model_dump(),
        ref=ObjectRef("b", "k.csv", "v1", "2/4@10-20"),
        version_id=None,
        start=10,
        end=20,
        hint=0,
        access=access,
        log_format="text",
        log_level="INFO",
        if_match="e1",
    )
    again = pickle.loads(pickle.dumps(job))
    assert again.ref == job.ref and again.access.region == "eu-west-1"
    assert again.if_match == "e1"  # the range reads only the event's upload
    assert parse_options(again.options).partition == 2


def test_errors_cross_the_pipe_with_their_kind() -> None:
    assert isinstance(_picklable(KafkaUnavailableError("down")), KafkaUnavailableError)
    assert isinstance(_picklable(BadRowError("line 3")), BadRowError)

    class Local(RetryableError):  # not importable by name: does not pickle
        pass

    moved = _picklable(Local("x"))
    assert type(moved) is RetryableError and "Local: x" in str(moved)

    class Other(Exception):
        pass

    assert type(_picklable(Other("y"))) is S3flowError
    # A range that found the object overwritten since the event: superseded, as it was.
    changed = _picklable(ObjectChangedError(superseded_text("e1")))
    assert type(changed) is ObjectChangedError and "upload eTag e1" in str(changed)
