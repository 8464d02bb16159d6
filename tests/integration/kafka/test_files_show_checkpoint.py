"""`s3flow files show` shows a csv-to-kafka object's mirrored checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from itest_support import Harness
from kafka_support import unique_topic

from s3flow.local.kafka_broker import KafkaBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_files_show_prints_the_checkpoint(harness: Harness, kafka: KafkaBroker) -> None:
    topic = unique_topic("show")
    harness.configure(
        processor="csv-to-kafka", options={"topic": topic, "bootstrap_servers": kafka.bootstrap}
    )
    body = "id,v\n" + "".join(f"{i},{i * 2}\n" for i in range(30))
    harness.put("in/show.csv", body.encode())
    assert harness.run().pipelines["p"].objects_processed == 1

    # The run returns only after its final checkpoint is mirrored into the state store.
    cfg = harness.write_config()
    run = subprocess.run(
        [sys.executable, "-m", "s3flow", "files", "show", "in/show.csv", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    (line,) = [x for x in run.stdout.splitlines() if x.strip().startswith("checkpoint:")]
    checkpoint = json.loads(line.split("checkpoint:", 1)[1])
    assert checkpoint["done"] is True
    assert (checkpoint["sent"], checkpoint["row"]) == (30, 30)
    assert checkpoint["offset"] == len(body.encode())
