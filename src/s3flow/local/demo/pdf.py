"""The demo's routing stage: text -> PDF, two files routed to different executors.

One ``text-to-pdf`` pipeline with two routes (``examples/routing-local.toml``):
an object whose metadata says ``processor-type: pool`` runs in the worker's
process pool, any other one in its own ``s3flow run text-to-pdf`` process (the
command a container runs). The route each file took comes from its history.
"""

from __future__ import annotations

import asyncio
from typing import Any

from botocore.exceptions import ClientError
from rich.console import Console
from rich.markup import escape

from s3flow.app import run_worker
from s3flow.aws import open_clients
from s3flow.errors import ConfigError
from s3flow.processors.registry import create_processor
from s3flow.provisioning import provision
from s3flow.settings import Settings, load_settings

BUCKET = "s3flow-demo-docs"
OUT = "s3flow-demo-pdf"
PIPELINE: dict[str, Any] = {
    "name": "docs-to-pdf",
    "processor": "text-to-pdf",
    "bucket": BUCKET,
    "prefix": "docs/",
    "queue": "s3flow-demo-docs",
    "output": f"s3://{OUT}/pdf/",
    "concurrency": 4,
    "visibility_timeout_s": 60,
    "wait_time_s": 1,
    "max_receive_count": 3,
    "routes": [
        {"name": "heavy", "metadata": {"processor-type": "pool"}, "executor": "pool"},
        {"name": "light", "executor": "subprocess"},
    ],
    "executors": {"pool": {"processes": 1}},
}
TEXTS: dict[str, tuple[str, dict[str, str]]] = {
    "docs/report.txt": (
        "Quarterly report\n\n"
        + "".join(
            f"{i:>4}. line of the report, long enough to be wrapped on the page\n"
            for i in range(300)
        )
        + "\fAppendix — Ελληνικά, Русский, English\n",
        {"processor-type": "pool"},
    ),
    "docs/note.txt": ("A short note.\n\tIndented with a tab.\n", {}),
}


def pdf_stage(console: Console, state_url: str) -> None:
    """Provision, upload two texts (one marked heavy), run the worker, print each route."""
    try:  # both routes render with the default fonts: building the processor finds them
        for monospace in (True, False):
            create_processor("text-to-pdf", {"monospace": monospace})
    except ConfigError as exc:
        console.print(
            f"      (the text-to-pdf stage is skipped: {escape(str(exc))})",
            highlight=False,
            soft_wrap=True,
        )
        return
    settings = load_settings(None, {"pipelines": [PIPELINE], "state": {"url": state_url}})
    asyncio.run(provision(settings))
    asyncio.run(_upload(settings))
    console.print("      running the worker: heavy -> process pool, others -> `s3flow run` ...")
    asyncio.run(asyncio.wait_for(run_worker(settings, burst=True), 180))
    for key, route, pages, size in asyncio.run(_results(settings)):
        console.print(
            f"      {key:<18} -> {route:<52} {pages:>3} pages, {size:,} bytes of PDF",
            highlight=False,
        )


async def _upload(settings: Settings) -> None:
    async with open_clients(settings.aws) as c:
        try:
            await c.sqs.purge_queue(
                QueueUrl=(await c.sqs.get_queue_url(QueueName="s3flow-demo-docs"))["QueueUrl"]
            )
        except ClientError as exc:  # a run < 60 s ago purged it: its leftovers are harmless
            if "PurgeQueueInProgress" not in str(exc.response.get("Error", {}).get("Code")):
                raise
        for key, (text, meta) in TEXTS.items():
            await c.s3.put_object(
                Bucket=BUCKET, Key=key, Body=text.encode(), ContentType="text/plain", Metadata=meta
            )


async def _results(settings: Settings) -> list[tuple[str, str, str, int]]:
    from s3flow.app import open_store

    out = []
    async with open_clients(settings.aws) as c, open_store(settings) as store:
        assert store is not None
        for key in TEXTS:
            history = await store.history(BUCKET, key)
            route = next((h.detail for h in reversed(history) if h.detail.startswith("route")), "?")
            head = await c.s3.head_object(Bucket=OUT, Key=f"pdf/{key}.pdf")
            out.append((key, route, head["Metadata"].get("pages", "?"), int(head["ContentLength"])))
    return out
