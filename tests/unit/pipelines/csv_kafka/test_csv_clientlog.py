"""librdkafka's own log lines: what it retries by itself is INFO, the rest unchanged."""

from __future__ import annotations

import logging

import pytest

from s3flow.pipelines.csv_kafka.clientlog import client_log


@pytest.mark.parametrize(
    ("level", "message", "expected"),
    [
        (
            logging.WARNING,
            "GETPID [rdkafka#producer-3] [thrd:main]: Failed to acquire transactional PID "
            "from broker TxnCoordinator/1: Broker: Coordinator load in progress: retrying",
            logging.INFO,
        ),
        (logging.WARNING, "FAIL [thrd:127.0.0.1:9/bootstrap]: Connect failed", logging.WARNING),
        (logging.ERROR, "something: retrying", logging.ERROR),
    ],
)
def test_retried_warnings_become_info(
    caplog: pytest.LogCaptureFixture, level: int, message: str, expected: int
) -> None:
    with caplog.at_level(logging.DEBUG, logger=client_log.name):
        client_log.log(level, message)
    [record] = [r for r in caplog.records if r.name == client_log.name]
    assert (record.levelno, record.levelname) == (expected, logging.getLevelName(expected))
