"""POST /api/uploads and the job routes on a real server, files POSTed straight to the emulator."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from web_support import JobsEnv, SseReader, WebThread, append

from s3flow.local.endpoint import LocalEndpoint
from s3flow.state.jobs import EventType
from s3flow.state.sqlite import SqliteStateStore

pytestmark = pytest.mark.integration


def declared(*files: tuple[str, bytes, str]) -> list[dict[str, Any]]:
    return [{"name": n, "size": len(b), "content_type": t} for n, b, t in files]


async def create_job(
    client: httpx.AsyncClient, web: WebThread, *files: tuple[str, bytes, str]
) -> dict[str, Any]:
    """`POST /api/uploads` of template "count" declaring ``files``: the answer."""
    r = await client.post(
        f"{web.url}/api/uploads", json={"template": "count", "files": declared(*files)}
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_an_upload_is_presigned_posted_to_the_emulator_and_becomes_a_job(
    web: WebThread, client: httpx.AsyncClient, jobs_env: JobsEnv, s3: Any, endpoint: LocalEndpoint
) -> None:
    files = [("a.txt", b"one\ntwo\n", "text/plain"), ("b c.csv", b"x,y\n1,2\n3,4\n", "text/csv")]
    r = await client.post(
        f"{web.url}/api/uploads", json={"template": "count", "files": declared(*files)}
    )
    assert r.status_code == 201, r.text
    created = r.json()
    upload_id, job_id = created["upload_id"], created["job_id"]
    assert [f["key"] for f in created["files"]] == [
        f"uploads/{upload_id}/0-a.txt",
        f"uploads/{upload_id}/1-b_c.csv",
    ]
    for (name, body, ctype), post in zip(files, created["files"], strict=True):
        assert post["name"] == name
        assert urlsplit(post["url"]).netloc == urlsplit(endpoint.url).netloc
        assert post["fields"]["key"] == post["key"]
        assert post["fields"]["Content-Type"] == ctype
        up = await client.post(
            post["url"], data=post["fields"], files={"file": (name, body, ctype)}
        )
        assert up.status_code in (200, 201, 204), up.text
        head = s3.head_object(Bucket=jobs_env.bucket, Key=post["key"])
        assert head["ContentLength"] == len(body) and head["ContentType"] == ctype
        stored = s3.get_object(Bucket=jobs_env.bucket, Key=post["key"])["Body"].read()
        assert stored == body

    job = (await client.get(f"{web.url}/api/jobs/{job_id}")).json()
    assert job["job_id"] == job_id and job["upload_id"] == upload_id
    assert job["template"] == "count" and job["status"] == "waiting_for_files"
    assert [(f["name"], f["received"]) for f in job["files"]] == [
        ("a.txt", False),
        ("b c.csv", False),
    ]  # no bridge runs here: nothing marks them received
    assert job["steps"] == [{"name": "line-count", "status": "pending", "progress": {}}]
    assert job["outputs"] == [] and job["error"] is None

    listed = (
        await client.get(f"{web.url}/api/jobs", params={"status": "waiting_for_files"})
    ).json()
    assert job_id in [j["job_id"] for j in listed["jobs"]]
    none = (await client.get(f"{web.url}/api/jobs", params={"status": "completed"})).json()
    assert job_id not in [j["job_id"] for j in none["jobs"]]

    async with SseReader(client, f"{web.url}/api/jobs/{job_id}/events") as events:
        (first,) = await events.take(1)
    assert (first.id, first.event) == (1, "job.created")
    assert first.data["upload_id"] == upload_id and first.data["template"] == "count"


BAD = [
    (
        "unknown template",
        {"template": "nope", "files": [("a.txt", 5, "text/plain")]},
        "unknown template",
    ),
    ("extension", {"template": "count", "files": [("a.exe", 5, "text/plain")]}, "extension '.exe'"),
    ("content type", {"template": "count", "files": [("a.txt", 5, "image/png")]}, "content type"),
    ("too large", {"template": "count", "files": [("a.txt", 1001, "text/plain")]}, "1001 bytes"),
    (
        "too many",
        {"template": "count", "files": [(f"{i}.txt", 5, "text/plain") for i in range(4)]},
        "4 files is more than the 3",
    ),
    ("slash", {"template": "count", "files": [("../a.txt", 5, "text/plain")]}, "path separator"),
    (
        "backslash",
        {"template": "count", "files": [("c:\\a.txt", 5, "text/plain")]},
        "path separator",
    ),
    (
        "control",
        {"template": "count", "files": [("a\x1b.txt", 5, "text/plain")]},
        "control character",
    ),
    ("shape", {"template": "count", "files": "a.txt"}, '"files" must be a non-empty list'),
    ("size", {"template": "count", "files": [("a.txt", "5", "text/plain")]}, '"size" must be'),
]


@pytest.mark.parametrize(("case", "body", "says"), BAD, ids=[b[0] for b in BAD])
async def test_the_bad_request_table(
    shared_web: WebThread, client: httpx.AsyncClient, case: str, body: dict[str, Any], says: str
) -> None:
    if isinstance(body["files"], list):
        body = {
            **body,
            "files": [{"name": n, "size": s, "content_type": t} for n, s, t in body["files"]],
        }
    url = shared_web.url
    r = await client.post(f"{url}/api/uploads", json=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    assert says in r.json()["error"]
    assert (await client.get(f"{url}/api/jobs")).json() == {"jobs": [], "next_cursor": None}


UNENCODABLE = [
    ("name", '{"template": "count", "files": [{"name": "\\ud800.txt", "size": 5}]}', "name"),
    (
        "content type",
        '{"template": "count", "files": '
        '[{"name": "a.txt", "size": 5, "content_type": "text/\\udfff"}]}',
        "content_type",
    ),
    ("template", '{"template": "\\ud800", "files": [{"name": "a.txt", "size": 5}]}', "template"),
]


@pytest.mark.parametrize(("case", "body", "says"), UNENCODABLE, ids=[u[0] for u in UNENCODABLE])
async def test_text_utf8_cannot_hold_is_refused_and_breaks_no_listing(
    shared_web: WebThread, client: httpx.AsyncClient, case: str, body: str, says: str
) -> None:
    """JSON decodes a lone surrogate (``"\\ud800"``) that UTF-8 cannot hold: stored, it
    made every later answer listing the job a 500 (``GET /api/jobs`` for everyone)."""
    url = shared_web.url
    r = await client.post(
        f"{url}/api/uploads", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert says in r.json()["error"] and "not valid Unicode" in r.json()["error"]
    listed = await client.get(f"{url}/api/jobs")
    assert listed.status_code == 200 and listed.json() == {"jobs": [], "next_cursor": None}


async def test_an_event_whose_text_utf8_cannot_hold_breaks_no_answer(
    web: WebThread, client: httpx.AsyncClient, store: SqliteStateStore
) -> None:
    """An event's text from elsewhere (a step's error with an undecodable byte, kept by
    ``surrogateescape``) made the job's answer and every listing including it a 500."""
    created = await client.post(
        f"{web.url}/api/uploads",
        json={
            "template": "count",
            "files": [{"name": "a.txt", "size": 5, "content_type": "text/plain"}],
        },
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    error = "bad header 'col\udcff'"
    await append(store, job_id, EventType.JOB_FAILED, error=error)
    one = await client.get(f"{web.url}/api/jobs/{job_id}")
    assert one.status_code == 200, one.text
    assert one.json()["status"] == "failed" and one.json()["error"] == error
    listed = await client.get(f"{web.url}/api/jobs")
    assert listed.status_code == 200, listed.text
    assert [j["error"] for j in listed.json()["jobs"]] == [error]


async def test_json_nested_too_deeply_is_a_400(
    shared_web: WebThread, client: httpx.AsyncClient
) -> None:
    r = await client.post(
        f"{shared_web.url}/api/uploads",
        content=b"[" * 100_000,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]


async def test_without_tokens_only_loopback_names_and_pages_are_served(
    shared_web: WebThread, client: httpx.AsyncClient
) -> None:
    """A server without tokens listens on loopback, but a browser on this machine could
    still be made to reach it: by DNS rebinding (a foreign name in Host), or by a foreign
    page posting to it (a text/plain POST needs no CORS preflight). Both are refused."""
    url = shared_web.url
    body = {"template": "count", "files": declared(("a.txt", b"1\n", "text/plain"))}
    before = (await client.get(f"{url}/api/jobs")).json()
    for path in ("/api/jobs", "/api/jobs/x/events", "/jobs"):
        r = await client.get(f"{url}{path}", headers={"Host": "rebound.example:80"})
        assert r.status_code == 403, path
        assert "not to 'rebound.example:80'" in r.json()["error"]
        assert "[web] tokens" in r.json()["error"]
    r = await client.post(
        f"{url}/api/uploads",
        content=json.dumps(body),
        headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
    )
    assert r.status_code == 403 and "'https://evil.example'" in r.json()["error"]
    assert (await client.get(f"{url}/api/jobs")).json() == before  # nothing was created
    # Its own page (a loopback origin) and clients without an Origin are served.
    own = await client.post(f"{url}/api/uploads", json=body, headers={"Origin": url})
    assert own.status_code == 201, own.text
    assert (await client.post(f"{url}/api/uploads", json=body)).status_code == 201
    local = await client.get(f"{url}/api/jobs", headers={"Host": "localhost"})
    assert local.status_code == 200


async def test_not_json_unknown_jobs_and_bad_statuses_are_json_errors(
    shared_web: WebThread, client: httpx.AsyncClient
) -> None:
    url = shared_web.url
    r = await client.post(
        f"{url}/api/uploads", content=b"template=count", headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    for path in ("/api/jobs/job-0000", "/api/jobs/job-0000/events"):
        r = await client.get(f"{url}{path}")
        assert r.status_code == 404 and "no job 'job-0000'" in r.json()["error"]
    r = await client.get(f"{url}/api/jobs", params={"status": "finished"})
    assert r.status_code == 400
    assert "waiting_for_files, queued, running, completed, failed, expired" in r.json()["error"]
    r = await client.get(f"{url}/nope")
    assert r.status_code == 404 and "error" in r.json()


@pytest.mark.parametrize(
    "limit", ["\u00b2", "\u0663", "\uff11", "0", "501", "-1", "1.5", "x", "9" * 30]
)
async def test_a_limit_that_is_not_1_to_500_in_ascii_digits_is_a_400(
    shared_web: WebThread, client: httpx.AsyncClient, limit: str
) -> None:
    # "²", Arabic-Indic 3 and fullwidth 1 pass str.isdigit() but not int() (was a 500).
    r = await client.get(f"{shared_web.url}/api/jobs", params={"limit": limit})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "not a whole number from 1 to 500" in error and "?limit=50" in error
    ok = await client.get(f"{shared_web.url}/api/jobs", params={"limit": "500"})
    assert ok.status_code == 200


async def test_outputs_are_downloadable_through_their_presigned_urls(
    web: WebThread,
    client: httpx.AsyncClient,
    jobs_env: JobsEnv,
    s3: Any,
    store: SqliteStateStore,
) -> None:
    job_id = (await create_job(client, web, ("a.txt", b"one\n", "text/plain")))["job_id"]
    key = f"outputs/{job_id}/a.counts.json"
    s3.put_object(Bucket=jobs_env.bucket, Key=key, Body=b'{"lines": 1}')
    await append(store, job_id, EventType.JOB_QUEUED)
    await append(
        store,
        job_id,
        EventType.JOB_COMPLETED,
        outputs=[{"name": "a.counts.json", "key": key, "bucket": jobs_env.bucket, "size": 12}],
    )
    job = (await client.get(f"{web.url}/api/jobs/{job_id}")).json()
    assert job["status"] == "completed"
    (output,) = job["outputs"]
    assert output["name"] == "a.counts.json" and output["size"] == 12
    got = await client.get(output["url"])
    assert got.status_code == 200 and got.content == b'{"lines": 1}'
    assert "a.counts.json" in got.headers.get("content-disposition", "")
    listed = (await client.get(f"{web.url}/api/jobs", params={"status": "completed"})).json()
    assert [j["job_id"] for j in listed["jobs"]] == [job_id]


async def test_config_and_health(shared_web: WebThread, client: httpx.AsyncClient) -> None:
    url = shared_web.url
    config = (await client.get(f"{url}/api/config")).json()
    assert config["templates"] == [
        {"name": "count", "description": "Count lines", "steps": [{"name": "line-count"}]}
    ]
    assert config["max_file_bytes"] == 1000 and config["max_files"] == 3
    assert config["max_name_chars"] == 200
    assert config["allowed_extensions"] == [".txt", ".csv"]
    assert config["allowed_content_types"] == ["text/plain", "text/csv"]
    assert config["auth"] is False
    assert (await client.get(f"{url}/healthz")).json() == {"status": "ok"}


async def test_fresh_upload_urls_for_the_files_not_yet_received(
    web: WebThread,
    client: httpx.AsyncClient,
    jobs_env: JobsEnv,
    s3: Any,
    store: SqliteStateStore,
) -> None:
    """Upload URLs were signed once: a client whose later files started after
    ``presign_expiry_s`` had nothing to ask for new ones with."""
    files = [("a.txt", b"one\n", "text/plain"), ("b.txt", b"two\n2\n", "text/plain")]
    created = await create_job(client, web, *files)
    assert created["expires_in_s"] == 900
    job_id = created["job_id"]
    await append(store, job_id, EventType.FILE_RECEIVED, index=0, name="a.txt")

    r = await client.post(f"{web.url}/api/jobs/{job_id}/uploads")
    assert r.status_code == 200, r.text
    again = r.json()
    assert (again["job_id"], again["upload_id"]) == (job_id, created["upload_id"])
    assert [f["key"] for f in again["files"]] == [created["files"][1]["key"]]
    assert 0 < again["expires_in_s"] <= 900
    (post,) = again["files"]
    up = await client.post(post["url"], data=post["fields"], files={"file": ("b.txt", files[1][1])})
    assert up.status_code in (200, 201, 204), up.text
    stored = s3.get_object(Bucket=jobs_env.bucket, Key=post["key"])["Body"].read()
    assert stored == files[1][1]

    r = await client.post(f"{web.url}/api/jobs/job-0000/uploads")
    assert r.status_code == 404 and "no job 'job-0000'" in r.json()["error"]
    await append(store, job_id, EventType.JOB_EXPIRED, error="b.txt never arrived")
    r = await client.post(f"{web.url}/api/jobs/{job_id}/uploads")
    assert r.status_code == 409, r.text
    assert "is expired, not waiting for files: create a new upload" in r.json()["error"]


def test_the_upload_client_renews_urls_near_their_end_and_sends_with_them(
    web: WebThread, jobs_env: JobsEnv, s3: Any, tmp_path: Any
) -> None:
    """`s3flow upload` sends files one by one: with many files over a slow link, the
    last ones started after their URLs had expired."""
    from s3flow.jobs.client import UploadUrls, create_upload, send_file

    paths = []
    for name, body in [("a.txt", b"1\n"), ("b.txt", b"2\n2\n")]:
        paths.append(tmp_path / name)
        paths[-1].write_bytes(body)
    asked: list[str] = []
    now = [100.0]
    with httpx.Client(
        timeout=10, event_hooks={"request": [lambda r: asked.append(f"{r.method} {r.url.path}")]}
    ) as sync:
        created = create_upload(sync, web.url, {}, "count", paths, lambda p: "text/plain")
        urls = UploadUrls(sync, web.url, {}, created, asked_at=100.0, clock=lambda: now[0])
        assert urls.deadline == 100.0 + created["expires_in_s"]
        for i, path in enumerate(paths):
            if i == 1:
                now[0] = urls.deadline - 30  # less than a minute left: renewed first
            send_file(sync, urls, created["files"][i]["key"], path, lambda n: None, lambda: None)
    job_id = created["job_id"]
    assert [a for a in asked if "/api/" in a] == [
        "POST /api/uploads",
        f"POST /api/jobs/{job_id}/uploads",
    ]
    assert urls.deadline > now[0]
    for path, post in zip(paths, created["files"], strict=True):
        got = s3.get_object(Bucket=jobs_env.bucket, Key=post["key"])["Body"].read()
        assert got == path.read_bytes()
