"""Upload requests: parsing, the refusals a person reads, safe keys."""

from __future__ import annotations

from typing import Any

import pytest

from s3flow.jobs.uploads import (
    BadUploadError,
    UploadRequest,
    parse_upload_key,
    plan_upload,
    safe_name,
)
from s3flow.settings import Settings, load_settings


def settings(**jobs: Any) -> Settings:
    base = {
        "project": "acme",
        "branch": "dev",
        "max_file_bytes": 1000,
        "max_files": 3,
        "allowed_extensions": [".txt", ".csv"],
    }
    return load_settings(
        overrides={
            "jobs": {**base, **jobs},
            "templates": [{"name": "count", "steps": [{"processor": "line-count"}]}],
        }
    )


def req(*files: tuple[str, int, str], template: str = "count") -> UploadRequest:
    return UploadRequest.from_json(
        {
            "template": template,
            "files": [{"name": n, "size": s, "content_type": c} for n, s, c in files],
        }
    )


def test_plan_names_keys_by_index_and_safe_name() -> None:
    planned = plan_upload(
        settings(), req(("a report.txt", 10, "text/plain"), ("b.csv", 5, "text/csv"))
    )
    assert [f.key for f in planned] == ["0-a_report.txt", "1-b.csv"]
    assert [f.content_type for f in planned] == ["text/plain", "text/csv"]


@pytest.mark.parametrize(
    ("files", "template", "needle"),
    [
        ([("a.txt", 1, "text/plain")], "nope", "unknown template 'nope'; templates: count"),
        ([("a.exe", 1, "application/x")], "count", "extension '.exe' is not allowed"),
        ([("a", 1, "text/plain")], "count", "extension '(none)' is not allowed"),
        ([("a.txt", 1001, "text/plain")], "count", "more than the 1000 bytes allowed"),
        ([("a.txt", 0, "text/plain")], "count", "is empty (0 bytes): empty files cannot be"),
        ([("a.txt", -1, "text/plain")], "count", "size -1 is negative: give its size in bytes"),
        ([(f"{i}.txt", 1, "text/plain") for i in range(4)], "count", "4 files is more than the 3"),
        ([("../a.txt", 1, "text/plain")], "count", "path separator"),
        ([("dir\\a.txt", 1, "text/plain")], "count", "path separator"),
        ([("a\x00.txt", 1, "text/plain")], "count", "control character"),
        ([("a\n.txt", 1, "text/plain")], "count", "control character"),
        # shown as "ainvoice.exe.txt"-like names: a type in disguise
        ([("a\u202etxt.exe.txt", 1, "text/plain")], "count", "text-direction control"),
        ([("a\u2066b.txt", 1, "text/plain")], "count", "text-direction control"),
        ([("a.txt", 1, "text/plain"), ("a.txt", 2, "text/plain")], "count", "listed twice"),
        # one name to a person: accents composed or not, any case (were two files)
        (
            [("\u00e9.txt", 1, "text/plain"), ("e\u0301.txt", 2, "text/plain")],
            "count",
            "'e\u0301.txt' and '\u00e9.txt' are one name",
        ),
        (
            [("Report.txt", 1, "text/plain"), ("report.TXT", 2, "text/plain")],
            "count",
            "'report.TXT' and 'Report.txt' are one name",
        ),
    ],
)
def test_refusals_say_what_is_wrong(
    files: list[tuple[str, int, str]], template: str, needle: str
) -> None:
    with pytest.raises(BadUploadError, match=None) as err:
        plan_upload(settings(), req(*files, template=template))
    assert needle in str(err.value)


def test_content_types_are_enforced_when_configured() -> None:
    s = settings(allowed_content_types=["text/plain"])
    assert plan_upload(s, req(("a.txt", 1, "text/plain; charset=utf-8")))[0].content_type == (
        "text/plain"
    )
    with pytest.raises(BadUploadError, match="content type 'text/csv' is not allowed"):
        plan_upload(s, req(("a.txt", 1, "text/csv")))


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ([], "must be a JSON object"),
        ({"files": []}, '"template" is missing'),
        ({"template": "count"}, '"files" must be a non-empty list'),
        ({"template": "count", "files": ["a"]}, "files[0] must be an object"),
        ({"template": "count", "files": [{"name": 1, "size": 1}]}, '"name" must be a string'),
        ({"template": "count", "files": [{"name": "a", "size": "1"}]}, '"size" must be an integer'),
        (
            {"template": "count", "files": [{"name": "a", "size": True}]},
            '"size" must be an integer',
        ),
        # it said '"template" is missing' (it is there, of the wrong type)
        ({"template": 5, "files": []}, '"template" must be a string, the name of a'),
    ],
)
def test_wrong_shapes_are_refused(body: Any, needle: str) -> None:
    with pytest.raises(BadUploadError) as err:
        UploadRequest.from_json(body)
    assert needle in str(err.value)


def test_safe_name_keeps_letters_of_any_script() -> None:
    assert safe_name("Отчёт 2026.txt") == "Отчёт_2026.txt"
    assert safe_name(".hidden.txt") == "hidden.txt"
    for bad in ("", ".", ".."):
        with pytest.raises(BadUploadError):
            safe_name(bad)


def test_parse_upload_key() -> None:
    uid = "0123456789abcdef0123456789abcdef"
    assert parse_upload_key(f"uploads/{uid}/2-a.txt") == (uid, 2)
    assert parse_upload_key(f"uploads/{uid}/a.txt") is None
    assert parse_upload_key("uploads/xyz/0-a.txt") is None
    assert parse_upload_key(f"other/{uid}/0-a.txt") is None


def test_jobs_settings_names_and_bridge_pipeline() -> None:
    s = settings()
    assert s.jobs is not None
    assert s.jobs.bucket == "acme-dev-uploads"
    assert s.jobs.resource("processing.fifo") == "acme-dev-processing.fifo"
    bridge = s.pipeline("jobs-intake")
    assert (bridge.queue, bridge.dlq, bridge.prefix) == (
        "acme-dev-intake",
        "acme-dev-intake-dlq",
        "uploads/",
    )
    assert bridge.options["processing_queue"] == "acme-dev-processing.fifo"


def test_branch_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3FLOW_BRANCH", "Feature/Upload_Jobs")
    s = load_settings(overrides={"jobs": {"project": "acme"}})
    assert s.jobs is not None and s.jobs.branch == "feature-upload-jobs"


class _Presigner:
    """Records what each presigned POST was asked for."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    async def generate_presigned_post(self, **kwargs: Any) -> dict[str, Any]:
        self.asked.append(kwargs)
        return {"url": "http://s3.test/b", "fields": {"key": kwargs["Key"]}}


class _Jobs:
    async def create_job(self, job: Any, *, event_id: str, data: Any) -> None:
        self.job = job


@pytest.mark.parametrize(("timeout_s", "url_s"), [(120, 120), (3600, 900)])
async def test_upload_urls_end_with_the_job_at_the_latest(timeout_s: int, url_s: int) -> None:
    """presign_expiry_s 900 and job_timeout_s 120: the URLs (and the answer's
    expires_at) lived 900 s, so a client trusting them uploaded after its job had
    expired."""
    from s3flow.jobs.uploads import create_upload

    s3, store = _Presigner(), _Jobs()
    made = await create_upload(
        settings(job_timeout_s=timeout_s, presign_expiry_s=900),
        store,  # type: ignore[arg-type]
        s3,
        req(("a.txt", 10, "text/plain")),
        now=1000.0,
    )
    assert [a["ExpiresIn"] for a in s3.asked] == [url_s]
    assert made.expires_at == 1000.0 + url_s
    assert store.job.expires_at == 1000.0 + timeout_s


def test_an_empty_content_type_is_taken_as_none() -> None:
    """``""`` went into the upload policy as ``Content-Type: ""``."""
    (f,) = req(("a.txt", 10, "")).files
    assert f.content_type == "application/octet-stream"


class _OneJob:
    """A job store holding at most one job."""

    def __init__(self, job: Any = None) -> None:
        self.job = job

    async def create_job(self, job: Any, *, event_id: str, data: Any) -> None:
        self.job = job

    async def get_job(self, job_id: str) -> Any:
        return self.job if self.job is not None and self.job.job_id == job_id else None


async def _created(store: _OneJob, **jobs: Any) -> Any:
    from s3flow.jobs.uploads import create_upload

    return await create_upload(
        settings(**jobs),
        store,  # type: ignore[arg-type]
        _Presigner(),
        req(("a.txt", 10, "text/plain"), ("b.txt", 20, "text/plain")),
        now=1000.0,
    )


@pytest.mark.parametrize(
    ("at", "url_s"),
    [(1000.0, 900), (3000.0, 900), (4000.0, 600)],  # job deadline 4600
)
async def test_fresh_urls_for_the_files_not_received_never_past_the_deadline(
    at: float, url_s: int
) -> None:
    """Upload URLs were signed once, at creation: a client that started its last files
    after presign_expiry_s had S3 refuse them ("Policy expired") and its job expired."""
    from dataclasses import replace

    from s3flow.jobs.uploads import resign_upload

    store = _OneJob()
    made = await _created(store)
    assert made.expires_in_s == 900 and made.to_json()["expires_in_s"] == 900
    first, second = store.job.files
    store.job = replace(store.job, files=(replace(first, received=True), second))
    s3 = _Presigner()
    again = await resign_upload(settings(), store, s3, made.job_id, now=at)  # type: ignore[arg-type]
    assert again is not None
    assert [f.key for f in again.files] == [second.key]
    assert (again.job_id, again.upload_id) == (made.job_id, made.upload_id)
    assert [a["Key"] for a in s3.asked] == [second.key]
    assert s3.asked[0]["ExpiresIn"] == url_s
    assert s3.asked[0]["Conditions"] == [
        {"Content-Type": "text/plain"},
        ["content-length-range", 20, 20],
    ]
    assert (again.expires_at, again.expires_in_s) == (at + url_s, url_s)


async def test_no_fresh_urls_for_an_unknown_ended_or_overdue_job() -> None:
    from dataclasses import replace

    from s3flow.jobs.uploads import UploadClosedError, resign_upload
    from s3flow.state.jobs import JobStatus

    store = _OneJob()
    made = await _created(store)
    s3 = _Presigner()
    assert await resign_upload(settings(), store, s3, "job-nope", now=1000.0) is None  # type: ignore[arg-type]
    with pytest.raises(UploadClosedError, match=r"past its deadline.*create a new upload"):
        await resign_upload(settings(), store, s3, made.job_id, now=4600.0)  # type: ignore[arg-type]
    waiting = store.job
    for status, says in [
        (JobStatus.QUEUED, "is queued, not waiting for files: every file it declared"),
        (JobStatus.EXPIRED, "is expired, not waiting for files: create a new upload"),
        (JobStatus.COMPLETED, "is completed, not waiting"),
    ]:
        store.job = replace(waiting, status=status)
        with pytest.raises(UploadClosedError, match=says):
            await resign_upload(settings(), store, s3, made.job_id, now=1000.0)  # type: ignore[arg-type]
    assert s3.asked == []
