"""``s3flow run PROCESSOR [s3://bucket/key] --output URI``: any processor on one object.

The one-object contract the ``subprocess`` executor and containers (``ecs``, ``batch``)
use (:mod:`s3flow.executors.contract`): the object and output come from the arguments
or from ``SOURCE_BUCKET`` / ``OBJECT_KEY`` / ``DEST_BUCKET`` (``DEST_PREFIX``,
``S3FLOW_OUTPUT``), the options from ``--option NAME=VALUE`` / ``S3FLOW_OPTIONS``;
``--if-match`` / ``OBJECT_IF_MATCH`` makes it process only the upload of that eTag
(another reports ``ObjectChangedError``, disposition ``skip``: superseded). It
prints one JSON result line on stdout (logs go to stderr), writes the same document to
``$S3FLOW_RESULT_URI`` when set, and exits 0 done, 2 permanent (bad input, not worth
retrying), 1 retryable. SIGTERM/SIGINT cancel the run (exit 1).

A pipeline's own ``s3flow run`` commands (``csv-to-kafka``, ``compact``) keep their
names: :class:`~s3flow.cli.common.RunGroup` only falls back to this command for a name
that is not one of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import replace
from typing import Annotated, Any

import typer

from s3flow.cli.common import ConfigOpt, RunGroup, cancel_on_signals, settings_from
from s3flow.errors import (
    ConfigError,
    ObjectChangedError,
    ObjectMissingError,
    S3flowError,
    superseded_text,
    translate_aws_error,
)
from s3flow.events import ObjectEvent
from s3flow.executors.base import (
    ObjectJob,
    dump_doc,
    error_doc,
    exit_code_for,
    result_doc,
)
from s3flow.executors.contract import (
    MAX_UNCOMPRESSED,
    OBJECT_IF_MATCH,
    OBJECT_KEY,
    OBJECT_VERSION_ID,
    OPTIONS,
    PIPELINE,
    RESULT_URI,
    ROUTE,
    SOURCE_BUCKET,
    WORKER_ID,
    output_from_env,
)
from s3flow.executors.one import run_isolated
from s3flow.local.endpoint import die_with_parent
from s3flow.processors.registry import known_processor
from s3flow.settings import Settings
from s3flow.settings.base import bucket_name_problem
from s3flow.settings.pipelines import output_problem
from s3flow.sinks.s3 import parse_s3_uri, split_s3_url

generic_app = typer.Typer(add_completion=False)


class RunCancelledError(S3flowError):
    """The run was cancelled (SIGTERM/SIGINT): retryable."""


def _options(raw_json: str | None, flags: list[str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if raw_json:
        try:
            loaded = json.loads(raw_json)
        except ValueError as exc:
            raise ConfigError(f"--options / ${OPTIONS} is not JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"--options / ${OPTIONS} must be a JSON object")
        options.update(loaded)
    for item in flags or []:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--option wants NAME=VALUE, got {item!r}")
        try:
            options[name.strip()] = json.loads(text)
        except ValueError:
            options[name.strip()] = text
    return options


def _source(source: str | None) -> tuple[str, str]:
    if source:
        bucket, key = parse_s3_uri(source)
        where = f"in {source!r}"
    else:
        env_bucket, env_key = os.environ.get(SOURCE_BUCKET), os.environ.get(OBJECT_KEY)
        if not env_bucket or not env_key:
            raise ConfigError(
                f"no object: give s3://bucket/key or set ${SOURCE_BUCKET} and ${OBJECT_KEY}"
            )
        bucket, key, where = env_bucket, env_key, f"in ${SOURCE_BUCKET}"
    problem = bucket_name_problem(bucket)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return bucket, key


async def _event(
    s3: Any, bucket: str, key: str, version_id: str | None, if_match: str | None = None
) -> ObjectEvent:
    """The object's event, from a HEAD (size, eTag, version).

    ``if_match``: the upload the run is for; the HEAD finding another raises
    :class:`~s3flow.errors.ObjectChangedError`, and the event's reads are conditional on
    it (an overwrite between the HEAD and the read is found too).
    """
    args: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version_id:
        args["VersionId"] = version_id
    try:
        head = await s3.head_object(**args)
    except Exception as exc:
        error = translate_aws_error(exc, f"HeadObject s3://{bucket}/{key}")
        from s3flow.aws import bucket_surely_missing  # imported late: --help stays quick

        if isinstance(error, ObjectMissingError) and await bucket_surely_missing(s3, bucket):
            # A HEAD's 404 has no body: it does not say whether the key or the bucket is
            # missing, and "object missing" (disposition skip: nothing to do) sent people
            # looking for a key. A bucket that is not there is a mistake to correct.
            error = ConfigError(
                f"s3://{bucket}/{key}: the bucket {bucket!r} does not exist (HeadObject "
                "answered 404): check the bucket's name, and the endpoint and region"
            )
        raise error from exc
    version = head.get("VersionId")
    etag = str(head.get("ETag") or "").strip('"') or None
    if if_match and etag and etag != if_match.strip('"'):
        raise ObjectChangedError(superseded_text(if_match))
    return ObjectEvent(
        bucket=bucket,
        key=key,
        size=int(head.get("ContentLength") or 0),
        etag=etag,
        version_id=version if version and version != "null" else None,
        if_match=if_match.strip('"') if if_match else None,
    )


async def _write_result(s3: Any, uri: str, doc: dict[str, Any]) -> None:
    bucket, key = split_s3_url(uri)
    try:
        await s3.put_object(
            Bucket=bucket, Key=key, Body=dump_doc(doc).encode(), ContentType="application/json"
        )
    except Exception as exc:
        raise translate_aws_error(exc, f"PutObject {uri}") from exc


async def run_one(settings: Settings, job: ObjectJob, result_uri: str | None) -> dict[str, Any]:
    """Run ``job`` (its event is completed from a HEAD); return the result document."""
    from s3flow.aws import open_clients

    started = time.monotonic()
    async with open_clients(settings.aws, pool=4) as clients:
        try:
            event = await _event(
                clients.s3,
                job.event.bucket,
                job.event.key,
                job.event.version_id,
                job.event.if_match,
            )
            job = replace(job, event=event)
            result = await run_isolated(job, s3=clients.s3, executor="subprocess")
            doc = result_doc(
                result,
                processor=job.processor,
                source=job.source,
                seconds=time.monotonic() - started,
            )
        except asyncio.CancelledError:
            doc = error_doc(
                RunCancelledError("cancelled by a signal before it finished"),
                processor=job.processor,
                source=job.source,
            )
        except S3flowError as err:
            doc = error_doc(err, processor=job.processor, source=job.source)
        doc["route"] = job.route
        if result_uri:
            await asyncio.shield(_write_result(clients.s3, result_uri, doc))
    return doc


@generic_app.command()
def run_processor(
    ctx: typer.Context,
    source: Annotated[
        str | None,
        typer.Argument(
            help=f"The object, s3://bucket/key (default: ${SOURCE_BUCKET}, ${OBJECT_KEY})."
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            help="Where outputs go: s3://bucket/prefix/ or a directory (default: "
            "$S3FLOW_OUTPUT, else s3://$DEST_BUCKET/$DEST_PREFIX).",
            show_default=False,
        ),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="A processor option as NAME=VALUE (repeatable)."),
    ] = None,
    options_json: Annotated[
        str | None,
        typer.Option("--options", envvar=OPTIONS, help="Processor options as a JSON object."),
    ] = None,
    version_id: Annotated[
        str | None, typer.Option("--version-id", envvar=OBJECT_VERSION_ID, help="Object version.")
    ] = None,
    if_match: Annotated[
        str | None,
        typer.Option(
            "--if-match",
            envvar=OBJECT_IF_MATCH,
            help="Only the upload of this eTag: another object there now is reported as "
            "ObjectChangedError (superseded, exit 2), nothing is processed.",
        ),
    ] = None,
    pipeline: Annotated[
        str, typer.Option("--pipeline-name", envvar=PIPELINE, help="Pipeline name (context).")
    ] = "run",
    result_uri: Annotated[
        str | None,
        typer.Option(
            "--result-uri", envvar=RESULT_URI, help="Also write the result document here (s3://)."
        ),
    ] = None,
    max_uncompressed_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-uncompressed-bytes",
            envvar=MAX_UNCOMPRESSED,
            help="Largest decompressed size (default: the pipeline default, 4 GiB).",
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Run a processor (the command name) on one object; one JSON result line on stdout.

    Exit 0 done, 2 permanent error (bad input: retrying will not help), 1 retryable.
    """
    die_with_parent()  # started by a worker's subprocess executor: never outlive it
    processor = ctx.info_name or ""
    try:
        settings = settings_from(config)
        known_processor(processor)  # a misspelt name is the error, whatever the object
        bucket, key = _source(source)
        out = output or output_from_env(os.environ)
        if not out:
            raise ConfigError("no output: give --output or set $S3FLOW_OUTPUT or $DEST_BUCKET")
        problem = output_problem(out)
        if problem:
            raise ConfigError(f"output: {problem}")
        if result_uri is not None and not result_uri.startswith("s3://"):
            raise ConfigError(f"--result-uri must be s3://bucket/key, got {result_uri!r}")
        job = ObjectJob(
            processor=processor,
            options=_options(options_json, option),
            event=ObjectEvent(
                bucket=bucket, key=key, version_id=version_id or None, if_match=if_match or None
            ),
            output=out,
            aws=settings.aws,
            pipeline=pipeline,
            route=os.environ.get(ROUTE, "default"),
            worker_id=os.environ.get(WORKER_ID) or f"run-{os.uname().nodename}-{os.getpid()}",
            max_uncompressed_bytes=max_uncompressed_bytes or 4 * 1024**3,
        )
        # SIGTERM/SIGINT cancel the run; it still reports.
        doc = asyncio.run(cancel_on_signals(run_one(settings, job, result_uri)))
    except S3flowError as exc:
        doc = error_doc(exc, processor=processor, source=source or "")
        print(dump_doc(doc), flush=True)
        raise typer.Exit(exit_code_for(exc)) from exc
    print(dump_doc(doc), flush=True)
    if doc["status"] == "done":
        raise typer.Exit(0)
    raise typer.Exit(2 if doc.get("disposition") != "retryable" else 1)


RunGroup.generic = typer.main.get_command(generic_app)
