"""POST /upload (one file through the server, no JavaScript) on a real server and the emulator.

What ``curl -F file=@report.txt`` sends, sent with httpx: the file lands at its job's
upload key, refusals store nothing and create no job, limits hold while the body streams.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from web_support import JobsEnv, WebThread

from s3flow.settings import load_settings
from s3flow.web.auth import hash_token
from s3flow.web.form import FORM_OVERHEAD_BYTES

pytestmark = pytest.mark.integration

TOKEN = "form-test-token-abcdef"


def keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def multipart(boundary: str, parts: list[tuple[str, str | None, str, bytes]]) -> bytes:
    """A multipart/form-data body: (field, filename or None, content type, value) per part."""
    out = b""
    for name, filename, ctype, value in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def test_one_file_becomes_a_job_and_lands_at_its_upload_key(
    web: WebThread, client: httpx.AsyncClient, jobs_env: JobsEnv, s3: Any
) -> None:
    body = b"one\ntwo\nthree\n"
    r = await client.post(
        f"{web.url}/upload",
        files={"file": ("report.txt", body, "text/plain")},
    )
    assert r.status_code == 201, r.text
    answer = r.json()
    job_id, upload_id = answer["job_id"], answer["upload_id"]
    assert answer == {
        "key": f"uploads/{upload_id}/0-report.txt",
        "bucket": jobs_env.bucket,
        "name": "report.txt",
        "size": len(body),
        "content_type": "text/plain",
        "template": "count",  # the first template: none was named
        "job_id": job_id,
        "upload_id": upload_id,
        "job_url": f"/jobs/{job_id}",
        "status_url": f"/api/jobs/{job_id}",
        "events_url": f"/api/jobs/{job_id}/events",
    }
    stored = s3.get_object(Bucket=jobs_env.bucket, Key=answer["key"])
    assert stored["Body"].read() == body and stored["ContentType"] == "text/plain"
    job = (await client.get(f"{web.url}{answer['status_url']}")).json()
    assert job["template"] == "count" and job["status"] == "waiting_for_files"
    assert [(f["name"], f["size"]) for f in job["files"]] == [("report.txt", len(body))]


async def test_named_template_and_a_generic_content_type_guessed_from_the_name(
    web: WebThread, client: httpx.AsyncClient, jobs_env: JobsEnv, s3: Any
) -> None:
    r = await client.post(
        f"{web.url}/upload",
        data={"template": "count"},
        files={"file": ("table 1.csv", b"a,b\n1,2\n", "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    answer = r.json()
    assert answer["key"].endswith("/0-table_1.csv") and answer["content_type"] == "text/csv"
    head = s3.head_object(Bucket=jobs_env.bucket, Key=answer["key"])
    assert head["ContentType"] == "text/csv"


async def test_a_file_spooled_to_disk_is_stored_intact(
    jobs_env: JobsEnv, client: httpx.AsyncClient, s3: Any
) -> None:
    data = jobs_env.data()
    data["jobs"]["max_file_bytes"] = 3 * 1024 * 1024
    body = bytes(range(256)) * (2 * 1024 * 1024 // 256 + 7)  # > the 1 MiB kept in memory
    with WebThread(load_settings(None, data)) as web:
        r = await client.post(
            f"{web.url}/upload", files={"file": ("big.csv", body, "text/csv")}, timeout=30
        )
    assert r.status_code == 201, r.text
    assert r.json()["size"] == len(body)
    stored = s3.get_object(Bucket=jobs_env.bucket, Key=r.json()["key"])["Body"].read()
    assert stored == body


REFUSED = [
    ("extension", {"file": ("evil.exe", b"MZ", "text/plain")}, {}, "extension '.exe'"),
    ("template", {"file": ("a.txt", b"a\n", "text/plain")}, {"template": "nope"}, "unknown"),
    ("empty", {"file": ("a.txt", b"", "text/plain")}, {}, "empty files"),
    ("content type", {"file": ("a.txt", b"a\n", "image/png")}, {}, "content type 'image/png'"),
    ("no file", {"template": (None, b"count")}, {}, "no file in the form"),
    ("field name", {"upload": ("a.txt", b"a\n", "text/plain")}, {}, "field named 'file'"),
    ("path", {"file": ("../a.txt", b"a\n", "text/plain")}, {}, "path separator"),
]


@pytest.mark.parametrize(
    ("files", "data", "message"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
async def test_refusals_store_nothing(
    shared_web: WebThread,
    client: httpx.AsyncClient,
    s3: Any,
    files: dict[str, Any],
    data: dict[str, str],
    message: str,
) -> None:
    jobs = shared_web.settings.jobs
    assert jobs is not None
    r = await client.post(f"{shared_web.url}/upload", data=data, files=files)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert keys(s3, jobs.bucket) == []
    listed = (await client.get(f"{shared_web.url}/api/jobs")).json()["jobs"]
    assert listed == []


async def test_two_files_or_no_multipart_are_refused(
    shared_web: WebThread, client: httpx.AsyncClient
) -> None:
    r = await client.post(
        f"{shared_web.url}/upload",
        files=[
            ("file", ("a.txt", b"a\n", "text/plain")),
            ("file", ("b.txt", b"b\n", "text/plain")),
        ],
    )
    assert r.status_code == 400 and "one file per request" in r.json()["error"]
    r = await client.post(f"{shared_web.url}/upload", json={"file": "a.txt"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]


async def test_too_large_is_413_declared_or_while_streaming(
    shared_web: WebThread, client: httpx.AsyncClient, s3: Any
) -> None:
    jobs = shared_web.settings.jobs
    assert jobs is not None
    limit = jobs.max_file_bytes
    url = f"{shared_web.url}/upload"
    # One byte over: the declared length is within the form's slack, the count is not.
    r = await client.post(url, files={"file": ("big.txt", b"x" * (limit + 1), "text/plain")})
    assert r.status_code == 413, r.text
    assert f"larger than the {limit} bytes" in r.json()["error"]
    # A declared length far beyond it: refused before the body is read.
    huge = b"x" * (limit + FORM_OVERHEAD_BYTES + 1)
    r = await client.post(url, files={"file": ("huge.txt", huge, "text/plain")})
    assert r.status_code == 413, r.text
    # No length at all (chunked): counted while it streams in.
    boundary = uuid.uuid4().hex
    body = multipart(boundary, [("file", "chunked.txt", "text/plain", b"y" * (limit * 5))])

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 512):
            yield body[i : i + 512]

    r = await client.post(
        url,
        content=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413, r.text
    assert keys(s3, jobs.bucket) == []
    assert (await client.get(f"{shared_web.url}/healthz")).status_code == 200


async def test_with_tokens_a_bearer_or_a_token_field_before_the_file(
    jobs_env: JobsEnv, client: httpx.AsyncClient, s3: Any
) -> None:
    file = {"file": ("a.txt", b"a\n", "text/plain")}
    with WebThread(jobs_env.settings(tokens=[hash_token(TOKEN)])) as web:
        url = f"{web.url}/upload"
        r = await client.post(url, files=file)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "token" in r.json()["error"]
        r = await client.post(url, files=file, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "not accepted" in r.json()["error"]
        r = await client.post(url, files=file, data={"token": "wrong"})
        assert r.status_code == 401 and "not accepted" in r.json()["error"]
        # A token field after the file comes too late: nothing is read without one.
        boundary = uuid.uuid4().hex
        late = multipart(
            boundary,
            [("file", "a.txt", "text/plain", b"a\n"), ("token", None, "", TOKEN.encode())],
        )
        r = await client.post(
            url,
            content=late,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == 401 and "before the file" in r.json()["error"]
        assert keys(s3, jobs_env.bucket) == []

        r = await client.post(url, files=file, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 201, r.text
        r = await client.post(url, files=file, data={"token": TOKEN})  # the HTML form's way
        assert r.status_code == 201, r.text
        assert len(keys(s3, jobs_env.bucket)) == 2
