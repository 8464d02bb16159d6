"""The API's routes on an in-memory store (no servers): shapes, refusals, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from web_fakes import FakeJobStore, FakeS3

from s3flow.errors import S3flowError
from s3flow.settings import Settings, load_settings
from s3flow.state.jobs import EventType
from s3flow.web.app import create_app
from s3flow.web.errors import install_error_handlers


def settings(**web: Any) -> Settings:
    return load_settings(
        None,
        {
            "jobs": {
                "project": "acme",
                "branch": "dev",
                "max_file_bytes": 1000,
                "max_files": 3,
                "allowed_extensions": [".txt", ".csv"],
                "allowed_content_types": ["text/plain", "text/csv"],
            },
            "templates": [
                {"name": "count", "steps": [{"processor": "line-count"}], "description": "Lines"}
            ],
            "web": web,
        },
    )


@pytest.fixture()
def store() -> FakeJobStore:
    return FakeJobStore()


@pytest.fixture()
def s3() -> FakeS3:
    return FakeS3()


@pytest.fixture()
async def client(store: FakeJobStore, s3: FakeS3) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings(), store=store, s3=s3, consume_progress=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c,
    ):
        yield c


def files(*names: str, size: int = 10, ctype: str = "text/plain") -> list[dict[str, Any]]:
    return [{"name": n, "size": size, "content_type": ctype} for n in names]


async def test_post_upload_creates_the_job_and_one_presigned_post_per_file(
    client: httpx.AsyncClient, store: FakeJobStore
) -> None:
    r = await client.post(
        "/api/uploads", json={"template": "count", "files": files("a.txt", "b c.csv")}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"upload_id", "job_id", "files", "expires_at", "expires_in_s"}
    upload_id = body["upload_id"]
    keys = [f["key"] for f in body["files"]]
    assert keys == [f"uploads/{upload_id}/0-a.txt", f"uploads/{upload_id}/1-b_c.csv"]
    assert all(set(f) == {"name", "key", "url", "fields"} for f in body["files"])
    job = store.jobs[body["job_id"]]
    assert job.upload_id == upload_id and job.status.value == "waiting_for_files"

    r = await client.get(f"/api/jobs/{body['job_id']}")
    assert r.status_code == 200
    shown = r.json()
    assert {k: shown[k] for k in ("job_id", "upload_id", "template", "status", "error")} == {
        "job_id": body["job_id"],
        "upload_id": upload_id,
        "template": "count",
        "status": "waiting_for_files",
        "error": None,
    }
    assert shown["files"] == [
        {"name": "a.txt", "received": False, "size": 10},
        {"name": "b c.csv", "received": False, "size": 10},
    ]
    assert shown["steps"] == [{"name": "line-count", "status": "pending", "progress": {}}]
    assert shown["outputs"] == []


BAD: list[tuple[str, Any, str]] = [
    ("unknown template", {"template": "nope", "files": files("a.txt")}, "unknown template 'nope'"),
    ("extension", {"template": "count", "files": files("a.exe")}, "extension '.exe'"),
    ("no extension", {"template": "count", "files": files("README")}, "extension '(none)'"),
    (
        "content type",
        {"template": "count", "files": files("a.txt", ctype="image/png")},
        "content type 'image/png'",
    ),
    ("too large", {"template": "count", "files": files("a.txt", size=1001)}, "1001 bytes"),
    ("empty", {"template": "count", "files": files("a.txt", size=0)}, "empty files"),
    (
        "too many",
        {"template": "count", "files": files("a.txt", "b.txt", "c.txt", "d.txt")},
        "4 files",
    ),
    ("slash", {"template": "count", "files": files("dir/a.txt")}, "path separator"),
    ("backslash", {"template": "count", "files": files("dir\\a.txt")}, "path separator"),
    ("control", {"template": "count", "files": files("a\x07.txt")}, "control character"),
    ("newline", {"template": "count", "files": files("a\n.txt")}, "control character"),
    ("dot-dot", {"template": "count", "files": files("..")}, "not a file name"),
    ("twice", {"template": "count", "files": files("a.txt", "a.txt")}, "listed twice"),
    ("a list", [1, 2], "must be a JSON object"),
    ("no template", {"files": files("a.txt")}, '"template" is missing'),
    ("no files", {"template": "count"}, '"files" must be a non-empty list'),
    ("files empty", {"template": "count", "files": []}, '"files" must be a non-empty list'),
    ("file not object", {"template": "count", "files": ["a.txt"]}, "files[0] must be an object"),
    (
        "size a string",
        {"template": "count", "files": [{"name": "a.txt", "size": "10", "content_type": "t"}]},
        '"size" must be an integer',
    ),
    (
        "size a bool",
        {"template": "count", "files": [{"name": "a.txt", "size": True, "content_type": "t"}]},
        '"size" must be an integer',
    ),
    (
        "name a number",
        {"template": "count", "files": [{"name": 5, "size": 1, "content_type": "t"}]},
        '"name" must be a string',
    ),
]


@pytest.mark.parametrize(("case", "body", "says"), BAD, ids=[b[0] for b in BAD])
async def test_a_bad_upload_is_a_400_saying_why_and_stores_nothing(
    client: httpx.AsyncClient, store: FakeJobStore, case: str, body: Any, says: str
) -> None:
    r = await client.post("/api/uploads", json=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    assert says in r.json()["error"]
    assert store.jobs == {}


@pytest.mark.parametrize(
    ("content", "says"),
    [(b"", "the body is empty"), (b"{not json", "not valid JSON"), (b"\xff\xfe", "not valid JSON")],
)
async def test_a_body_that_is_not_json_is_a_400(
    client: httpx.AsyncClient, content: bytes, says: str
) -> None:
    r = await client.post("/api/uploads", content=content)
    assert r.status_code == 400 and says in r.json()["error"]


async def test_a_huge_body_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/uploads", content=b"[" + b"1," * 600_000 + b"1]")
    assert r.status_code == 413 and "larger than" in r.json()["error"]


async def test_job_outputs_come_with_presigned_download_urls(
    client: httpx.AsyncClient, store: FakeJobStore, s3: FakeS3
) -> None:
    await store.new_job("job-9")
    out = {"name": "counts é.json", "key": "outputs/job-9/counts.json", "bucket": "b", "size": 5}
    await store.add("job-9", EventType.JOB_COMPLETED, outputs=[out])
    r = await client.get("/api/jobs/job-9")
    assert r.json()["status"] == "completed"
    assert r.json()["outputs"] == [
        {
            "name": "counts é.json",
            "url": "http://s3.test/b/outputs/job-9/counts.json?sig=1",
            "size": 5,
        }
    ]
    params = s3.presigned_gets[-1]["Params"]
    assert (
        params["ResponseContentDisposition"] == "attachment; filename*=UTF-8''counts%20%C3%A9.json"
    )


async def test_jobs_are_listed_and_filtered_by_status(
    client: httpx.AsyncClient, store: FakeJobStore
) -> None:
    await store.new_job("job-a")
    await store.new_job("job-b")
    await store.add("job-b", EventType.JOB_QUEUED)
    r = await client.get("/api/jobs")
    assert sorted(j["job_id"] for j in r.json()["jobs"]) == ["job-a", "job-b"]
    r = await client.get("/api/jobs", params={"status": "queued"})
    assert [j["job_id"] for j in r.json()["jobs"]] == ["job-b"]
    assert len((await client.get("/api/jobs?limit=1")).json()["jobs"]) == 1
    r = await client.get("/api/jobs", params={"status": "done"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert "'done'" in error
    assert "waiting_for_files, queued, running, completed, failed, expired" in error
    for limit in ("0", "501", "x", "-1"):
        r = await client.get("/api/jobs", params={"limit": limit})
        assert r.status_code == 400 and "limit" in r.json()["error"]


async def test_jobs_are_paged_with_next_cursor_until_it_is_null(
    client: httpx.AsyncClient, store: FakeJobStore
) -> None:
    for i in range(5):
        await store.new_job(f"job-{i}")
    await store.add("job-2", EventType.JOB_QUEUED)
    for status, want in (
        (None, ["job-4", "job-3", "job-2", "job-1", "job-0"]),
        ("waiting_for_files", ["job-4", "job-3", "job-1", "job-0"]),
    ):
        seen: list[str] = []
        pages = 0
        params: dict[str, str] = {"limit": "2"} | ({"status": status} if status else {})
        for _ in range(10):  # 3 pages; a cursor ignored would loop
            r = await client.get("/api/jobs", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            pages += 1
            seen += [j["job_id"] for j in body["jobs"]]
            if body["next_cursor"] is None:
                break
            assert len(body["jobs"]) == 2  # a cursor only after a full page
            params["cursor"] = body["next_cursor"]
        else:
            pytest.fail(f"paging did not end: {seen}")
        assert seen == want, status
        assert pages == (len(want) + 1) // 2  # no empty last page
    # a page that holds exactly the rest says so: no cursor to an empty page
    r = await client.get("/api/jobs", params={"limit": "5"})
    assert len(r.json()["jobs"]) == 5 and r.json()["next_cursor"] is None


@pytest.mark.parametrize("cursor", ["nope", "W10", "x" * 600])
async def test_a_cursor_the_api_did_not_give_is_a_400(
    client: httpx.AsyncClient, store: FakeJobStore, cursor: str
) -> None:
    await store.new_job("job-a")
    r = await client.get("/api/jobs", params={"cursor": cursor})
    assert r.status_code == 400
    error = r.json()["error"]
    assert "is not one this API gave" in error and "next_cursor" in error


async def test_unknown_jobs_routes_and_methods_are_json_errors(client: httpx.AsyncClient) -> None:
    for path in ("/api/jobs/job-nope", "/api/jobs/job-nope/events"):
        r = await client.get(path)
        assert r.status_code == 404 and "no job 'job-nope'" in r.json()["error"]
    r = await client.get("/api/nothing")
    assert r.status_code == 404 and "no such page" in r.json()["error"]
    r = await client.delete("/api/uploads")
    assert r.status_code == 405 and "DELETE is not allowed" in r.json()["error"]
    r = await client.post("/api/jobs/job-nope/events")
    assert r.status_code == 405 and "POST is not allowed" in r.json()["error"]


async def test_a_finished_jobs_stream_replays_everything_and_closes(
    client: httpx.AsyncClient, store: FakeJobStore
) -> None:
    await store.new_job("job-5")
    await store.add("job-5", EventType.JOB_QUEUED)
    await store.add("job-5", EventType.JOB_FAILED, error="boom\nsecond line")
    r = await client.get("/api/jobs/job-5/events")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    assert "content-length" not in r.headers  # a stream has no length
    blocks = [b for b in r.text.split("\n\n") if b]
    assert [b.split("\n")[:2] for b in blocks] == [
        ["id: 1", "event: job.created"],
        ["id: 2", "event: job.queued"],
        ["id: 3", "event: job.failed"],
    ]
    assert blocks[2].split("\n")[2] == 'data: {"error":"boom\\nsecond line"}'
    r = await client.get("/api/jobs/job-5/events", headers={"Last-Event-ID": "2"})
    assert [b.split("\n")[0] for b in r.text.split("\n\n") if b] == ["id: 3"]
    r = await client.get("/api/jobs/job-5/events?last_event_id=1")
    assert [b.split("\n")[0] for b in r.text.split("\n\n") if b] == ["id: 2", "id: 3"]
    r = await client.get("/api/jobs/job-5/events", headers={"Last-Event-ID": "x"})
    assert r.status_code == 400 and "Last-Event-ID" in r.json()["error"]
    # EventSource reconnects after every close: once it has the terminal event, 204 stops it.
    r = await client.get("/api/jobs/job-5/events", headers={"Last-Event-ID": "3"})
    assert r.status_code == 204 and r.content == b""
    # An id the job never sent: the client does not know how it ended (it was a 204 too).
    r = await client.get("/api/jobs/job-5/events", headers={"Last-Event-ID": "7"})
    assert r.status_code == 400 and "past the last event (3)" in r.json()["error"]


async def test_config_tells_the_page_the_templates_and_limits(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/config")
    assert r.json() == {
        "jobs_enabled": True,
        "auth": False,
        "templates": [{"name": "count", "description": "Lines", "steps": [{"name": "line-count"}]}],
        "max_file_bytes": 1000,
        "max_files": 3,
        "max_name_chars": 200,
        "allowed_extensions": [".txt", ".csv"],
        "allowed_content_types": ["text/plain", "text/csv"],
        "presign_expiry_s": 900,
    }
    assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_backend_failures_are_503_and_bugs_500_without_details(
    store: FakeJobStore, s3: FakeS3
) -> None:
    class Broken(FakeJobStore):
        async def get_job(self, job_id: str) -> Any:
            if job_id == "bug":
                raise RuntimeError("secret internals")
            raise S3flowError("the state store is unreachable")

    app = create_app(settings(), store=Broken(), s3=s3, consume_progress=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c,
    ):
        r = await c.get("/api/jobs/x")
        assert r.status_code == 503 and "unreachable" in r.json()["error"]
        r = await c.get("/api/jobs/bug")
        assert r.status_code == 500
        assert r.json() == {"error": "internal error: the server log has the details"}


async def test_fastapi_validation_errors_are_400_in_the_same_shape() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/n")
    async def n(count: int) -> dict[str, int]:
        return {"count": count}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        r = await c.get("/n", params={"count": "many"})
        assert r.status_code == 400
        assert r.json()["error"].startswith("bad request: query parameter 'count'")
        r = await c.get("/n")
        assert r.status_code == 400 and "'count'" in r.json()["error"]


async def test_with_tokens_the_api_needs_one(store: FakeJobStore, s3: FakeS3) -> None:
    from s3flow.web.auth import hash_token

    app = create_app(
        settings(tokens=[hash_token("t0k")]), store=store, s3=s3, consume_progress=False
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c,
    ):
        assert (await c.get("/api/config")).status_code == 401
        r = await c.get("/api/config", headers={"Authorization": "Bearer t0k"})
        assert r.status_code == 200 and r.json()["auth"] is True
        assert (await c.get("/healthz")).status_code == 200
