"""Child process of the text-to-pdf memory test: convert one S3 object, print what it cost.

``python text_to_pdf_child.py BUCKET KEY OUTPUT_URL`` runs the ``text-to-pdf``
processor once, in a process of its own (S3 from the environment: the test's
moto server), reading ``s3://BUCKET/KEY`` and writing through an S3 sink at
``OUTPUT_URL``. Prints one JSON line: the result's counters, wall time and the
process's peak RSS (``VmHWM``: ``ru_maxrss`` of a child would carry the
parent's high-water mark across fork + exec).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from s3flow.aws import open_clients
from s3flow.events import ObjectEvent
from s3flow.pipelines.text_to_pdf.processor import TextToPdfProcessor
from s3flow.processors.base import ProcessContext
from s3flow.settings import AwsSettings
from s3flow.sinks.s3 import S3Sink


def peak_rss_mb() -> float:
    """This process's peak resident set size, MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


async def convert(bucket: str, key: str, output: str) -> dict[str, Any]:
    """Run the processor on one object; its counters, wall time and peak RSS."""
    processor = TextToPdfProcessor({})
    async with open_clients(AwsSettings()) as clients:
        ctx = ProcessContext(
            event=ObjectEvent(bucket=bucket, key=key),
            pipeline="rss",
            worker_id="rss-child",
            s3=clients.s3,
            sink=S3Sink(clients.s3, output),
        )
        started = time.perf_counter()
        result = await processor.process(ctx)
        wall = time.perf_counter() - started
    return {
        **result.counters,
        "outputs": result.outputs,
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(convert(*sys.argv[1:4]))))
