"""The logger handed to librdkafka clients (``logger=client_log``).

librdkafka reports conditions it retries by itself at WARNING ("Failed to acquire
transactional PID from broker ...: Coordinator load in progress: retrying", common
right after a broker starts). They are not a problem an operator must act on, so
they are logged at INFO; anything librdkafka gives up on still surfaces as an
error from the call that failed.
"""

from __future__ import annotations

import logging

client_log = logging.getLogger("s3flow.pipelines.csv_kafka.librdkafka")


class _RetriedIsInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.getMessage().rstrip().endswith("retrying"):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


client_log.addFilter(_RetriedIsInfo())
