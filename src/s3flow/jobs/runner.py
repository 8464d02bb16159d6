"""The job worker: one message of the processing FIFO queue -> a job's template run -> outcome.

Steps run in order. Step 0 reads the job's files, each later step the
previous step's outputs; a processor with a ``bundle`` method (``zip``) gets
all of its inputs at once, any other processor runs once per input. The last
step writes to ``<output_prefix><job_id>/``, earlier ones under
``<output_prefix><job_id>/.steps/<n>-<processor>/``. Outputs are idempotent
(same keys on a re-run), so a job that is re-delivered after a crash simply
runs again and ends with one ``job.completed`` (its event id is fixed).

Progress goes to the progress FIFO queue (:mod:`s3flow.jobs.progress`):
``step.started``, ``step.progress`` (at most every ``progress_interval_s``),
``step.completed``, then ``job.completed``; a permanent error or the last
allowed attempt (``[jobs] max_receive_count``) gives ``job.failed`` with the
error, and so does a receive past the last attempt (its worker died in it:
SIGKILL, out of memory), so a job never stays ``running`` for want of a
worker. The processing queue's redrive count is above the limit (a safety
net, as for pipelines), so SQS never takes the message before that receive.

A run stopped by a graceful shutdown (SIGTERM, past ``shutdown_grace_s``) costs no
attempt: the job's message is sent again for the next worker (its message
attributes count the runs so far and the ones stopped so) and this delivery is
deleted. Attempts are the runs minus the stopped ones; the runs number the
``step.started`` events, so a later run's events never repeat an earlier one's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import ValidationError

from s3flow.closing import cancel_and_wait
from s3flow.errors import (
    ObjectMissingError,
    PermanentError,
    ProcessorError,
    S3flowError,
    aws_errors,
)
from s3flow.events import ObjectEvent
from s3flow.jobs.bridge import JobMessage
from s3flow.jobs.progress import ProgressPublisher, StepProgress
from s3flow.metrics import PipelineMetrics
from s3flow.processors.base import BundleContext, ProcessContext, Result
from s3flow.processors.registry import create_processor
from s3flow.settings import JobsSettings, Settings, TemplateSettings
from s3flow.settings.jobs import processing_pipeline
from s3flow.sinks.s3 import S3Sink, parse_s3_uri
from s3flow.state.jobs import EventType, JobRecord, JobStore, StepStatus
from s3flow.worker.acks import carried
from s3flow.worker.outcomes import Ack, Outcome, Retry, backoff_s
from s3flow.worker.source import ReceivedMessage

__all__ = ["RELEASED_ATTR", "RUNS_ATTR", "JobHandler"]

#: Message attribute: the job's runs before this message was sent (a handed-on job).
RUNS_ATTR = "s3flow.job-runs"
#: Message attribute: of those runs, the ones a graceful shutdown stopped (not attempts).
RELEASED_ATTR = "s3flow.job-released"

log = logging.getLogger("s3flow.jobs.runner")


class _StepSink(S3Sink):
    """An S3 sink that names outputs by the input's path below its own prefix.

    Processors name an output after their input's whole key (``uploads/<id>/a.csv``,
    or an earlier step's output key): the first of ``strip`` that prefixes it is cut
    off before the sink's own prefix goes in front.
    """

    def __init__(self, s3: Any, url: str, strip: tuple[str, ...]) -> None:
        super().__init__(s3, url)
        self._strip = strip

    def key_for(self, relative_key: str) -> str:
        for prefix in self._strip:
            if relative_key.startswith(prefix):
                return super().key_for(relative_key[len(prefix) :])
        return super().key_for(relative_key)


class JobHandler:
    """Turns one processing-queue message into an outcome (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        *,
        s3: Any,
        sqs: Any,
        store: JobStore,
        progress_queue_url: str,
        worker_id: str,
        metrics: PipelineMetrics | None = None,
        processing_queue_url: str | None = None,
    ) -> None:
        if settings.jobs is None:
            raise S3flowError("JobHandler needs [jobs] settings")
        self._settings = settings
        self._jobs: JobsSettings = settings.jobs
        self._s3 = s3
        self._sqs = sqs
        self._store = store
        self._progress_url = progress_queue_url
        #: Where a run stopped by a shutdown sends its job again (None: it is released,
        #: and that run counts as an attempt).
        self._processing_url = processing_queue_url
        # A compressed upload is decompressed no further than a pipeline's object is.
        self._max_uncompressed_bytes = processing_pipeline(self._jobs).max_uncompressed_bytes
        self._worker_id = worker_id
        #: Jobs run to the end count as processed (completed or failed), repeats as
        #: duplicates: the worker's summary and /metrics show them.
        self.metrics = metrics if metrics is not None else PipelineMetrics()
        self._processors: dict[tuple[str, int], Any] = {}

    #: The runner takes the slot before :meth:`handle` (a job is all work).
    takes_slot = False

    async def renew_claims(self, deliveries: list[str]) -> None:
        """Nothing to renew: a job is guarded by its FIFO message group, not a claim."""

    def _processor(self, template: TemplateSettings, index: int) -> Any:
        key = (template.name, index)
        if key not in self._processors:
            step = template.steps[index]
            self._processors[key] = create_processor(step.processor, step.options)
        return self._processors[key]

    async def handle(self, msg: ReceivedMessage) -> Outcome:
        """Run the job ``msg`` names; Ack when it completed or failed for good."""
        outcome = await self._handle(msg)
        if isinstance(outcome, Ack):
            if outcome.reason == "duplicate":
                self.metrics.duplicates += 1
            elif outcome.reason in ("processed", "failed"):
                self.metrics.objects_processed += 1
        return outcome

    async def _handle(self, msg: ReceivedMessage) -> Outcome:
        try:
            body = JobMessage.model_validate_json(msg.body)
        except ValidationError as exc:
            # Poison: leave it to the queue's redrive (FIFO DLQ) after max receives.
            log.error("processing queue: message %s is not a job message: %s", msg.message_id, exc)
            return Retry(0, "EnvelopeError", f"not a job message: {exc.errors()[0]['msg']}")
        job = await self._store.get_job(body.job_id)
        if job is None:
            log.error("processing queue: job %s is unknown to the state store", body.job_id)
            return Retry(0, "UnknownJob", f"job {body.job_id} is not in the state store")
        if job.status.terminal:
            log.info("job %s is already %s; acking the duplicate", job.job_id, job.status)
            return Ack("duplicate")
        pub = ProgressPublisher(self._sqs, self._progress_url, job.job_id)
        limit = self._jobs.max_receive_count
        released = msg.whole_number_attribute(RELEASED_ATTR)
        run = msg.whole_number_attribute(RUNS_ATTR) + msg.receive_count  # numbers this run's events
        attempt = run - released  # runs a shutdown stopped are no attempts
        if attempt > limit:
            # Every attempt ends in job.completed or job.failed, or the worker died in it
            # (SIGKILL, out of memory): the last one did, so the job fails here, never
            # left 'running' (the queue's redrive is above the limit: see provision).
            await self._failed(
                pub,
                job,
                f"the job's worker stopped during its last allowed attempt ({limit} of "
                f"{limit}, [jobs] max_receive_count) without finishing it: killed or out of "
                "memory? Check the job worker's log and memory limit, then "
                f"`s3flow jobs retry {job.job_id}`",
            )
            return Ack("failed")
        template = self._settings.template(job.template)
        if template is None:
            await self._failed(
                pub, job, f"template {job.template!r} is not configured on this worker"
            )
            return Ack("failed")
        try:
            try:
                outputs = await self._run(job, template, pub, attempt=run)
            except ObjectMissingError as exc:
                if not any(f.key in str(exc) for f in job.files):
                    raise  # a step's own output or intermediate: a new attempt makes it
                gone = PermanentError(
                    f"{exc} (the uploaded file is gone: deleted, or removed by the bucket's "
                    "lifecycle after [jobs] abandoned_upload_days); upload the files again "
                    "as a new job"
                )
                for note in getattr(exc, "__notes__", ()):  # which file, for the job's error
                    gone.add_note(note)
                raise gone from exc
        except asyncio.CancelledError:
            # A shutdown cancelled this task: hand the job on, this run not counted. (A
            # CancelledError from anything else is no shutdown: it goes on as it is.)
            this = asyncio.current_task()
            shutdown = this is not None and this.cancelling() > 0
            if shutdown and await asyncio.shield(self._hand_on(msg, job, run, released + 1)):
                return Ack("handed on")
            raise
        except _JobEnded as ended:
            log.info("job %s: %s; its run is stopped", job.job_id, ended)
            return Ack("ended elsewhere")
        except PermanentError as exc:
            await self._failed(pub, job, _described(exc))
            return Ack("failed")
        except Exception as exc:  # retryable: the queue re-delivers
            error = _described(exc, f"{type(exc).__name__}: {exc}")
            if attempt >= limit:
                await self._failed(pub, job, f"failed {attempt} times; last error: {error}")
                return Ack("failed")
            log.warning("job %s attempt %d failed, will retry: %s", job.job_id, attempt, error)
            return Retry(backoff_s(attempt, 1.0, 60.0), type(exc).__name__, error)
        await pub.publish(
            f"{job.job_id}:{EventType.JOB_COMPLETED}",
            EventType.JOB_COMPLETED,
            {"outputs": outputs},
        )
        return Ack("processed")

    async def _hand_on(
        self, msg: ReceivedMessage, job: JobRecord, runs: int, released: int
    ) -> bool:
        """Send the job's message again, its runs so far and the stopped ones in its
        attributes (the next worker counts its attempts from them); False when it cannot
        be sent (this delivery is then released, and this run counts as an attempt)."""
        if self._processing_url is None:
            return False
        try:
            with aws_errors("SendMessage to the processing queue"):
                await self._sqs.send_message(
                    QueueUrl=self._processing_url,
                    MessageBody=msg.body,
                    MessageGroupId=job.upload_id,
                    MessageDeduplicationId=f"{job.job_id}:run-{runs}",
                    MessageAttributes={
                        **{
                            name: {"DataType": "String", "StringValue": str(value)}
                            for name, value in carried(msg).items()
                        },
                        RUNS_ATTR: {"DataType": "Number", "StringValue": str(runs)},
                        RELEASED_ATTR: {"DataType": "Number", "StringValue": str(released)},
                    },
                )
        except S3flowError as exc:
            log.warning(
                "job %s: stopped by the shutdown, and could not be handed on (%s): released, "
                "this run counts as an attempt",
                job.job_id,
                exc,
            )
            return False
        log.info("job %s: stopped by the shutdown; handed on to the next worker", job.job_id)
        return True

    async def _failed(self, pub: ProgressPublisher, job: JobRecord, error: str) -> None:
        """Publish ``job.failed`` with the error and the step it failed in (``step``).

        The step is the one this attempt started and did not complete; without one (the
        worker died in the last attempt) the step the job record shows running, if any.
        The store and the job view mark that step failed.
        """
        log.error("job %s failed: %s", job.job_id, error)
        data: dict[str, Any] = {"error": error}
        step = pub.running_step
        if step is None:
            step = next(
                (i for i, s in enumerate(job.steps) if s.status is StepStatus.RUNNING), None
            )
        if step is not None:
            data["step"] = step
        await pub.publish(f"{job.job_id}:{EventType.JOB_FAILED}", EventType.JOB_FAILED, data)

    async def _run(
        self, job: JobRecord, template: TemplateSettings, pub: ProgressPublisher, *, attempt: int
    ) -> list[dict[str, Any]]:
        bucket = self._jobs.bucket
        base = f"{template.output_prefix}{job.job_id}/"
        inputs = [ObjectEvent(bucket=bucket, key=f.key, size=f.size) for f in job.files]
        # The files' own upload directory: a retried job (a new upload id) reads the
        # files its first job's upload stored.
        uploaded = {f.key.rsplit("/", 1)[0] + "/" for f in job.files}
        strip = (*sorted(uploaded), base)
        results: list[Result] = []
        last = len(template.steps) - 1
        for i, step in enumerate(template.steps):
            await self._still_running(job.job_id)
            prefix = base if i == last else f"{base}.steps/{i}-{step.processor}/"
            sink = _StepSink(self._s3, f"s3://{bucket}/{prefix}", strip)
            await pub.publish(
                f"{job.job_id}:{EventType.STEP_STARTED}:{i}:{attempt}",
                EventType.STEP_STARTED,
                {"step": i, "name": step.processor, "inputs": len(inputs), "attempt": attempt},
            )
            progress = StepProgress(
                pub,
                step=i,
                attempt=attempt,
                interval_s=self._jobs.progress_interval_s,
                bytes_total=sum(e.size or 0 for e in inputs),
            )
            results = await self._step(job, template, i, inputs, sink, progress)
            await progress.maybe_publish(force=True)
            uris = [u for r in results for u in r.outputs]
            await pub.publish(
                f"{job.job_id}:{EventType.STEP_COMPLETED}:{i}:{attempt}",
                EventType.STEP_COMPLETED,
                {**progress.data(), "outputs": len(uris)},
            )
            inputs = [await self._output(*parse_s3_uri(u)) for u in uris]
        await self._still_running(job.job_id)
        return [
            {
                "name": e.key[len(base) :] if e.key.startswith(base) else e.key.rsplit("/", 1)[-1],
                "key": e.key,
                "bucket": e.bucket,
                "size": e.size or 0,
            }
            for e in inputs
        ]

    async def _output(self, bucket: str, key: str) -> ObjectEvent:
        """A step's output as the next step's input; a missing or empty one is an error."""
        with aws_errors(f"HeadObject s3://{bucket}/{key}"):
            head = await self._s3.head_object(Bucket=bucket, Key=key)
        size = int(head.get("ContentLength", 0))
        if size <= 0:
            raise ProcessorError(f"output s3://{bucket}/{key} is empty")
        return ObjectEvent(
            bucket=bucket, key=key, size=size, etag=str(head.get("ETag", "")).strip('"')
        )

    async def _step(
        self,
        job: JobRecord,
        template: TemplateSettings,
        index: int,
        inputs: list[ObjectEvent],
        sink: _StepSink,
        progress: StepProgress,
    ) -> list[Result]:
        processor = self._processor(template, index)
        this = asyncio.current_task()
        assert this is not None
        ended: list[str] = []  # why the job ended elsewhere, once the watcher saw it
        ticker = asyncio.create_task(self._tick(progress, job.job_id, this, ended))
        try:
            bundle = getattr(processor, "bundle", None)
            if bundle is not None:
                ctx = BundleContext(
                    job_id=job.job_id,
                    inputs=inputs,
                    s3=self._s3,
                    sink=sink,
                    report_progress=progress.add,
                )
                result: Result = await bundle(ctx)
                progress.files_done = len(inputs)
                return [result]
            results = []
            for event in inputs:
                progress.start_file(event.size)
                pctx = ProcessContext(
                    event=event,
                    pipeline=f"job:{template.name}",
                    worker_id=self._worker_id,
                    s3=self._s3,
                    sink=sink,
                    report_progress=progress.add,
                    max_uncompressed_bytes=self._max_uncompressed_bytes,
                )
                try:
                    results.append(await processor.process(pctx))
                except Exception as exc:
                    exc.add_note(_FILE_NOTE + _file_label(job, event))
                    raise
                progress.file_done()
            return results
        except asyncio.CancelledError:
            # The watcher's own cancellation (not a shutdown's too) stops the step.
            if ended and this.uncancel() == 0:
                raise _JobEnded(ended[0]) from None
            raise
        finally:
            await cancel_and_wait(ticker)

    async def _tick(
        self, progress: StepProgress, job_id: str, step: asyncio.Task[Any], ended: list[str]
    ) -> None:
        """Every ``progress_interval_s``: publish the step's progress, and stop the step
        (cancel ``step``, saying why in ``ended``) once the job ended elsewhere."""
        interval = self._jobs.progress_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await progress.maybe_publish()
            except S3flowError as exc:  # progress is best effort; the step goes on
                log.warning("progress event not sent: %s", exc)
            try:
                why = await self._ended(job_id)
            except S3flowError as exc:  # the store is unreachable: the step goes on
                log.warning("job %s: its status could not be read: %s", job_id, exc)
                continue
            if why is not None:
                ended.append(why)
                step.cancel()
                return

    async def _ended(self, job_id: str) -> str | None:
        """Why the job ended elsewhere (cancelled by an operator...), or None."""
        job = await self._store.get_job(job_id)
        if job is None or not job.status.terminal:
            return None
        return f"it ended while it ran ({job.status}: {job.error or 'no reason given'})"

    async def _still_running(self, job_id: str) -> None:
        """Raise _JobEnded when the job ended elsewhere (no further step is started)."""
        why = await self._ended(job_id)
        if why is not None:
            raise _JobEnded(why)


class _JobEnded(Exception):
    """The job ended elsewhere while it ran (``s3flow jobs cancel``): stop, publish nothing."""


#: The note a step's error carries naming the file it failed on (see :func:`_described`).
_FILE_NOTE = "s3flow job file: "


def _file_label(job: JobRecord, event: ObjectEvent) -> str:
    """The name a person knows an input by: the uploaded file's, else its key's last part."""
    for f in job.files:
        if f.key == event.key:
            return f.name
    return event.key.rsplit("/", 1)[-1]


def _described(exc: BaseException, text: str | None = None) -> str:
    """``text`` (default: ``exc``'s message) after the file it failed on, when a step
    noted one."""
    notes = getattr(exc, "__notes__", ())
    files = [n.removeprefix(_FILE_NOTE) for n in notes if n.startswith(_FILE_NOTE)]
    text = str(exc) if text is None else text
    return f"{files[-1]}: {text}" if files else text
