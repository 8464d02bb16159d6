"""csv-to-kafka under a worker: topics that go missing are the operator's to fix."""

from __future__ import annotations

from typing import Any

import pytest

from s3flow.errors import ConfigError, Disposition, OutputUnavailableError
from s3flow.pipelines.csv_kafka.processor import CsvToKafkaProcessor


async def test_topics_missing_at_an_object_are_retried_not_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With create_topics = false, a topic missing when an object ran (deleted since the
    start, or Kafka down at the start so the check came later) was a ConfigError:
    permanent, so every object went to the DLQ."""
    proc = CsvToKafkaProcessor({"topic": "t", "bootstrap_servers": "127.0.0.1:1"})

    async def missing() -> None:
        raise ConfigError("csv-to-kafka: topic 't' does not exist and create_topics = false")

    monkeypatch.setattr(proc, "ensure_topics", missing)
    with pytest.raises(OutputUnavailableError, match="does not exist") as err:
        await proc.process(Any)  # type: ignore[arg-type]
    assert err.value.disposition is Disposition.RETRYABLE
