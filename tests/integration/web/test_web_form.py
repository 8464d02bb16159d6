"""POST /upload (one file through the server, no JavaScript) on a real server and the emulator.

What ``curl -F file=@report.txt`` sends, sent with httpx: the file lands at its job's
upload key, refusals store nothing and create no job, limits hold while the body streams.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from web_support import JobsEnv, WebThread, until

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
    # A Content-Type set by hand, without its boundary: said so (it advised multipart).
    r = await client.post(
        f"{shared_web.url}/upload",
        content=b"x",
        headers={"Content-Type": "multipart/form-data"},
    )
    assert r.status_code == 400 and "has no boundary" in r.json()["error"], r.text


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


async def test_a_boundary_over_256_bytes_is_a_clear_400(
    shared_web: WebThread, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """python-multipart refuses such a boundary when its parser is built, before any
    byte is fed: that was answered 500 and logged as a server bug."""
    boundary = "b" * 257
    body = multipart(boundary, [("file", "a.txt", "text/plain", b"a\n")])
    with caplog.at_level(logging.INFO):
        r = await client.post(
            f"{shared_web.url}/upload",
            content=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    assert r.status_code == 400, r.text
    assert "the multipart body is malformed" in r.json()["error"]
    assert "257" in r.json()["error"]
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR] == []


async def test_without_tokens_a_bearer_is_ignored_as_on_the_api(
    web: WebThread, client: httpx.AsyncClient, jobs_env: JobsEnv, s3: Any
) -> None:
    """A client that always sends its token got 401 from /upload (and not from
    /api/uploads) on a server without [web] tokens."""
    auth = {"Authorization": "Bearer some-token-from-the-environment"}
    r = await client.post(
        f"{web.url}/upload", files={"file": ("a.txt", b"a\n", "text/plain")}, headers=auth
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        f"{web.url}/api/uploads",
        json={
            "template": "count",
            "files": [{"name": "b.txt", "size": 2, "content_type": "text/plain"}],
        },
        headers=auth,
    )
    assert r.status_code == 201, r.text
    assert len(keys(s3, jobs_env.bucket)) == 1  # the form's file (the API's is presigned)


async def _send_and_leave(url: str, head: bytes, part: bytes) -> None:
    """Send a request's head and part of its body, then close the connection."""
    host, _, port = url.removeprefix("http://").partition(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + part)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_a_client_that_leaves_mid_body_is_no_server_error(
    shared_web: WebThread, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A cancelled upload (the client closes the connection mid-body) was answered as a
    bug: an ERROR with two tracebacks per request (s3flow's and uvicorn's)."""
    form = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nhello"
    )
    requests = [
        (
            b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 900\r\n\r\n",
            form,
        ),
        (
            b"POST /api/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
            b'{"template":',
        ),
    ]

    def left() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "left before sending" in r.getMessage()]

    with caplog.at_level(logging.INFO):
        for head, part in requests:
            await _send_and_leave(shared_web.url, head, part)
        await until(lambda: len(left()) == 2, what="both departures logged")
        assert (await client.get(f"{shared_web.url}/healthz")).status_code == 200
    assert {r.levelno for r in left()} == {logging.INFO}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
