"""What the ``ecs`` and ``batch`` executors share: launch, watch, settle by the exit.

A run starts one container with the object in its environment (the one-object
contract, :mod:`s3flow.executors.contract`) and its command ``s3flow run PROCESSOR
s3://bucket/key --output URI``. The worker then watches it: one batched Describe call
per ``poll_interval_s`` for every task/job in flight (:class:`Watcher`), while the
message's lease keeps heartbeating as for any other executor. When it has stopped:

* the run's result document (``S3FLOW_RESULT_URI``, written by ``s3flow run``) decides
  when present: ``done`` gives the Result (outputs, counters), ``error`` the error as
  the run classified it;
* else the exit code: 2 permanent, anything else (or none: never started, killed)
  retryable; 0 without a document is retryable too (the run did not say what it wrote).

A cancelled run (worker shutdown) stops its task/job (unless ``stop_on_shutdown`` is
false: then it is left running and the released message starts another). A run still
going at the job's ``timeout_s`` (the pipeline's ``job_timeout_s``) is stopped whatever
``stop_on_shutdown`` says: its message is retried, and a run left going would write
beside the next one. The ARN goes
into the Result's detail (so the file's history names it) and into every error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from s3flow.aws import async_client
from s3flow.closing import cancel_and_wait
from s3flow.errors import (
    AwsPermanentError,
    ExecutorUnavailableError,
    RetryableError,
    S3flowError,
    translate_aws_error,
)
from s3flow.executors.base import (
    ObjectJob,
    Progress,
    error_for_exit,
    error_from_doc,
    job_timed_out,
    result_from_doc,
)
from s3flow.executors.contract import job_environment, run_arguments
from s3flow.processors.base import Result
from s3flow.settings import (
    AwsSettings,
    BatchExecutorSettings,
    EcsExecutorSettings,
    results_prefix,
)
from s3flow.sinks.s3 import split_s3_url

log = logging.getLogger("s3flow.executors")

#: Describe calls in a row that may fail before the runs waiting on them fail.
_MAX_DESCRIBE_FAILURES = 5
#: Ticks a task/job may be missing from Describe answers before its run fails.
_MAX_MISSING = 5

Describe = Callable[[list[str]], Awaitable[dict[str, dict[str, Any]]]]


@dataclass(eq=False)
class Watcher:
    """Waits for many tasks/jobs at once: one Describe call per tick per ``batch`` ids."""

    describe: Describe
    is_final: Callable[[Mapping[str, Any]], bool]
    _: KW_ONLY
    interval_s: float
    what: str
    batch: int = 100
    describe_calls: int = field(default=0, init=False)
    _waiting: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict, init=False)
    _missing: dict[str, int] = field(default_factory=dict, init=False)
    _failures: int = field(default=0, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def wait(self, ident: str) -> dict[str, Any]:
        """The description of ``ident`` once it is final."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = fut
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"watch:{self.what}")
        try:
            return await fut
        finally:
            self._waiting.pop(ident, None)
            self._missing.pop(ident, None)

    async def _run(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(self.interval_s)
                await self.tick()
        finally:
            self._task = None

    async def tick(self) -> None:
        """One round of Describe calls (public for tests)."""
        ids = list(self._waiting)
        for start in range(0, len(ids), self.batch):
            chunk = ids[start : start + self.batch]
            try:
                self.describe_calls += 1
                found = await self.describe(chunk)
            except Exception as exc:
                err = exc if isinstance(exc, S3flowError) else RetryableError(str(exc))
                self._failures += 1
                log.warning("describing %d %s(s) failed: %s", len(chunk), self.what, err)
                if self._failures >= _MAX_DESCRIBE_FAILURES:
                    for ident in chunk:
                        self._fail(ident, RetryableError(f"cannot watch {self.what}: {err}"))
                continue
            self._failures = 0
            for ident in chunk:
                desc = found.get(ident)
                if desc is None:
                    self._missing[ident] = self._missing.get(ident, 0) + 1
                    if self._missing[ident] >= _MAX_MISSING:
                        self._fail(ident, RetryableError(f"{self.what} {ident} is not found"))
                elif self.is_final(desc):
                    fut = self._waiting.get(ident)
                    if fut is not None and not fut.done():
                        fut.set_result(desc)

    def _fail(self, ident: str, err: S3flowError) -> None:
        fut = self._waiting.get(ident)
        if fut is not None and not fut.done():
            fut.set_exception(err)

    async def close(self) -> None:
        """Stop watching (runs still waiting are cancelled by their callers)."""
        await cancel_and_wait(self._task)


def launch_error(exc: BaseException, operation: str) -> S3flowError:
    """A RunTask/SubmitJob failure: what retries will not fix is the operator's problem
    (a missing cluster/queue/definition, access denied) and counts no failure."""
    err = translate_aws_error(exc, operation)
    if isinstance(err, AwsPermanentError):
        return ExecutorUnavailableError(str(err))
    return err


def container_overrides(env: Mapping[str, str], command: list[str] | None) -> dict[str, Any]:
    """A container's overrides (RunTask, SubmitJob): its environment and, when set, command."""
    overrides: dict[str, Any] = {
        "environment": [{"name": k, "value": v} for k, v in sorted(env.items())]
    }
    if command is not None:
        overrides["command"] = command
    return overrides


class ServiceClient:
    """One AWS service's client: opened on first use (once, under a lock), closed by close()."""

    def __init__(self, aws: AwsSettings, service: str) -> None:
        self._aws = aws
        self._service = service
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        """The client (opened on the first call)."""
        async with self._lock:
            if self._client is None:
                self._client = await self._stack.enter_async_context(
                    async_client(self._aws, self._service)
                )
        return self._client

    async def close(self) -> None:
        """Close the client (a later :meth:`get` opens a new one)."""
        await self._stack.aclose()
        self._client = None


class ContainerExecutor:
    """Base of ``ecs`` and ``batch``: one container run per object, watched until it ends."""

    name = "container"
    what = "container"
    service = ""

    def __init__(
        self,
        settings: EcsExecutorSettings | BatchExecutorSettings,
        *,
        aws: AwsSettings,
        s3: Any,
        output: str,
        pipeline: str,
        job_timeout_s: int | None = None,
    ) -> None:
        self.settings = settings
        self.job_timeout_s = job_timeout_s
        self._s3 = s3
        self._service_client = ServiceClient(aws, self.service)
        self.results = results_prefix(settings, output, pipeline)
        self.watcher = Watcher(
            self._describe_ids,
            self._is_final,
            interval_s=settings.poll_interval_s,
            what=self.what,
        )
        #: Stops of runs whose launch outlasted their job_timeout_s (awaited on close).
        self._stopping: set[asyncio.Future[None]] = set()

    # --- hooks of ECS / Batch ------------------------------------------------------

    async def _launch(
        self, client: Any, job: ObjectJob, env: dict[str, str], command: list[str] | None
    ) -> tuple[str, dict[str, Any]]:
        """Start the container; return its id and what the history records (ARN)."""
        raise NotImplementedError

    async def _describe(self, client: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def _is_final(self, desc: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def exit_of(self, desc: Mapping[str, Any]) -> tuple[int | None, str]:
        """(exit code or None, reason) of a final description."""
        raise NotImplementedError

    async def _stop(self, client: Any, ident: str, reason: str) -> None:
        raise NotImplementedError

    # --- the run ---------------------------------------------------------------------

    async def client(self) -> Any:
        """The service's client (opened on first use)."""
        return await self._service_client.get()

    async def _describe_ids(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        return await self._describe(await self.client(), ids)

    async def run(self, job: ObjectJob, progress: Progress | None = None) -> Result:
        """Launch, wait for the end, settle by the result document or the exit code."""
        result_uri = f"{self.results}{uuid.uuid4().hex}.json"
        env = job_environment(job, result_uri)
        env.update(self.settings.environment)
        command = (
            run_arguments(self.settings.command, job) if self.settings.command is not None else None
        )
        client = await self.client()
        loop = asyncio.get_running_loop()
        deadline = None if job.timeout_s is None else loop.time() + job.timeout_s
        # Shielded: a run cancelled while RunTask/SubmitJob is on the wire still learns the
        # id of what it started, and stops it.
        launch = asyncio.ensure_future(self._launch(client, job, env, command))
        try:
            async with asyncio.timeout_at(deadline):
                ident, refs = await asyncio.shield(launch)
        except TimeoutError as exc:
            # The launch itself outlasted job_timeout_s (an API stalling, the SDK's retries):
            # the message is settled now, as its lease ends with the timeout (waiting on
            # would let a second copy run beside it); what the launch may still start is
            # stopped once it answers.
            stopping = asyncio.ensure_future(self._stop_after_launch(client, launch, wait_s=None))
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)
            # The service's stall, not the file's: not counted as its failure.
            raise ExecutorUnavailableError(
                f"{job.source}: {self.what} did not answer the launch within job_timeout_s "
                f"({job.timeout_s:.0f} s): given up, and what it starts is stopped once it "
                "answers; retried without counting a failure of the file"
            ) from exc
        except asyncio.CancelledError:
            if self.settings.stop_on_shutdown:
                await asyncio.shield(self._stop_after_launch(client, launch))
            raise
        where = f"{self.what} {ident}"
        log.info("%s: %s started (route %s)", job.source, where, job.route)
        try:
            async with asyncio.timeout_at(deadline):
                final = await self.watcher.wait(ident)
        except TimeoutError as exc:
            # Stopped whatever stop_on_shutdown says: the message is retried, and a run
            # left going would write beside the next one.
            reason = "s3flow: the run went on past the pipeline's job_timeout_s"
            try:
                await asyncio.shield(self._stop(client, ident, reason))
                how = "stopped"
            except Exception as stop_exc:
                log.warning("could not stop %s: %s", where, stop_exc)
                how = f"could not be stopped ({stop_exc}): stop it by hand"
            raise job_timed_out(job, where, how) from exc
        except asyncio.CancelledError:
            if self.settings.stop_on_shutdown:
                await asyncio.shield(self._stop_quietly(client, ident))
            else:
                log.info("%s: %s left running (stop_on_shutdown = false)", job.source, where)
            raise
        code, reason = self.exit_of(final)
        doc = await self._read_result(result_uri)
        if doc is not None and doc.get("status") == "done":
            result = result_from_doc(doc)
            result.detail.update(refs)
            return result
        if doc is not None:
            raise error_from_doc({**doc, "error": f"{doc.get('error')} [{where}]"})
        if code == 0:
            reason = (
                f"no result document at {result_uri} (does the container run "
                f"`s3flow run` and may it write there?){'; ' + reason if reason else ''}"
            )
        raise error_for_exit(code, where, reason)

    async def _stop_after_launch(
        self,
        client: Any,
        launch: asyncio.Future[tuple[str, dict[str, Any]]],
        *,
        wait_s: float | None = 30,
    ) -> None:
        """Stop what ``launch`` starts, once it answers (within ``wait_s``; None: the
        launch's own timeouts bound it)."""
        try:
            ident, _ = await asyncio.wait_for(launch, wait_s)
        except Exception:
            return  # it failed (or never answered): nothing known to stop
        await self._stop_quietly(client, ident)

    async def _stop_quietly(self, client: Any, ident: str) -> None:
        try:
            await self._stop(client, ident, "s3flow worker stopped before the run ended")
            log.info("%s %s stopped (the worker is shutting down)", self.what, ident)
        except Exception as exc:
            log.warning("could not stop %s %s: %s", self.what, ident, exc)

    async def _read_result(self, uri: str) -> dict[str, Any] | None:
        """The run's result document (deleted once read), or None when it wrote none."""
        bucket, key = split_s3_url(uri)
        try:
            resp = await self._s3.get_object(Bucket=bucket, Key=key)
            async with resp["Body"] as body:
                raw = await body.read()
        except Exception as exc:
            err = translate_aws_error(exc, f"GetObject {uri}")
            if err.disposition.value == "skip":
                return None
            raise err from exc
        with contextlib.suppress(Exception):
            await self._s3.delete_object(Bucket=bucket, Key=key)
        try:
            doc = json.loads(raw)
        except ValueError:
            log.warning("result document %s is not JSON", uri)
            return None
        return doc if isinstance(doc, dict) else None

    async def close(self) -> None:
        """Stop what late launches started, stop watching and close the client."""
        if self._stopping:
            await asyncio.wait(list(self._stopping), timeout=60)
        await self.watcher.close()
        await self._service_client.close()
