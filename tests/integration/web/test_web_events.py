"""GET /api/jobs/{id}/events on real servers: live, resumable, closing, on two instances."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from web_support import JobsEnv, SseReader, WebThread, append, until

from s3flow.aws import open_clients
from s3flow.jobs.progress import ProgressPublisher
from s3flow.state.jobs import EventType
from s3flow.state.sqlite import SqliteStateStore
from s3flow.web.server import GRACEFUL_S

pytestmark = pytest.mark.integration


async def new_job(client: httpx.AsyncClient, url: str) -> str:
    r = await client.post(
        f"{url}/api/uploads",
        json={
            "template": "count",
            "files": [{"name": "a.txt", "size": 4, "content_type": "text/plain"}],
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["job_id"])


async def test_events_appended_to_the_store_arrive_live_with_ids_1_to_n(
    web: WebThread, client: httpx.AsyncClient, store: SqliteStateStore
) -> None:
    job_id = await new_job(client, web.url)
    async with SseReader(client, f"{web.url}/api/jobs/{job_id}/events") as events:
        (created,) = await events.take(1)
        assert (created.id, created.event) == (1, "job.created")
        # Each event is seen before the next is written: live, not a replay at the end.
        for i in range(8):
            started = time.monotonic()
            await append(store, job_id, EventType.STEP_PROGRESS, step=0, bytes_done=i)
            (msg,) = await events.take(1, timeout_s=5)
            assert (msg.id, msg.event, msg.data["bytes_done"]) == (i + 2, "step.progress", i)
            assert time.monotonic() - started < 3
        await append(store, job_id, EventType.JOB_COMPLETED, outputs=[])
        rest = await events.end()
    assert [(m.id, m.event) for m in rest] == [(10, "job.completed")]
    assert [m.id for m in events.received] == list(range(1, 11))


async def test_a_dropped_stream_resumes_after_last_event_id_with_no_gap_and_no_duplicate(
    web: WebThread, client: httpx.AsyncClient, store: SqliteStateStore
) -> None:
    job_id = await new_job(client, web.url)
    url = f"{web.url}/api/jobs/{job_id}/events"
    hub = web.runtime.hub
    await append(store, job_id, EventType.FILE_RECEIVED, index=0)
    await append(store, job_id, EventType.JOB_QUEUED)
    async with SseReader(client, url) as first:
        seen = await first.take(3)
        await append(store, job_id, EventType.STEP_STARTED, step=0)
        seen += await first.take(1)
        assert hub.subscriber_count(job_id) == 1
    # The client is gone: the server notices and drops the subscription (and the job's reader).
    await until(lambda: hub.subscriber_count(job_id) == 0, 10, "the server to drop the stream")
    assert hub.channel_count() == 0
    for i in range(3):  # written while nobody listens
        await append(store, job_id, EventType.STEP_PROGRESS, step=0, bytes_done=i)
    async with SseReader(client, url, headers={"Last-Event-ID": str(seen[-1].id)}) as second:
        resumed = await second.take(3)
        await append(store, job_id, EventType.STEP_COMPLETED, step=0)
        await append(store, job_id, EventType.JOB_COMPLETED, outputs=[])
        resumed += await second.end()
    ids = [m.id for m in seen + resumed]
    assert ids == list(range(1, 10)), ids
    assert [m.event for m in resumed] == [
        "step.progress",
        "step.progress",
        "step.progress",
        "step.completed",
        "job.completed",
    ]
    # A first connection (no Last-Event-ID) replays the whole history, then closes: it ended.
    async with SseReader(client, url) as replay:
        assert [m.id for m in await replay.end()] == list(range(1, 10))
    await until(lambda: hub.channel_count() == 0, 10, "no reader left")
    # EventSource reconnects after a close; with the terminal event in hand it gets 204 (stop).
    r = await client.get(url, headers={"Last-Event-ID": "9"})
    assert r.status_code == 204


async def test_a_last_event_id_past_the_jobs_last_event_is_a_400(
    web: WebThread, client: httpx.AsyncClient, store: SqliteStateStore
) -> None:
    """It was taken: every later event, the end too, was skipped as sent, and the client
    reconnecting with it got 204: it never learnt how the job ended."""
    job_id = await new_job(client, web.url)  # event 1: job.created
    url = f"{web.url}/api/jobs/{job_id}/events"
    r = await client.get(url, headers={"Last-Event-ID": "999"})
    assert r.status_code == 400, r.text
    assert f"Last-Event-ID 999 is past the last event (1) of job '{job_id}'" in r.text
    # while this instance streams the job (its channel's head), and after it ended
    async with SseReader(client, url) as events:
        await events.take(1)
        again = await client.get(url, headers={"Last-Event-ID": "999"})
        assert again.status_code == 400, again.text
        await append(store, job_id, EventType.JOB_COMPLETED, outputs=[])
        assert [m.id for m in await events.end(timeout_s=10)] == [2]
    assert (await client.get(url, headers={"Last-Event-ID": "3"})).status_code == 400
    assert (await client.get(url, headers={"Last-Event-ID": "2"})).status_code == 204


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (EventType.JOB_COMPLETED, {"outputs": []}),
        (EventType.JOB_FAILED, {"error": "step 0 failed: boom"}),
        (EventType.JOB_EXPIRED, {"error": "a.txt never arrived"}),
    ],
)
async def test_the_stream_closes_after_the_terminal_event(
    web: WebThread,
    client: httpx.AsyncClient,
    store: SqliteStateStore,
    event: EventType,
    data: dict[str, Any],
) -> None:
    job_id = await new_job(client, web.url)
    async with SseReader(client, f"{web.url}/api/jobs/{job_id}/events") as events:
        await events.take(1)
        await append(store, job_id, event, **data)
        ended = await events.end(timeout_s=10)
    assert [(m.id, m.event) for m in ended] == [(2, str(event))]
    assert events.ended
    job = (await client.get(f"{web.url}/api/jobs/{job_id}")).json()
    assert job["status"] == {"job.completed": "completed"}.get(str(event), str(event)[4:])


async def test_two_instances_on_one_store_both_stream_every_event(
    jobs_env: JobsEnv, client: httpx.AsyncClient, store: SqliteStateStore
) -> None:
    settings = jobs_env.settings()
    with WebThread(settings) as one, WebThread(settings) as two:
        job_id = await new_job(client, one.url)
        async with (
            SseReader(client, f"{one.url}/api/jobs/{job_id}/events") as a,
            SseReader(client, f"{two.url}/api/jobs/{job_id}/events") as b,
        ):
            assert [m.id for m in await a.take(1)] == [1]
            assert [m.id for m in await b.take(1)] == [1]
            # A third party writes to the store: neither instance is told.
            for i in range(5):
                await append(store, job_id, EventType.STEP_PROGRESS, step=0, bytes_done=i)
            # One event through the progress queue: whichever instance consumes it,
            # the other still serves it (from the store).
            async with open_clients(settings.aws) as aws:
                publisher = ProgressPublisher(aws.sqs, jobs_env.progress_url, job_id)
                await publisher.publish(f"{job_id}:started", EventType.STEP_STARTED, {"step": 0})
            await append_after(store, job_id, 7, EventType.JOB_COMPLETED, outputs=[])
            got_a = await a.end(timeout_s=15)
            got_b = await b.end(timeout_s=15)
        assert [m.id for m in got_a] == list(range(2, 9))
        assert [(m.id, m.event) for m in got_a] == [(m.id, m.event) for m in got_b]
        assert got_a[5].event == "step.started"
        consumed = one.runtime.consumer, two.runtime.consumer
        assert all(c is not None for c in consumed)
        assert sum(c.consumed for c in consumed if c is not None) == 1


async def append_after(
    store: SqliteStateStore, job_id: str, seq: int, type_: EventType, **data: Any
) -> None:
    """Append once the job's log reaches ``seq`` (an event is on its way through the queue)."""
    deadline = time.monotonic() + 15
    while (job := await store.get_job(job_id)) is None or job.last_seq < seq:
        assert time.monotonic() < deadline, f"{job_id} never reached event {seq}"
        await asyncio.sleep(0.05)
    await append(store, job_id, type_, **data)


async def test_progress_queue_events_reach_the_stream_and_the_job(
    web: WebThread, client: httpx.AsyncClient, jobs_env: JobsEnv
) -> None:
    job_id = await new_job(client, web.url)
    async with (
        open_clients(web.settings.aws) as aws,
        SseReader(client, f"{web.url}/api/jobs/{job_id}/events") as events,
    ):
        await events.take(1)
        publisher = ProgressPublisher(aws.sqs, jobs_env.progress_url, job_id)
        await publisher.publish(f"{job_id}:queued", EventType.JOB_QUEUED, {})
        await publisher.publish(f"{job_id}:s0", EventType.STEP_STARTED, {"step": 0})
        await publisher.publish(
            f"{job_id}:p0",
            EventType.STEP_PROGRESS,
            {"step": 0, "bytes_done": 2, "bytes_total": 4, "files_done": 0},
        )
        got = await events.take(3, timeout_s=15)
        assert [(m.id, m.event) for m in got] == [
            (2, "job.queued"),
            (3, "step.started"),
            (4, "step.progress"),
        ]
        assert got[2].data == {"step": 0, "bytes_done": 2, "bytes_total": 4, "files_done": 0}
        job = (await client.get(f"{web.url}/api/jobs/{job_id}")).json()
        assert job["status"] == "running"
        # /metrics (Prometheus text): this stream is open, the consumer moved the events.
        scraped = (await client.get(f"{web.url}/metrics")).text
        values = {
            s.name: s.value for fam in text_string_to_metric_families(scraped) for s in fam.samples
        }
        assert values["s3flow_web_sse_subscribers"] >= 1
        assert values["s3flow_web_streamed_jobs"] >= 1
        assert values["s3flow_web_progress_events_total"] >= 3
        assert job["steps"] == [
            {
                "name": "line-count",
                "status": "running",
                "progress": {"bytes_done": 2, "bytes_total": 4, "files_done": 0},
            }
        ]


async def test_an_idle_stream_gets_comment_heartbeats(
    jobs_env: JobsEnv, client: httpx.AsyncClient
) -> None:
    with WebThread(jobs_env.settings(heartbeat_s=0.2), consume_progress=False) as web:
        job_id = await new_job(client, web.url)
        async with SseReader(client, f"{web.url}/api/jobs/{job_id}/events") as events:
            await events.take(1)
            await until(lambda: events.comments >= 3, 10, "three heartbeats")
            assert [m.id for m in events.received] == [1]


async def test_stopping_the_server_ends_open_streams_promptly(
    jobs_env: JobsEnv, client: httpx.AsyncClient
) -> None:
    web = WebThread(jobs_env.settings(), consume_progress=False).start()
    try:
        job_id = await new_job(client, web.url)
        async with (
            SseReader(client, f"{web.url}/api/jobs/{job_id}/events") as a,
            SseReader(client, f"{web.url}/api/jobs/{job_id}/events") as b,
        ):
            await a.take(1)
            await b.take(1)
            took = await asyncio.to_thread(web.stop)
            await until(lambda: a.ended and b.ended, 5, "both streams to end")
    finally:
        if web.server is not None and not web.server.should_exit:
            web.stop()
    assert took < GRACEFUL_S / 2, f"stopping took {took:.1f}s: the streams held it open"
