"""The upload-job model: the pure folds (``apply_event``, ``plan_append``), the stored JSON."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest

from s3flow.state.jobs import (
    JOB_JSON_VERSION,
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    EventDraft,
    EventType,
    JobCursor,
    JobFile,
    JobOutput,
    JobRecord,
    JobStatus,
    JobStep,
    StepStatus,
    apply_event,
    job_from_json,
    job_to_json,
    plan_append,
)

T0 = 1_700_000_000.0


def job(status: JobStatus = JobStatus.WAITING_FOR_FILES, **changes: Any) -> JobRecord:
    rec = JobRecord(
        job_id="job-1",
        upload_id="u1",
        template="count",
        status=status,
        files=(
            JobFile("a.txt", "uploads/u1/0-a.txt", 10, "text/plain"),
            JobFile("b.txt", "uploads/u1/1-b.txt", 20, "text/plain"),
        ),
        steps=(JobStep("line-count"), JobStep("zip")),
        created_at=T0,
        updated_at=T0,
        expires_at=T0 + 3600,
    )
    return replace(rec, **changes)


def fold(rec: JobRecord, *events: tuple[EventType, dict[str, Any]]) -> JobRecord:
    for i, (type_, data) in enumerate(events, start=1):
        rec = apply_event(rec, type_, data, T0 + i)
    return rec


# --- the enums ---------------------------------------------------------------------------


def test_terminal_statuses_and_events() -> None:
    ended = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED}
    assert {s for s in JobStatus if s.terminal} == ended == TERMINAL_STATUSES
    ends = {EventType.JOB_COMPLETED, EventType.JOB_FAILED, EventType.JOB_EXPIRED}
    assert {e for e in EventType if e.terminal} == ends == TERMINAL_EVENTS
    assert str(EventType.STEP_PROGRESS) == "step.progress"  # the SSE event name


# --- apply_event ------------------------------------------------------------------------------


def test_apply_event_is_pure_and_stamps_updated_at() -> None:
    before = job()
    after = apply_event(before, EventType.FILE_RECEIVED, {"index": 0}, T0 + 5)
    assert before == job()  # unchanged (frozen records)
    assert after.updated_at == T0 + 5 and after.created_at == T0
    assert after.last_seq == before.last_seq  # the store sets the seq, not the fold


def test_job_created_changes_only_updated_at() -> None:
    assert apply_event(job(), EventType.JOB_CREATED, {"x": 1}, T0 + 1) == job(updated_at=T0 + 1)


@pytest.mark.parametrize("index", [0, 1])
def test_file_received_marks_that_file(index: int) -> None:
    rec = apply_event(job(), EventType.FILE_RECEIVED, {"index": index}, T0 + 1)
    assert [f.received for f in rec.files] == [i == index for i in range(2)]
    assert rec.missing == [f.name for i, f in enumerate(rec.files) if i != index]
    assert rec.status is JobStatus.WAITING_FOR_FILES


@pytest.mark.parametrize("index", [-1, 2, 99, "0", None, 1.0])
def test_file_received_ignores_a_bad_index(index: Any) -> None:
    data = {} if index is None else {"index": index}
    rec = apply_event(job(), EventType.FILE_RECEIVED, data, T0 + 1)
    assert rec == job(updated_at=T0 + 1)


def test_a_job_to_completion() -> None:
    outputs = [
        {"name": "counts.json", "key": "out/counts.json", "bucket": "b", "size": 7},
        {"name": "all.zip", "key": "out/all.zip", "bucket": "b"},
    ]
    rec = fold(
        job(), (EventType.FILE_RECEIVED, {"index": 0}), (EventType.FILE_RECEIVED, {"index": 1})
    )
    assert rec.missing == [] and rec.status is JobStatus.WAITING_FOR_FILES
    rec = apply_event(rec, EventType.JOB_QUEUED, {}, T0 + 3)
    assert rec.status is JobStatus.QUEUED
    rec = apply_event(rec, EventType.STEP_STARTED, {"step": 0}, T0 + 4)
    assert rec.status is JobStatus.RUNNING
    assert [s.status for s in rec.steps] == [StepStatus.RUNNING, StepStatus.PENDING]
    rec = apply_event(
        rec,
        EventType.STEP_PROGRESS,
        {"step": 0, "bytes_done": 5, "bytes_total": "30", "records_done": 2, "note": "x"},
        T0 + 5,
    )
    assert rec.steps[0].progress == {"bytes_done": 5, "bytes_total": 30, "records_done": 2}
    rec = apply_event(rec, EventType.STEP_PROGRESS, {"step": 0, "bytes_done": 30}, T0 + 6)
    assert rec.steps[0].progress == {"bytes_done": 30}  # replaced, not merged
    rec = apply_event(rec, EventType.STEP_COMPLETED, {"step": 0}, T0 + 7)
    assert rec.steps[0] == JobStep("line-count", StepStatus.COMPLETED, {"bytes_done": 30})
    rec = apply_event(rec, EventType.STEP_STARTED, {"step": 1}, T0 + 8)
    rec = apply_event(rec, EventType.STEP_COMPLETED, {"step": 1, "files_done": 2}, T0 + 9)
    assert rec.steps[1] == JobStep("zip", StepStatus.COMPLETED, {"files_done": 2})
    assert rec.status is JobStatus.RUNNING
    rec = apply_event(rec, EventType.JOB_COMPLETED, {"outputs": outputs}, T0 + 10)
    assert rec.status is JobStatus.COMPLETED and rec.error is None
    assert rec.outputs == (
        JobOutput("counts.json", "out/counts.json", "b", 7),
        JobOutput("all.zip", "out/all.zip", "b", 0),
    )
    assert rec.updated_at == T0 + 10


@pytest.mark.parametrize("step", [-1, 2, "0", None])
def test_step_events_ignore_a_bad_step(step: Any) -> None:
    data: dict[str, Any] = {"bytes_done": 1} if step is None else {"step": step, "bytes_done": 1}
    rec = job(JobStatus.QUEUED)
    for type_ in (EventType.STEP_STARTED, EventType.STEP_PROGRESS, EventType.STEP_COMPLETED):
        assert apply_event(rec, type_, data, T0).steps == rec.steps
    # step.started still means the job runs.
    assert apply_event(rec, EventType.STEP_STARTED, data, T0).status is JobStatus.RUNNING


def test_a_late_step_event_of_an_older_attempt_changes_nothing() -> None:
    """A worker that lost its message while still running reports after the job was
    started again: its figures and its completion are not the current attempt's."""
    rec = fold(
        job(),
        (EventType.JOB_QUEUED, {}),
        (EventType.STEP_STARTED, {"step": 0, "attempt": 1}),
        (EventType.STEP_PROGRESS, {"step": 0, "attempt": 1, "bytes_done": 9, "bytes_total": 30}),
        (EventType.STEP_STARTED, {"step": 0, "attempt": 2}),
        (EventType.STEP_PROGRESS, {"step": 0, "attempt": 2, "bytes_done": 3, "bytes_total": 30}),
    )
    assert rec.steps[0] == JobStep(
        "line-count", StepStatus.RUNNING, {"bytes_done": 3, "bytes_total": 30}, attempt=2
    )
    late = {"step": 0, "attempt": 1, "bytes_done": 30, "bytes_total": 30}
    assert apply_event(rec, EventType.STEP_PROGRESS, late, T0 + 9).steps == rec.steps
    assert apply_event(rec, EventType.STEP_COMPLETED, late, T0 + 9).steps == rec.steps
    # The current attempt's (and an event that names no attempt) still count.
    now = apply_event(rec, EventType.STEP_COMPLETED, {**late, "attempt": 2}, T0 + 9)
    assert now.steps[0].status is StepStatus.COMPLETED
    bare = apply_event(rec, EventType.STEP_PROGRESS, {"step": 0, "bytes_done": 4}, T0 + 9)
    assert bare.steps[0].progress == {"bytes_done": 4}
    # The late worker goes on into the next step: still the first attempt's.
    on = fold(
        rec,
        (EventType.STEP_STARTED, {"step": 1, "attempt": 1}),
        (EventType.STEP_PROGRESS, {"step": 1, "attempt": 1, "bytes_done": 1}),
        (EventType.STEP_COMPLETED, {"step": 1, "attempt": 1, "files_done": 1}),
    )
    assert on.steps == rec.steps
    # job.failed of any attempt still fails the job and its running step.
    failed = apply_event(rec, EventType.JOB_FAILED, {"step": 0, "attempt": 1, "error": "x"}, T0)
    assert failed.status is JobStatus.FAILED
    assert failed.steps[0].status is StepStatus.FAILED


def test_job_failed() -> None:
    rec = fold(
        job(),
        (EventType.JOB_QUEUED, {}),
        (EventType.STEP_STARTED, {"step": 1}),
        (EventType.JOB_FAILED, {"step": 1, "error": "b.txt: line 3 is not UTF-8"}),
    )
    assert rec.status is JobStatus.FAILED and rec.error == "b.txt: line 3 is not UTF-8"
    assert [s.status for s in rec.steps] == [StepStatus.PENDING, StepStatus.FAILED]
    bare = apply_event(job(), EventType.JOB_FAILED, {"error": ""}, T0)
    assert bare.status is JobStatus.FAILED and bare.error == "the job failed"
    assert bare.steps == job().steps


def test_job_expired() -> None:
    rec = apply_event(
        job(), EventType.JOB_EXPIRED, {"missing": ["b.txt"], "error": "b.txt never arrived"}, T0
    )
    assert rec.status is JobStatus.EXPIRED and rec.error == "b.txt never arrived"
    assert apply_event(job(), EventType.JOB_EXPIRED, {}, T0).error == "the job expired"


def test_status_never_moves_backward() -> None:
    running = apply_event(job(), EventType.STEP_STARTED, {"step": 0}, T0 + 1)
    assert running.status is JobStatus.RUNNING
    late = apply_event(running, EventType.JOB_QUEUED, {}, T0 + 2)
    assert late.status is JobStatus.RUNNING and late.updated_at == T0 + 2
    queued = apply_event(job(), EventType.JOB_QUEUED, {}, T0)
    assert apply_event(queued, EventType.FILE_RECEIVED, {"index": 0}, T0).status is (
        JobStatus.QUEUED
    )


@pytest.mark.parametrize("status", sorted(TERMINAL_STATUSES))
@pytest.mark.parametrize("type_", list(EventType))
def test_a_terminal_job_is_never_changed(status: JobStatus, type_: EventType) -> None:
    ended = job(status, error="first", outputs=(JobOutput("o", "k", "b", 1),))
    data = {"index": 0, "step": 0, "bytes_done": 3, "error": "late", "outputs": []}
    assert apply_event(ended, type_, data, T0 + 99) == ended


# --- the JSON codec ----------------------------------------------------------------------------


def test_json_round_trip_of_every_field() -> None:
    rec = job(
        JobStatus.FAILED,
        files=(
            JobFile("ünï cødé.txt", "uploads/u1/0-uni.txt", 10, "text/plain", received=True),
            JobFile('q"uote\\.log', "uploads/u1/1-q.log", 0, "text/x-log"),
        ),
        steps=(
            JobStep("line-count", StepStatus.COMPLETED, {"bytes_done": 10, "records_done": 1}, 2),
            JobStep("zip", StepStatus.FAILED, attempt=2),
            JobStep("text-to-pdf"),
        ),
        updated_at=T0 + 0.123456789,
        outputs=(JobOutput("counts.json", "out/c.json", "bkt", 7),),
        error="zip: disk full ✗",
        last_seq=42,
    )
    text = job_to_json(rec)
    assert isinstance(text, str) and "\n" not in text
    assert job_from_json(text) == rec
    assert job_from_json(text.encode()) == rec
    doc = json.loads(text)
    assert doc["v"] == JOB_JSON_VERSION and doc["status"] == "failed"
    assert doc["steps"][0] == {
        "name": "line-count",
        "status": "completed",
        "progress": {"bytes_done": 10, "records_done": 1},
        "attempt": 2,
    }


def test_json_round_trip_of_a_new_job() -> None:
    assert job_from_json(job_to_json(job())) == job()
    empty = job(files=(), steps=())
    assert job_from_json(job_to_json(empty)) == empty


def test_json_optional_fields_default() -> None:
    doc = json.loads(job_to_json(job()))
    del doc["v"], doc["outputs"], doc["error"], doc["last_seq"]
    for f in doc["files"]:
        del f["received"]
    for s in doc["steps"]:
        del s["progress"], s["status"], s["attempt"]
    assert job_from_json(json.dumps(doc)) == job()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        "null",
        '{"job_id": "j"}',
        json.dumps({**json.loads(job_to_json(job())), "status": "paused"}),
        json.dumps({**json.loads(job_to_json(job())), "files": [{"name": "a"}]}),
        json.dumps({**json.loads(job_to_json(job())), "v": JOB_JSON_VERSION + 1}),
    ],
)
def test_json_refuses_what_is_not_a_record(text: str) -> None:
    with pytest.raises(ValueError, match="not a stored job record"):
        job_from_json(text)


def test_json_refuses_non_finite_numbers() -> None:
    with pytest.raises(ValueError):
        job_to_json(job(expires_at=float("inf")))


def test_event_draft_checks_the_data_before_any_write() -> None:
    draft = EventDraft.of("e1", "step.progress", {"step": 0, "bytes_done": 5})
    assert draft.type is EventType.STEP_PROGRESS
    assert draft.payload == '{"step":0,"bytes_done":5}'
    assert draft.logged("job-1", 3, T0).data == {"step": 0, "bytes_done": 5}
    with pytest.raises(ValueError):
        EventDraft.of("e2", EventType.STEP_PROGRESS, {"x": float("nan")})
    with pytest.raises(TypeError):
        EventDraft.of("e3", EventType.STEP_PROGRESS, {"x": object()})


def test_plan_append_gives_the_next_seq_and_the_folded_job() -> None:
    draft = EventDraft.of("e1", EventType.JOB_QUEUED, {})
    planned = plan_append(job(last_seq=2), draft, T0 + 1, None)
    assert planned is not None
    event, new = planned
    assert (event.job_id, event.seq, event.event_id, event.at) == ("job-1", 3, "e1", T0 + 1)
    assert (new.status, new.last_seq, new.updated_at) == (JobStatus.QUEUED, 3, T0 + 1)


def test_plan_append_refuses_a_terminal_job_or_another_status() -> None:
    draft = EventDraft.of("e1", EventType.STEP_STARTED, {"step": 0})
    assert plan_append(job(JobStatus.COMPLETED), draft, T0, None) is None
    queued = frozenset({JobStatus.QUEUED})
    assert plan_append(job(JobStatus.WAITING_FOR_FILES), draft, T0, queued) is None
    assert plan_append(job(JobStatus.QUEUED), draft, T0, queued) is not None


@pytest.mark.parametrize(
    ("created_at", "job_id"),
    [(1764547200.123456, "job-9f1d"), (0.0, "j"), (1e-7, 'job-é/€ "q"'), (17.0, "x" * 200)],
)
def test_a_cursor_token_gives_back_its_position_exactly(created_at: float, job_id: str) -> None:
    cursor = JobCursor(created_at, job_id)
    token = cursor.token()
    assert token.isascii() and all(c.isalnum() or c in "-_" for c in token)  # URL-safe as is
    assert JobCursor.from_token(token) == cursor
    assert JobCursor.of(job(job_id=job_id, created_at=created_at)) == cursor


@pytest.mark.parametrize(
    "token",
    [
        "",
        "x" * 600,
        "%%%",
        "é",
        JobCursor(1.0, "a").token()[:-3],  # cut: not JSON any more
        base64.urlsafe_b64encode(b'{"created_at": 1, "job_id": "a"}').decode(),
        base64.urlsafe_b64encode(b'[1, "a", 2]').decode(),
        base64.urlsafe_b64encode(b'[true, "a"]').decode(),
        base64.urlsafe_b64encode(b'["1", "a"]').decode(),
        base64.urlsafe_b64encode(b'[1, ""]').decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'[Infinity, "a"]').decode(),
        base64.urlsafe_b64encode(b'[1, "\xff"]').decode(),
    ],
)
def test_a_token_this_code_did_not_make_is_no_cursor(token: str) -> None:
    assert JobCursor.from_token(token) is None
