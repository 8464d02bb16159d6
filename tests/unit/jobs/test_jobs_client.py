"""The upload client's pure parts: the SSE parser and where it finds the API."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3flow.jobs.client import api_url, parse_sse


def test_parse_sse_events_comments_and_multiline_data() -> None:
    lines = [
        ": heartbeat",
        "",
        "id: 1",
        "event: job.created",
        'data: {"a": 1}',
        "",
        "id: 2",
        "event: step.progress",
        'data: {"b":',
        "data: 2}",
        "",
        "id: 3",
        "event: x",
        "data: not json",
        "",
    ]
    events = list(parse_sse(iter(lines)))
    assert [(e.id, e.event) for e in events] == [(1, "job.created"), (2, "step.progress"), (3, "x")]
    assert events[0].data == {"a": 1}
    assert events[1].data == {"b": 2}
    assert events[2].data == {"raw": "not json"}


def test_api_url_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S3FLOW_WEB_URL", raising=False)
    assert api_url(None, None) == "http://127.0.0.1:8080"
    assert api_url(None, "http://cfg:1/") == "http://cfg:1"
    monkeypatch.setenv("S3FLOW_WEB_URL", "http://env:2")
    assert api_url(None, "http://cfg:1") == "http://env:2"
    assert api_url("http://flag:3", "http://cfg:1") == "http://flag:3"


def test_steps_are_counted_from_one_as_on_the_web_page() -> None:
    """`s3flow upload` said "step 0" where the page and the template errors say step 1."""
    from s3flow.jobs.client import SseEvent, describe

    started = SseEvent(3, "step.started", {"step": 0, "name": "line-count"})
    done = SseEvent(5, "step.completed", {"step": 1, "name": "zip", "outputs": 1})
    progress = SseEvent(4, "step.progress", {"step": 0, "bytes_done": 5, "bytes_total": 9})
    assert describe(started) == "step 1 line-count"
    assert describe(done) == "step 2 zip (1 output)"
    assert describe(progress) == "step 1: 5/9 bytes"


def test_two_files_of_one_name_are_named_by_their_paths(tmp_path: Path) -> None:
    """The server refuses a name twice; it said "'a.txt' is listed twice", not which."""
    import httpx

    from s3flow.errors import S3flowError
    from s3flow.jobs.client import create_upload

    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "a.txt").write_bytes(b"x\n")
    files = [tmp_path / "d1" / "a.txt", tmp_path / "d2" / "a.txt"]
    with httpx.Client() as client, pytest.raises(S3flowError) as err:
        create_upload(client, "http://127.0.0.1:9", {}, "zip", files, lambda p: "text/plain")
    assert f"{files[0]} and {files[1]} have the same file name 'a.txt'" in str(err.value)


def test_a_file_refused_as_expired_is_sent_again_with_fresh_urls(tmp_path: Path) -> None:
    """Storage's "Policy expired" (a clock ahead of ours, a slow start) failed the file
    for good; now the client asks for fresh URLs once and sends it again."""
    import httpx

    from s3flow.jobs.client import UploadUrls, send_file

    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path == "/api/jobs/job-1/uploads":
            body = {"job_id": "job-1", "expires_in_s": 900}
            return httpx.Response(
                200,
                json={
                    **body,
                    "files": [{"key": "k", "url": "http://s3/b", "fields": {"policy": "new"}}],
                },
            )
        if b"old" in request.content:
            return httpx.Response(
                403, text="<Error><Message>Invalid according to Policy: Policy expired.</Message>"
            )
        return httpx.Response(204)

    created = {
        "job_id": "job-1",
        "expires_in_s": 900,
        "files": [{"key": "k", "url": "http://s3/b", "fields": {"policy": "old"}}],
    }
    path = tmp_path / "a.txt"
    path.write_bytes(b"x\n")
    restarts: list[bool] = []
    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        urls = UploadUrls(client, "http://api", {}, created, asked_at=0.0, clock=lambda: 1.0)
        send_file(client, urls, "k", path, lambda n: None, lambda: restarts.append(True))
    assert seen == ["POST /b", "POST /api/jobs/job-1/uploads", "POST /b"]
    assert restarts == [True]


def test_fresh_urls_refused_say_why() -> None:
    import httpx

    from s3flow.errors import S3flowError
    from s3flow.jobs.client import UploadUrls

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(409, json={"error": "job job-1 is expired, not waiting for files"})

    created = {"job_id": "job-1", "expires_in_s": 60, "files": []}
    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        # 60 s URLs: renewed when less than 15 s (a quarter) is left
        urls = UploadUrls(client, "http://api", {}, created, asked_at=0.0, clock=lambda: 44.0)
        assert urls.post_for("k") is None  # 16 s left: not renewed (and not a file of the job)
        # 14 s left: renewed early, refused, and the URLs in hand still serve
        urls = UploadUrls(client, "http://api", {}, created, asked_at=0.0, clock=lambda: 46.0)
        assert urls.post_for("k") is None
        with pytest.raises(S3flowError, match=r"refused \(HTTP 409\): job job-1 is expired"):
            urls.post_for("k", renew=True)
        urls = UploadUrls(client, "http://api", {}, created, asked_at=0.0, clock=lambda: 61.0)
        with pytest.raises(S3flowError, match=r"refused \(HTTP 409\)"):
            urls.post_for("k")  # past their life: nothing to send with
