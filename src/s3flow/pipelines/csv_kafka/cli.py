"""CLI commands of the ``csv-to-kafka`` pipeline (attached through the processor registry).

``s3flow run csv-to-kafka s3://bucket/key.csv --topic T`` runs one object to completion
(batch mode, no queue): exit 0 when every row is committed, non-zero with the reason
otherwise. Rerunning after a crash resumes from the object's committed checkpoint.
"""

import asyncio
import json
import time
from typing import Annotated, Any

import typer

from s3flow.errors import ConfigError
from s3flow.pipelines.csv_kafka.options import CsvKafkaOptions
from s3flow.sinks.s3 import parse_s3_uri

#: Options whose value is text (``str`` or ``str | None``): an ``--option`` value is
#: taken as it is for them, as JSON for the others (numbers, booleans, lists).
_TEXT_OPTIONS = {
    name: field.annotation in (str, str | None)
    for name, field in CsvKafkaOptions.model_fields.items()
}


def _parse_option(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--option wants NAME=VALUE, got {text!r}")
    name = name.strip()
    if _TEXT_OPTIONS.get(name):
        return name, raw  # a column or topic named 2024 stays text
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


def build_options(
    base: dict[str, Any], flags: dict[str, Any], extra: list[str] | None
) -> dict[str, Any]:
    """The pipeline options: a configured pipeline's, then ``--option``s, then flags."""
    options = dict(base)
    for item in extra or []:
        name, value = _parse_option(item)
        options[name] = value
    options.update({k: v for k, v in flags.items() if v is not None})
    return options


async def run_batch(
    settings: Any, options: dict[str, Any], bucket: str, key: str
) -> dict[str, Any]:
    """Produce one object's rows exactly once; return a summary (raises S3flowError)."""
    from s3flow.app import open_store
    from s3flow.aws import open_clients
    from s3flow.errors import translate_aws_error
    from s3flow.memory import set_mmap_threshold
    from s3flow.pipelines.csv_kafka.checkpoint import ObjectRef
    from s3flow.pipelines.csv_kafka.processor import CsvToKafkaProcessor
    from s3flow.pipelines.csv_kafka.ranges import run_csv_object

    set_mmap_threshold(settings.worker.malloc_mmap_threshold_bytes)
    processor = CsvToKafkaProcessor(options)
    if processor.opts.ranges > 1:
        from s3flow.pipelines.csv_kafka.procs import warm_up

        warm_up()  # the range processes' forkserver imports while S3 and Kafka are set up
    started = time.monotonic()
    # The topics are created (a Kafka round trip, in a thread) while the S3 client is
    # built (loading botocore's models: CPU) and the object's head is read.
    topics = asyncio.ensure_future(processor.ensure_topics())
    try:
        async with open_clients(settings.aws) as clients, open_store(settings) as store:
            try:
                head = await clients.s3.head_object(Bucket=bucket, Key=key)
            except Exception as exc:
                raise translate_aws_error(exc, f"HeadObject s3://{bucket}/{key}") from exc
            version_id = head.get("VersionId")
            if version_id == "null":
                version_id = None
            ref = ObjectRef.of(bucket, key, version_id, head.get("ETag"))
            await topics
            report = await run_csv_object(
                processor.opts,
                ref,
                clients.s3,
                version_id,
                head.get("ContentLength"),
                executor=processor.executor,
                store=store,
            )
    finally:
        if not topics.done():
            topics.cancel()  # the head failed first
        elif not topics.cancelled():
            topics.exception()  # retrieved: raised by ``await topics`` above, or moot
        await processor.stop()
    ckpt = report.checkpoint
    seconds = time.monotonic() - started
    new_rows = 0 if report.already_done else ckpt.sent - report.resumed_sent
    return {
        "object": ref.name,
        "topic": processor.opts.topic,
        "rows": ckpt.sent,
        "bad_rows": ckpt.bad,
        "records": ckpt.row,
        "transactions": ckpt.transactions,
        "already_done": report.already_done,
        "resumed_from_row": report.resumed_from_row,
        "attempts": report.attempts,
        "seconds": round(seconds, 3),
        "rows_per_s": round(new_rows / seconds, 1) if seconds > 0 else None,
        "bytes_read": report.bytes_read,
        "compressed_bytes": report.compressed_bytes,
        "commit_seconds": round(report.commit_seconds, 3),
    }


def register(app: typer.Typer, run_app: typer.Typer) -> None:
    """Attach this pipeline's commands to the ``s3flow`` app and its ``run`` group."""
    from s3flow.cli.common import (
        ConfigOpt,
        cancel_on_signals,
        console,
        err_console,
        fail,
        settings_from,
    )
    from s3flow.errors import S3flowError
    from s3flow.executors.base import exit_code_for
    from s3flow.metrics import peak_rss_mb

    @run_app.command("csv-to-kafka")
    def csv_to_kafka(
        source: Annotated[str, typer.Argument(help="The CSV object: s3://bucket/key.")],
        topic: Annotated[
            str | None,
            typer.Option(
                "--topic", "-t", help="Kafka topic (required unless the --pipeline gives one)."
            ),
        ] = None,
        config: ConfigOpt = None,
        pipeline: Annotated[
            str | None,
            typer.Option("--pipeline", "-p", help="Start from this configured pipeline's options."),
        ] = None,
        bootstrap: Annotated[
            str | None,
            typer.Option("--bootstrap", envvar="KAFKA_BOOTSTRAP", help="Kafka bootstrap servers."),
        ] = None,
        delimiter: Annotated[str | None, typer.Option(help="Field delimiter ('tab' ok).")] = None,
        header: Annotated[
            bool | None, typer.Option("--header/--no-header", help="First row = column names.")
        ] = None,
        key_column: Annotated[str | None, typer.Option(help="Column used as message key.")] = None,
        fmt: Annotated[str | None, typer.Option("--format", help="json or raw.")] = None,
        bad_rows: Annotated[str | None, typer.Option(help="dead-letter, skip or fail.")] = None,
        checkpoint_rows: Annotated[
            int | None,
            typer.Option(
                help="Rows per transaction/checkpoint (10000); at least one ~512 KiB block."
            ),
        ] = None,
        compression: Annotated[
            str | None, typer.Option(help="lz4, gzip, zstd, snappy, none.")
        ] = None,
        option: Annotated[
            list[str] | None,
            typer.Option("--option", "-o", help="Any pipeline option as NAME=VALUE (repeatable)."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    ) -> None:
        """Stream one CSV object into a Kafka topic, exactly once; rerun to resume after a crash.

        Exit 0 when every row and the final checkpoint are committed; with the reason, 1
        when running it again may succeed (Kafka unreachable beyond retry_timeout_s), 2
        when it will not (a bad row under --bad-rows fail, a missing object, a bad
        option...); 130 when interrupted.
        """
        try:
            settings = settings_from(config)
            bucket, key = parse_s3_uri(source)
            base: dict[str, Any] = {}
            if pipeline:
                p = settings.pipeline(pipeline)
                if p.processor != "csv-to-kafka":
                    raise ConfigError(f"pipeline {pipeline!r} is not a csv-to-kafka pipeline")
                base = dict(p.options)
            options = build_options(
                base,
                {
                    "topic": topic,
                    "bootstrap_servers": bootstrap,
                    "delimiter": delimiter,
                    "header": header,
                    "key_column": key_column,
                    "format": fmt,
                    "bad_rows": bad_rows,
                    "checkpoint_rows": checkpoint_rows,
                    "compression": compression,
                },
                option,
            )
            if "topic" not in options:
                raise ConfigError("csv-to-kafka: --topic is required")
            # SIGTERM/SIGINT cancel the job (its open transaction is aborted).
            summary = asyncio.run(cancel_on_signals(run_batch(settings, options, bucket, key)))
        except S3flowError as exc:
            fail(exc)  # prints the reason
            # as every `s3flow run`: 1 retryable (run it again), 2 retrying will not fix it
            raise typer.Exit(exit_code_for(exc)) from exc
        except asyncio.CancelledError:
            err_console.print("interrupted: rerun the same command to resume", highlight=False)
            raise typer.Exit(130) from None
        summary["peak_rss_mb"] = peak_rss_mb()
        if as_json:
            print(json.dumps(summary))
            return
        state = "already complete" if summary["already_done"] else "done"
        console.print(
            f"{source} -> {summary['topic']}: {state}; {summary['rows']} rows, "
            f"{summary['bad_rows']} bad, {summary['transactions']} transactions, "
            f"{summary['seconds']}s, peak RSS {summary['peak_rss_mb']} MB",
            highlight=False,
        )
