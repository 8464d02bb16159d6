"""Assembly: build a Worker (and status reports) from Settings."""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

from s3flow.aws import AwsClients, bucket_surely_missing, missing_bucket_error, open_clients
from s3flow.errors import ConfigError, translate_aws_error
from s3flow.executors import processor_key
from s3flow.executors.command import check_command
from s3flow.executors.one import check_runs_on
from s3flow.jobs.runner import JobHandler
from s3flow.memory import set_mmap_threshold
from s3flow.metrics import PipelineMetrics, WorkerMetrics
from s3flow.processors import create_processor
from s3flow.processors.base import Processor, parse_options
from s3flow.processors.registry import (
    ProcessorSpecError,
    available_processors,
    default_executor_for,
    portable_spec,
    processor_class,
)
from s3flow.provisioning import Change, provision
from s3flow.routing import Route, RoutingTable
from s3flow.settings import (
    CONFIG_ENV,
    JOBS_BRIDGE,
    PipelineSettings,
    Settings,
    processing_pipeline,
)
from s3flow.sinks import open_sink
from s3flow.state.base import StateStore
from s3flow.worker.engine import PipelineRuntime, QueueRuntime, Worker, WorkerObserver

log = logging.getLogger("s3flow.app")


def _is_url(name: str) -> bool:
    return name.startswith(("https://", "http://"))


async def queue_url(sqs: Any, name_or_url: str, *, what: str) -> str:
    """Resolve a queue name to its URL (URLs pass through). ConfigError when missing."""
    if _is_url(name_or_url):
        return name_or_url
    try:
        resp = await sqs.get_queue_url(QueueName=name_or_url)
    except Exception as exc:
        err = translate_aws_error(exc, "GetQueueUrl")
        code = getattr(err, "code", "") or ""
        if "NonExistentQueue" in code or "QueueDoesNotExist" in code:
            raise ConfigError(
                f"{what} queue {name_or_url!r} does not exist; run `s3flow provision` first"
            ) from exc
        raise err from exc
    return str(resp["QueueUrl"])


async def dlq_url(sqs: Any, p: PipelineSettings, source_url: str) -> str:
    """The DLQ of a pipeline.

    The ``dlq`` setting, else the queue's redrive target, else '<queue>-dlq'.
    """
    policy = None if p.dlq else await redrive_policy(sqs, p, source_url)
    return await _dlq_of(sqs, p, policy)


async def _dlq_of(sqs: Any, p: PipelineSettings, policy: dict[str, Any] | None) -> str:
    """The DLQ of a pipeline whose source queue has redrive ``policy``."""
    if p.dlq:
        return await queue_url(sqs, p.dlq, what=f"pipeline {p.name!r} dead-letter")
    if policy is not None and "deadLetterTargetArn" in policy:
        arn = str(policy["deadLetterTargetArn"])
        return await queue_url(sqs, arn.rsplit(":", 1)[-1], what="redrive target")
    return await queue_url(sqs, p.dlq_name, what=f"pipeline {p.name!r} dead-letter")


async def redrive_policy(sqs: Any, p: PipelineSettings, source_url: str) -> dict[str, Any] | None:
    """The source queue's RedrivePolicy (None: none, or unreadable: logged)."""
    try:
        attrs = (
            await sqs.get_queue_attributes(QueueUrl=source_url, AttributeNames=["RedrivePolicy"])
        ).get("Attributes", {})
    except Exception as exc:
        what = f"pipeline {p.name!r} queue"
        raise _queue_error(exc, source_url, what, by_url=_is_url(p.queue)) from exc
    text = attrs.get("RedrivePolicy")
    if not text:
        return None
    try:
        policy = json.loads(text)
    except ValueError:
        policy = None
    if not isinstance(policy, dict):
        log.warning("queue %s has an unreadable RedrivePolicy: %s", source_url, text)
        return None
    return policy


def redrive_limit(
    p: PipelineSettings, source_url: str, policy: dict[str, Any] | None
) -> int | None:
    """The maxReceiveCount of the source queue's redrive ``policy`` (None: none), with a
    warning when it leaves the worker no room to dead-letter with the reason."""
    try:
        limit = int((policy or {})["maxReceiveCount"])
    except (KeyError, TypeError, ValueError):
        return None
    if limit <= p.max_receive_count:
        log.warning(
            "pipeline %s: queue %s moves a message to its DLQ after %d receives, no more "
            "than max_receive_count (%d): SQS takes failing files before the worker can "
            "dead-letter them with the reason; run `s3flow provision` (it sets %d)",
            p.name,
            source_url,
            limit,
            p.max_receive_count,
            p.redrive_max_receive_count,
        )
    return limit


def select_pipelines(settings: Settings, names: list[str] | None) -> list[PipelineSettings]:
    """The pipelines to run: all, or the named ones. ConfigError if none."""
    if names:
        return [settings.pipeline(n) for n in names]
    if not settings.pipelines:
        raise ConfigError(
            "no pipelines configured: add a [[pipelines]] table to the config file (see "
            f"docs/configuration.md) and give it with -c/--config or ${CONFIG_ENV} "
            "(./s3flow.toml is read when neither is given)"
        )
    return list(settings.pipelines)


async def build_runtimes(
    settings: Settings, clients: AwsClients, names: list[str] | None = None
) -> list[PipelineRuntime]:
    """Resolve queues, processors, sinks and routes of the selected pipelines."""
    out = []
    for p in select_pipelines(settings, names):
        routes, processors = _routes_of(p)
        processor = processors.get(processor_key(portable_spec(p.processor), p.options))
        url = await queue_url(clients.sqs, p.queue, what=f"pipeline {p.name!r}")
        # One read of the source queue: it exists, its DLQ and its redrive limit.
        policy = await redrive_policy(clients.sqs, p, url)
        dlq = await _dlq_of(clients.sqs, p, policy)
        given = p.dlq_name
        by_url = _is_url(given) and dlq == given
        await _check_queue(
            clients.sqs, dlq, f"pipeline {p.name!r} dead-letter queue", by_url=by_url
        )
        # A misspelt bucket would only show as every event "skipped" (not its bucket).
        if await bucket_surely_missing(clients.s3, p.bucket):
            raise missing_bucket_error(p.bucket, settings.aws, f"pipeline {p.name!r} bucket")
        sink = open_sink(p.output, clients.s3)
        try:
            await sink.check()
        except ConfigError as exc:
            raise ConfigError(f"pipeline {p.name!r}: {exc}") from exc
        out.append(
            PipelineRuntime(
                settings=p,
                queue_url=url,
                dlq_url=dlq,
                processor=processor,
                sink=sink,
                route=Route.from_settings(p),
                routes=routes,
                processors=processors,
                redrive_limit=redrive_limit(p, url, policy),
            )
        )
    return out


#: Executors that run the processor on this machine, in another process: the worker builds
#: such a route's processor once at start (and drops it) so that what its ``__init__``
#: checks (a font file, a codec) fails the start, not every object in the child.
_LOCAL_EXECUTORS = ("pool", "subprocess")
#: Executors that run the processor in a container image (only its options are checked).
_CONTAINER_EXECUTORS = ("ecs", "batch")


def _setting_of(exc: ConfigError) -> str:
    """Which setting a processor's ConfigError is about: its name (unknown, malformed,
    not importable, not a processor), or its options."""
    return "processor" if isinstance(exc, ProcessorSpecError) else "[pipelines.options]"


def check_options(settings: Settings) -> None:
    """Check every processor's options against its options model, building nothing.

    What ``s3flow provision`` and its ``--export`` run, so that an option the worker
    refuses at start (a typo) stops them too: exported, it would reach every task (and
    the template's permissions, which read some options) before a worker refused it.
    A processor this machine cannot import (a module only in the container image) is
    left to the worker; the export warns about it.
    """
    for p in settings.pipelines:
        try:
            table = RoutingTable.from_settings(p, default_executor_for)
        except ConfigError as exc:
            raise ConfigError(f"pipeline {p.name!r}: {exc}") from exc
        for rule in table.rules:
            _check_spec(rule.processor, rule.options, f"pipeline {p.name!r}, route {rule.name!r}")
    for t in settings.templates:
        for i, step in enumerate(t.steps, start=1):
            _check_spec(step.processor, step.options, f"template {t.name!r}, step {i}")


def _check_spec(spec: str, options: Mapping[str, Any], where: str) -> None:
    """:func:`check_options` for one processor setting. An unknown name that is a known
    one but for case and ``_`` is a typo (``line_count``); any other may be a plugin
    installed only where the worker runs: left to it with a warning, as is a module
    this machine cannot import."""
    try:
        cls = processor_class(spec)
    except ConfigError:
        return
    if cls is None:
        known = available_processors()
        spelt = spec.lower().replace("_", "-")
        if spelt in known:  # line_count, Line-Count: surely that one
            raise ConfigError(
                f"{where}: unknown processor {spec!r}: did you mean {spelt!r}? "
                f"(available: {', '.join(known)}, or 'module:attribute')"
            )
        near = difflib.get_close_matches(spec, known, n=1, cutoff=0.75)
        log.warning(
            "%s: processor %r is not installed here%s; the worker must have it",
            where,
            spec,
            f" (did you mean {near[0]!r}?)" if near else "",
        )
        return
    try:
        _check_options(spec, options)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _check_options(spec: str, options: Mapping[str, Any]) -> bool:
    """Check ``options`` against processor ``spec``'s options model, building nothing;
    False when it has none (only building it checks them)."""
    model = getattr(processor_class(spec), "options_model", None)
    if model is None:
        return False
    parse_options(spec, model, dict(options))
    return True


def _routes_of(p: PipelineSettings) -> tuple[RoutingTable, dict[str, Processor]]:
    """The pipeline's routing table, checked (every processor exists, takes its options
    and can run on its executor; a processor run on this machine is built once, and the
    ``subprocess`` command can be started), and the instances its inline routes use.

    The pipeline's own processor is among them when a route runs it on this machine;
    a pipeline whose objects all run in containers (ECS, Batch) does not build it here:
    its files (a font) may exist only in the image.
    """
    try:
        table = RoutingTable.from_settings(p, default_executor_for)
    except ConfigError as exc:
        raise ConfigError(f"pipeline {p.name!r}: {exc}") from exc
    main_key = processor_key(portable_spec(p.processor), p.options)
    processors: dict[str, Processor] = {}
    if any(
        processor_key(portable_spec(r.processor), r.options) == main_key
        and r.executor not in _CONTAINER_EXECUTORS
        for r in table.rules
    ):
        try:
            processors[main_key] = create_processor(p.processor, p.options)
        except ConfigError as exc:  # which pipeline, when several use one processor
            raise ConfigError(f"pipeline {p.name!r} ({_setting_of(exc)}): {exc}") from exc
    built: set[str] = set(processors)
    for rule in table.rules:
        where = f"pipeline {p.name!r}, route {rule.name!r}"
        key = processor_key(portable_spec(rule.processor), rule.options)
        try:
            check_runs_on(rule.processor, rule.executor)
            if rule.executor == "inline":
                if key not in processors:
                    processors[key] = create_processor(rule.processor, dict(rule.options))
                continue
            if rule.executor == "subprocess":
                check_command(p.executors.subprocess)
            if rule.executor in _LOCAL_EXECUTORS:
                # Built here too, to validate: the child builds it again from the same
                # options on this machine, so what fails here would fail every object.
                if key not in built:
                    create_processor(rule.processor, dict(rule.options))
                    built.add(key)
                continue
            # Runs in a container (ECS, Batch): its files and environment are the image's,
            # not this machine's, so only its options are checked here.
            if not _check_options(rule.processor, rule.options) and key not in processors:
                create_processor(rule.processor, dict(rule.options))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return table, processors


def _queue_error(exc: Exception, url: str, what: str, *, by_url: bool) -> ConfigError:
    """The error of a GetQueueAttributes of ``url`` (``what``: whose queue it is;
    ``by_url``: the config gives the queue by this URL, not by a name)."""
    err = translate_aws_error(exc, "GetQueueAttributes")
    code = getattr(err, "code", "") or ""
    if "NonExistentQueue" in code or "QueueDoesNotExist" in code:
        hint = MISSING_QUEUE_URL_HINT if by_url else "run `s3flow provision` first"
        return ConfigError(f"{what} {url} does not exist; {hint}")
    return ConfigError(f"{what} {url} cannot be read: {err}")


#: What to do about a queue given by a URL that does not exist.
MISSING_QUEUE_URL_HINT = (
    "check the URL's account, region and name (the endpoint and region s3flow uses must "
    "be the queue's), or give the queue by its name and run `s3flow provision`, which "
    "creates queues given by name"
)


async def _check_queue(sqs: Any, url: str, what: str, *, by_url: bool = False) -> None:
    """Start-up check: the queue exists and we may read its attributes."""
    try:
        await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    except Exception as exc:
        raise _queue_error(exc, url, what, by_url=by_url) from exc


def pool_size(settings: Settings) -> int:
    """HTTP connections per client: enough for every slot plus pollers and acks."""
    if settings.aws.max_pool_connections:
        return settings.aws.max_pool_connections
    return sum(p.concurrency for p in settings.pipelines) + 8 * max(1, len(settings.pipelines))


async def run_worker(
    settings: Settings,
    *,
    burst: bool = False,
    pipelines: list[str] | None = None,
    observer: WorkerObserver | None = None,
    handle_signals: bool = False,
) -> WorkerMetrics:
    """Build and run a worker until it is stopped (or drained, with ``burst``).

    From a script of your own, call it under ``if __name__ == "__main__":``: the
    ``pool`` executor spawns its children, and each imports the script again (as
    ``__mp_main__``), so an unguarded call would start a second worker in every child.
    Called in a pool child, it raises RuntimeError saying so.
    """
    from s3flow.executors.pool import in_pool_child  # (only here: a worker may use no pool)

    if in_pool_child():
        raise RuntimeError(
            "run_worker() was called in a spawned child process (a pool executor's, or "
            "compaction's or csv-to-kafka ranges' workers): the script that "
            "starts the worker runs again in each child (they are spawned); put the call "
            'under `if __name__ == "__main__":`'
        )
    set_mmap_threshold(settings.worker.malloc_mmap_threshold_bytes)
    async with (
        open_clients(settings.aws, pool=pool_size(settings)) as clients,
        open_store(settings, check="all") as store,
    ):
        runtimes = await build_runtimes(settings, clients, pipelines)
        queues: list[QueueRuntime] = []
        if settings.jobs is not None and (not pipelines or JOBS_BRIDGE in pipelines):
            queues.append(await build_job_queue(settings, clients, store))
        worker = Worker(
            clients,
            runtimes,
            settings.worker,
            observer=observer,
            burst=burst,
            store=store,
            claim_ttl_s=settings.state.claim_ttl_s,
            queues=queues,
        )
        ws = settings.worker
        if ws.metrics_port is None:
            return await worker.run(handle_signals=handle_signals)
        # Only here: the exporter brings prometheus_client, which a worker without
        # metrics need not load.
        from s3flow.ops.exporter import MetricsServer, QueueRef

        refs = [QueueRef(rt.settings.name, rt.queue_url, rt.dlq_url) for rt in runtimes]
        refs += [QueueRef(q.settings.name, q.queue_url, q.dlq_url) for q in queues]
        async with MetricsServer(
            worker.metrics,
            sqs=clients.sqs,
            queues=refs,
            store=store,
            host=ws.metrics_host,
            port=ws.metrics_port,
            sample_interval_s=ws.metrics_sample_s,
        ):
            return await worker.run(handle_signals=handle_signals)


def check_templates(settings: Settings) -> None:
    """Build every job template step's processor once: a ConfigError (an unknown
    processor, a bad option) names the template and the step, at start rather than
    on the first job."""
    for t in settings.templates:
        for i, step in enumerate(t.steps, start=1):
            where = f"template {t.name!r}, step {i} ({step.processor})"
            try:
                processor = create_processor(step.processor, step.options)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from exc
            if processor is None:
                raise ConfigError(f"{where}: unknown processor {step.processor!r}")


async def build_job_queue(
    settings: Settings, clients: AwsClients, store: StateStore | None
) -> QueueRuntime:
    """The job worker on the processing FIFO queue (whenever ``[jobs]`` is set)."""
    assert settings.jobs is not None
    if store is None:
        raise ConfigError("upload jobs need a state store: state.url must not be 'none'")
    jobs = settings.jobs
    check_templates(settings)
    p = processing_pipeline(jobs)
    url = await queue_url(clients.sqs, p.queue, what="upload jobs' processing")
    dlq = await queue_url(clients.sqs, p.dlq_name, what="upload jobs' processing dead-letter")
    progress = await queue_url(
        clients.sqs, jobs.resource("progress.fifo"), what="upload jobs' progress"
    )
    for what, u in (("queue", url), ("dead-letter queue", dlq), ("progress queue", progress)):
        await _check_queue(clients.sqs, u, f"upload jobs' {what}")
    metrics = PipelineMetrics()
    handler = JobHandler(
        settings,
        s3=clients.s3,
        sqs=clients.sqs,
        store=store,
        progress_queue_url=progress,
        worker_id=settings.worker.worker_id,
        metrics=metrics,
        processing_queue_url=url,
    )
    return QueueRuntime(settings=p, queue_url=url, dlq_url=dlq, handler=handler, metrics=metrics)


@asynccontextmanager
async def open_store(
    settings: Settings,
    *,
    prune: bool = True,
    check: Literal["all", "jobs"] | None = None,
    read_only: bool = False,
) -> AsyncIterator[StateStore | None]:
    """The configured state store (None when ``state.url = "none"``), opened and closed.

    Records expire after ``[state] retention_days``; with ``prune`` a SQLite store
    prunes them in the background while it is open (see
    :func:`s3flow.state.open_state_store`). With ``check="all"`` (a worker's start) a
    DynamoDB store's tables are checked first: missing ones are a ConfigError that
    says to run ``s3flow provision``, not an error on every message (opening a SQLite
    store creates its file and schema, or fails with the reason). ``check="jobs"``
    checks only the upload jobs' tables (the web app's start: its role reads no other).
    ``read_only`` (a command that only reads): an existing SQLite file is opened
    read-only (see :func:`s3flow.state.open_state_store`).
    """
    if settings.state.url == "none":
        yield None
        return
    from s3flow.state import DynamoStateStore, open_state_store

    async with open_state_store(
        settings.state.url,
        settings.aws,
        retention_days=settings.state.retention_days,
        prune=prune,
        read_only=read_only,
    ) as store:
        if isinstance(store, DynamoStateStore) and check is not None:
            jobs = (store.jobs_table, store.job_events_table)
            await store.check_tables(None if check == "all" else jobs)
        yield store


async def provision_all(settings: Settings, *, dry_run: bool = False) -> list[Change]:
    """Provision queues, buckets and notifications, plus the DynamoDB state tables if used.

    The tables get their indexes and TTL (``purge_at``: how records expire).
    """
    changes = await provision(settings, dry_run=dry_run)
    url = settings.state.url
    if url.startswith("dynamodb://"):
        from s3flow.state.dynamodb import DynamoStateStore

        store = DynamoStateStore(url[len("dynamodb://") :], settings.aws)
        if dry_run:
            changes.append(Change("table", f"{store.table_prefix}-*", "would create or verify"))
        else:
            for table, action in await store.ensure_tables():
                changes.append(Change("table", table, action))
            for table, action in await store.ensure_ttl():
                changes.append(Change("table TTL", table, action))
    return changes
