"""Fixtures: a real single-node Apache Kafka broker (KRaft) on 127.0.0.1 for the session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from s3flow.local.kafka_broker import KafkaBroker, java_available, maven_available


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaBroker]:
    """A private Kafka broker (own port, own temporary log dir), stopped and removed at the end.

    Skipped locally when Java 17+ (or Maven, for the one-time jar install) is missing; in CI
    (``CI`` set) that is a failure instead, so a missing install step cannot hide.
    """
    if not java_available() or not maven_available():
        reason = "the Kafka broker needs Java 17+ and Maven (scripts/services kafka install)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    broker = KafkaBroker()
    broker.start(timeout_s=120)
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture()
def bucket(s3: Any) -> str:
    """A new, empty bucket on the test's S3 endpoint."""
    name = f"csv-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name
