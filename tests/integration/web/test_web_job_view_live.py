"""The job view against a real `s3flow web` (in a thread) whose events a test writes to the
store itself: new attempts of a step, failed and expired jobs, a server that is away or
answers 5xx, a job that is gone, hidden tabs. Debian's Chromium through Playwright; some
answers are replaced by Playwright routes (a 503, a refused connection, a 404).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect
from web_support import JobsEnv, WebThread

from s3flow.settings import load_settings
from s3flow.state.jobs import EventType
from s3flow.state.sqlite import SqliteStateStore

pytestmark = pytest.mark.integration
expect.set_options(timeout=10_000)


@pytest.fixture()
def context(browser: Browser) -> Iterator[BrowserContext]:
    """One browser context (one connection pool); the test fails on an uncaught script error."""
    ctx = browser.new_context()
    ctx.set_default_timeout(10_000)
    errors: list[str] = []
    ctx.on("page", lambda p: p.on("pageerror", lambda exc: errors.append(str(exc))))
    yield ctx
    ctx.close()
    assert errors == [], f"script errors on the page: {errors}"


@pytest.fixture()
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture()
def web(jobs_env: JobsEnv) -> Iterator[WebThread]:
    """The web app of ``jobs_env`` with a second template, ``two``: two steps."""
    data = jobs_env.data()
    two = {"name": "two", "steps": [{"processor": "line-count"}, {"processor": "line-count"}]}
    data["templates"] = [*data["templates"], two]
    with WebThread(load_settings(None, data)) as server:
        yield server


class Log:
    """Appends events to a job's log as a third party (the bridge or the consumer would)."""

    def __init__(self, env: JobsEnv) -> None:
        self.env = env
        # Playwright's sync API owns this thread's event loop: the store runs in another.
        self._pool = concurrent.futures.ThreadPoolExecutor(1)

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self._pool.submit(asyncio.run, coro).result(30)

    def add(self, job_id: str, type_: EventType, **data: Any) -> int:
        """Append one event; its seq."""

        async def go() -> int:
            async with SqliteStateStore(self.env.db) as store:
                event, new = await store.append_event(
                    job_id, event_id=f"{job_id}:{uuid.uuid4().hex}", type=type_, data=data
                )
                assert event is not None and new, f"{type_} was not appended to {job_id}"
                return event.seq

        seq: int = self._run(go())
        return seq

    def close(self) -> None:
        self._pool.shutdown()


@pytest.fixture()
def log(jobs_env: JobsEnv) -> Iterator[Log]:
    events = Log(jobs_env)
    yield events
    events.close()


def new_job(url: str, template: str = "count") -> str:
    r = httpx.post(
        f"{url}/api/uploads",
        json={
            "template": template,
            "files": [{"name": "a.txt", "size": 3, "content_type": "text/plain"}],
        },
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["job_id"])


def running_job(web: WebThread, log: Log, template: str = "count") -> str:
    """A job whose first step runs (attempt 1): seq 4 is its step.started."""
    job_id = new_job(web.url, template)
    log.add(job_id, EventType.FILE_RECEIVED, index=0, name="a.txt", key="k", size=3)
    log.add(job_id, EventType.JOB_QUEUED, files=1)
    log.add(job_id, EventType.STEP_STARTED, step=0, name="line-count", inputs=1, attempt=1)
    return job_id


def open_job(page: Page, url: str, job_id: str) -> None:
    page.goto(f"{url}/jobs/{job_id}")
    expect(page.locator("#job-connection")).to_have_text("live")


def api_steps(url: str, job_id: str) -> list[str]:
    job = httpx.get(f"{url}/api/jobs/{job_id}", timeout=10).json()
    return [str(s["status"]) for s in job["steps"]]


def set_hidden(page: Page, hidden: bool) -> None:
    """What the browser does when the tab goes to the background (or comes back)."""
    page.evaluate(
        """(hidden) => {
            Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
            Object.defineProperty(document, "visibilityState",
                {configurable: true, get: () => (hidden ? "hidden" : "visible")});
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        hidden,
    )


def test_a_new_attempt_starts_the_step_over_live_and_after_a_reload(
    web: WebThread, log: Log, page: Page
) -> None:
    job_id = running_job(web, log, "two")
    log.add(job_id, EventType.STEP_PROGRESS, step=0, bytes_done=3, bytes_total=3, files_done=1)
    log.add(job_id, EventType.STEP_COMPLETED, step=0, bytes_done=3, bytes_total=3, outputs=1)
    log.add(job_id, EventType.STEP_STARTED, step=1, name="line-count", inputs=1, attempt=1)
    open_job(page, web.url, job_id)
    step, second = page.locator("#job-steps li").nth(0), page.locator("#job-steps li").nth(1)
    expect(step).to_have_attribute("data-status", "completed")
    expect(second).to_have_attribute("data-status", "running")

    # The worker died in step 2; the queue's next attempt runs the job from step 1 again.
    log.add(job_id, EventType.STEP_STARTED, step=0, name="line-count", inputs=1, attempt=2)
    expect(step).to_have_attribute("data-status", "running")
    expect(step.locator(".step-status")).to_have_text("running")
    expect(step).to_have_attribute("data-attempt", "2")
    assert step.locator("progress").get_attribute("value") is None  # no figures yet
    expect(second).to_have_attribute("data-status", "pending")
    seq = log.add(job_id, EventType.STEP_PROGRESS, step=0, bytes_done=1, bytes_total=3)
    expect(page.locator(f"#job-events li[data-seq='{seq}']")).to_have_count(1)
    expect(step.locator("progress")).to_have_js_property("value", 33)
    # The first attempt's worker, still running after it lost its message, reports late:
    # its figures and its completion are not the second attempt's.
    log.add(job_id, EventType.STEP_PROGRESS, step=0, attempt=1, bytes_done=3, bytes_total=3)
    log.add(job_id, EventType.STEP_COMPLETED, step=0, attempt=1, bytes_done=3, bytes_total=3)
    # ... and goes on into step 2.
    log.add(job_id, EventType.STEP_STARTED, step=1, name="line-count", inputs=1, attempt=1)
    seq = log.add(job_id, EventType.STEP_PROGRESS, step=1, attempt=1, bytes_done=1, bytes_total=3)
    expect(page.locator(f"#job-events li[data-seq='{seq}']")).to_have_count(1)
    expect(second).to_have_attribute("data-status", "pending")
    expect(step).to_have_attribute("data-status", "running")
    expect(step.locator("progress")).to_have_js_property("value", 33)
    assert api_steps(web.url, job_id) == ["running", "pending"]

    # A reload replays the whole history over the job's snapshot: still the second attempt.
    page.reload()
    expect(page.locator(f"#job-events li[data-seq='{seq}']")).to_have_count(1)
    expect(page.locator("#job-connection")).to_have_text("live")
    expect(step).to_have_attribute("data-status", "running")
    expect(step.locator("progress")).to_have_js_property("value", 33)
    expect(second).to_have_attribute("data-status", "pending")


def test_a_failed_job_fails_its_running_step_and_an_expired_one_stops_it(
    web: WebThread, log: Log, page: Page
) -> None:
    failed = running_job(web, log)
    open_job(page, web.url, failed)
    step = page.locator("#job-steps li").first
    expect(step).to_have_attribute("data-status", "running")
    # job.failed as `s3flow jobs cancel` (and the runner before it named its step) writes it.
    log.add(failed, EventType.JOB_FAILED, error="cancelled by an operator")
    expect(page.locator("#job-status")).to_have_attribute("data-status", "failed")
    expect(step).to_have_attribute("data-status", "failed")
    expect(step.locator(".step-status")).to_have_text("failed")
    assert step.locator("progress").get_attribute("value") == "0"  # not an endless animation
    assert api_steps(web.url, failed) == ["failed"]
    page.reload()
    expect(page.locator("#job-connection")).to_have_text("ended (the job is finished)")
    expect(step).to_have_attribute("data-status", "failed")

    expired = running_job(web, log)
    open_job(page, web.url, expired)
    expect(step).to_have_attribute("data-status", "running")
    log.add(expired, EventType.JOB_EXPIRED, missing=[], error="the job expired")
    expect(page.locator("#job-status")).to_have_attribute("data-status", "expired")
    expect(step).to_have_attribute("data-status", "stopped")
    assert step.locator("progress").get_attribute("value") == "0"


def test_the_first_load_outlasts_a_503_and_a_refused_connection(
    web: WebThread, log: Log, page: Page
) -> None:
    job_id = running_job(web, log)
    answers: list[str] = []

    def flaky(route: Route) -> None:
        answers.append("x")
        if len(answers) == 1:
            route.fulfill(status=503, json={"error": "state store unavailable"})
        elif len(answers) == 2:
            route.abort("connectionrefused")
        else:
            route.continue_()

    page.route(re.compile(rf"/api/jobs/{job_id}$"), flaky)
    page.goto(f"{web.url}/jobs/{job_id}")
    expect(page.locator("#job-error")).to_contain_text("trying again")
    expect(page.locator("#job-connection")).to_have_text("live")  # after 1 s, then 2 s
    expect(page.locator("#job-status")).to_have_attribute("data-status", "running")
    expect(page.locator("#job-error")).to_be_hidden()
    assert len(answers) == 3


def test_an_unknown_job_is_final_at_once(web: WebThread, page: Page) -> None:
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if "/events" in r.url else None)
    page.goto(f"{web.url}/jobs/no-such-job")
    expect(page.locator("#job-status")).to_have_text("not found")
    expect(page.locator("#job-error")).to_contain_text("no job 'no-such-job'")
    expect(page.locator("#job-connection")).to_have_text("not connected")
    assert streams == []


def test_a_job_gone_while_reconnecting_ends_the_view(web: WebThread, log: Log, page: Page) -> None:
    job_id = running_job(web, log)
    snapshots: list[str] = []
    streams: list[str] = []
    gone = {"error": f"no job {job_id!r}: check the job_id POST /api/uploads returned"}

    def snapshot(route: Route) -> None:
        snapshots.append(route.request.url)
        if len(snapshots) == 1:
            route.continue_()
        else:  # removed by the store's retention since
            route.fulfill(status=404, json=gone)

    def stream(route: Route) -> None:
        streams.append(route.request.url)
        route.fulfill(status=404, json=gone)

    page.route(re.compile(rf"/api/jobs/{job_id}$"), snapshot)
    page.route(re.compile(rf"/api/jobs/{job_id}/events"), stream)
    page.goto(f"{web.url}/jobs/{job_id}")
    expect(page.locator("#job-connection")).to_have_text("ended (this job no longer exists)")
    expect(page.locator("#job-error")).to_contain_text("This job no longer exists")
    assert len(streams) == 1 and len(snapshots) == 2, (streams, snapshots)


def test_hidden_tabs_close_their_streams_so_a_seventh_tab_loads(
    web: WebThread, log: Log, context: BrowserContext
) -> None:
    job_id = running_job(web, log)
    tabs = [context.new_page() for _ in range(6)]
    for tab in tabs:
        open_job(tab, web.url, job_id)  # six streams: every HTTP/1.1 connection to the host
    for tab in tabs:
        set_hidden(tab, True)

    seventh = context.new_page()  # waited for a free connection, for ever, before
    seventh.goto(f"{web.url}/jobs/{job_id}", timeout=8_000)
    expect(seventh.locator("#job-connection")).to_have_text("live")
    for tab in tabs:
        expect(tab.locator("#job-connection")).to_have_text("paused while this tab is hidden")

    # Events written while a tab is hidden arrive when it is shown, after its last one.
    first = tabs[0]
    streams: list[str] = []
    first.on("request", lambda r: streams.append(r.url) if "/events" in r.url else None)
    seq = log.add(job_id, EventType.STEP_PROGRESS, step=0, bytes_done=2, bytes_total=3)
    expect(seventh.locator(f"#job-events li[data-seq='{seq}']")).to_have_count(1)
    expect(first.locator(f"#job-events li[data-seq='{seq}']")).to_have_count(0)
    set_hidden(first, False)
    expect(first.locator("#job-connection")).to_have_text("live")
    expect(first.locator(f"#job-events li[data-seq='{seq}']")).to_have_count(1)
    expect(first.locator("#job-events li")).to_have_count(seq)  # each event once
    assert len(streams) == 1 and f"last_event_id={seq - 1}" in streams[0], streams


def test_outputs_load_after_a_failed_request(web: WebThread, log: Log, page: Page) -> None:
    job_id = running_job(web, log)
    answers: list[str] = []

    def flaky(route: Route) -> None:
        answers.append(route.request.url)
        if len(answers) == 2:  # the one after job.completed
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route(re.compile(rf"/api/jobs/{job_id}$"), flaky)
    open_job(page, web.url, job_id)
    log.add(job_id, EventType.STEP_COMPLETED, step=0, bytes_done=3, bytes_total=3, outputs=1)
    output = {"name": "a.txt.json", "key": f"outputs/{job_id}/a.txt.json", "size": 13}
    log.add(job_id, EventType.JOB_COMPLETED, outputs=[{**output, "bucket": web_bucket(web)}])
    expect(page.locator("#job-status")).to_have_attribute("data-status", "completed")
    expect(page.locator("#job-outputs a.download")).to_have_text(["a.txt.json"])
    expect(page.locator("#job-outputs-note")).to_be_hidden()
    assert len(answers) == 3


def web_bucket(web: WebThread) -> str:
    jobs = web.settings.jobs
    assert jobs is not None
    return jobs.bucket


def test_the_jobs_page_pages_to_older_jobs_and_back_to_the_newest(
    web: WebThread, page: Page
) -> None:
    made = [new_job(web.url) for _ in range(5)]  # newest last
    page.goto(f"{web.url}/jobs?limit=2")
    rows = page.locator("#jobs-body tr")
    older, newest = page.locator("#jobs-older"), page.locator("#jobs-newest")
    seen: list[str] = []
    for shown in (2, 2, 1):
        expect(rows).to_have_count(shown)
        expect(page.locator("#jobs-message")).to_contain_text(f"{shown} job")
        seen += [str(rows.nth(i).get_attribute("data-job-id")) for i in range(shown)]
        if shown == 1:
            break
        expect(older).to_be_visible()
        older.click()
        expect(page).to_have_url(re.compile(r"/jobs\?limit=2&cursor=[\w-]+$"))
        expect(newest).to_be_visible()
    expect(older).to_be_hidden()
    expect(page.locator("#jobs-message")).to_contain_text("older than the previous page")
    assert seen == made[::-1]
    newest.click()
    expect(page).to_have_url(re.compile(r"/jobs\?limit=2$"))
    expect(rows).to_have_count(2)
    assert rows.nth(0).get_attribute("data-job-id") == made[-1]
    expect(newest).to_be_hidden()
