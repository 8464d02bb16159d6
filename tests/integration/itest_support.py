"""Helpers shared by the integration tests (a uniquely named module, unlike conftest)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s3flow.app import open_store, run_worker
from s3flow.local.endpoint import LocalEndpoint, free_port
from s3flow.metrics import WorkerMetrics
from s3flow.provisioning import provision
from s3flow.settings import Settings, load_settings
from s3flow.state.records import FileRecord, FileStatus, HistoryEntry, ObjectId
from s3flow.worker.engine import WorkerObserver

_counter = itertools.count()


def wait_for(cond: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll ``cond`` until truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


class Harness:
    """One isolated pipeline (own buckets and queues) on the shared endpoint."""

    def __init__(self, endpoint: LocalEndpoint, s3: Any, sqs: Any, tmp_path: Path) -> None:
        self.endpoint = endpoint
        self.s3 = s3
        self.sqs = sqs
        self.tmp_path = tmp_path
        n = f"{next(_counter)}-{uuid.uuid4().hex[:6]}"
        self.bucket = f"in-{n}"
        self.out_bucket = f"out-{n}"
        self.queue = f"q-{n}"
        self.settings: Settings | None = None
        self.state_url = f"sqlite:{tmp_path}/state-{n}.db"
        #: ``[aws]`` settings (None: the environment's endpoint, the session's moto server).
        self.aws: dict[str, Any] | None = None

    def configure(self, provision_it: bool = True, **pipeline: Any) -> Settings:
        """Build settings for one pipeline (overrides as keyword args) and provision it."""
        p: dict[str, Any] = {
            "name": "p",
            "processor": "line-count",
            "bucket": self.bucket,
            "queue": self.queue,
            "output": f"s3://{self.out_bucket}/res/",
            "concurrency": 8,
            "visibility_timeout_s": 30,
            "wait_time_s": 1,
            "retry_base_s": 1,
        }
        p.update(pipeline)
        data = {
            "pipelines": [p],
            "worker": {"shutdown_grace_s": 10, "ack_batch_window_s": 0.02},
            "state": {"url": self.state_url},
        }
        if self.aws is not None:
            data["aws"] = self.aws
        self.settings = load_settings(None, data)
        if provision_it:
            asyncio.run(provision(self.settings))
            # Drain the s3:TestEvent the new notification produced.
            self.purge()
        return self.settings

    def write_config(self, path: Path | None = None) -> Path:
        """Write the current settings as a TOML file (for CLI subprocess tests)."""
        assert self.settings is not None
        path = path or self.tmp_path / "s3flow.toml"
        p = self.settings.pipelines[0]
        lines = [
            "[worker]",
            f"shutdown_grace_s = {self.settings.worker.shutdown_grace_s}",
            "[state]",
            f'url = "{self.settings.state.url}"',
            "",
        ]
        lines.append("[[pipelines]]")
        for key, value in p.model_dump(exclude_none=True).items():
            if key in ("options", "validation", "executors", "routes"):
                continue
            if isinstance(value, bool):
                lines.append(f"{key} = {str(value).lower()}")
            elif isinstance(value, str):
                lines.append(f"{key} = {json.dumps(value)}")  # a TOML basic string
            else:
                lines.append(f"{key} = {value}")
        if p.options:
            lines.append("[pipelines.options]")
            for key, value in p.options.items():
                text = str(value).lower() if isinstance(value, bool) else repr(value)
                lines.append(f"{key} = {text}".replace("'", '"'))
        path.write_text("\n".join(lines) + "\n")
        return path

    @property
    def queue_url(self) -> str:
        return str(self.sqs.get_queue_url(QueueName=self.queue)["QueueUrl"])

    @property
    def dlq_url(self) -> str:
        return str(self.sqs.get_queue_url(QueueName=f"{self.queue}-dlq")["QueueUrl"])

    def purge(self) -> None:
        """Delete everything currently visible on the queue (e.g. test events)."""
        while True:
            resp = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
            msgs = resp.get("Messages", [])
            if not msgs:
                return
            for m in msgs:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])

    def depth(self, url: str | None = None) -> tuple[int, int]:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )["Attributes"]
        return (
            int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        )

    def put(self, key: str, body: bytes, **kwargs: Any) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, **kwargs)

    def result(self, key: str) -> dict[str, Any] | None:
        import json

        try:
            obj = self.s3.get_object(Bucket=self.out_bucket, Key=f"res/{key}.json")
        except self.s3.exceptions.NoSuchKey:
            return None
        return dict(json.loads(obj["Body"].read()))

    def output_keys(self) -> list[str]:
        resp = self.s3.list_objects_v2(Bucket=self.out_bucket)
        return sorted(o["Key"] for o in resp.get("Contents", []))

    def dlq_messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _ in range(5):
            resp = self.sqs.receive_message(
                QueueUrl=self.dlq_url,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                VisibilityTimeout=60,
            )
            out += resp.get("Messages", [])
            if not resp.get("Messages"):
                break
        return out

    def run(
        self, observer: WorkerObserver | None = None, timeout_s: float = 60.0, **kw: Any
    ) -> WorkerMetrics:
        """Run the worker in burst mode in this process until the queue is drained."""
        assert self.settings is not None
        return asyncio.run(
            asyncio.wait_for(
                run_worker(self.settings, burst=True, observer=observer, **kw), timeout_s
            )
        )

    def send_raw(self, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)

    def event(self, key_encoded: str, **kw: Any) -> dict[str, Any]:
        """:func:`s3_event` for ``key``'s upload as it is now: its real eTag, as S3 sends.

        With a sequencer, an event whose eTag is not the object's names an upload
        replaced since: the worker acknowledges it as superseded.
        """
        from urllib.parse import unquote_plus

        head = self.s3.head_object(Bucket=self.bucket, Key=unquote_plus(key_encoded))
        kw.setdefault("size", int(head["ContentLength"]))
        return s3_event(self.bucket, key_encoded, etag=head["ETag"].strip('"'), **kw)

    def end_record(
        self, key: str, version: str, status: FileStatus, *, error: str = "boom"
    ) -> ObjectId:
        """A record of ``key``'s upload ``version`` that ended ``status`` (claimed, then
        failed as the worker fails it, by owner "w" of pipeline "p")."""
        oid = ObjectId(self.bucket, key, version)

        async def go() -> None:
            assert self.settings is not None
            async with open_store(self.settings) as store:
                assert store is not None
                claim = await store.claim(oid, pipeline="p", owner="w", ttl_s=60)
                await store.fail(
                    oid, token=claim.token, status=status, error_class="E", error=error
                )

        asyncio.run(go())
        return oid

    def history(self, key: str) -> list[HistoryEntry]:
        """The state store's history of ``key`` (every upload), oldest first."""

        async def go() -> list[HistoryEntry]:
            assert self.settings is not None
            async with open_store(self.settings) as store:
                assert store is not None
                return await store.history(self.bucket, key)

        return asyncio.run(go())

    def records(self, key: str | None = None) -> list[FileRecord]:
        """The state store's file records: every version of ``key``, or all of them."""

        async def go() -> list[FileRecord]:
            assert self.settings is not None
            async with open_store(self.settings) as store:
                assert store is not None
                if key is not None:
                    return await store.versions(self.bucket, key)
                return await store.list_files(limit=100_000)

        return asyncio.run(go())


def s3_event(
    bucket: str,
    key_encoded: str,
    size: int = 1,
    etag: str = "x",
    sequencer: str | None = "0A1B",
) -> dict[str, Any]:
    """An S3 notification record with an already URL-encoded key.

    With ``sequencer=None`` it looks like moto's (no sequencer): the worker then
    identifies the upload by the object's (eTag, LastModified). With one, the eTag must
    be the object's for the worker to process it (:meth:`Harness.event`): another
    names an upload replaced since.
    """
    obj: dict[str, Any] = {"key": key_encoded, "size": size, "eTag": etag}
    if sequencer is not None:
        obj["sequencer"] = sequencer
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-23T00:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": obj,
        },
    }


HERE = Path(__file__).parent


def spawn_worker(cfg: Path, log: Path, *args: str) -> Any:
    """Start `s3flow worker -c cfg *args` as a subprocess (test processors importable)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "s3flow", "worker", "-c", str(cfg), *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )


# --- MiniStack: a second emulator (S3, SQS, CloudFormation...) -----------------------------

#: How ``python -c`` starts MiniStack unchanged (callers may pass a patched start).
MINISTACK_MAIN = "import runpy; runpy.run_module('ministack', run_name='__main__')"


class MiniStackUnavailable(Exception):
    """MiniStack is not installed or did not start."""


@contextlib.contextmanager
def ministack_server(
    workdir: Path, *, start_code: str = MINISTACK_MAIN, start_timeout_s: float = 30.0
) -> Iterator[str]:
    """Run MiniStack in ``workdir`` on a free loopback port; yields its URL.

    MiniStack binds 0.0.0.0 unless told otherwise: it gets ``BIND_HOST=127.0.0.1``, its
    extra listeners off, and keeps everything it writes (pid file, state, S3 data, its
    log ``ministack.log``) in ``workdir``. Raises :class:`MiniStackUnavailable`.
    """
    if importlib.util.find_spec("ministack") is None:
        raise MiniStackUnavailable("the 'ministack' package is not installed (scripts/install dev)")
    log = workdir / "ministack.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "BIND_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "EDGE_PORT": str(port),
        "IOT_MTLS_ENABLED": "0",
        "SFTP_ENABLED": "0",
        "PERSIST_STATE": "0",
        "S3_PERSIST": "0",
        "TMPDIR": str(workdir),
        "STATE_DIR": str(workdir / "state"),
        "S3_DATA_DIR": str(workdir / "s3"),
    }
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", start_code],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _http_answers(f"{url}/_ministack/health"):
            if proc.poll() is not None:
                raise MiniStackUnavailable(
                    f"it exited with {proc.returncode}; log {log}:\n{_log_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise MiniStackUnavailable(
                    f"no answer at {url} within {start_timeout_s:.0f}s; log {log}:\n"
                    f"{_log_tail(log)}"
                )
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole session: it may have children
                proc.wait(timeout=10)


@contextlib.contextmanager
def ministack_or_skip(workdir: Path, **kwargs: Any) -> Iterator[str]:
    """:func:`ministack_server`, or skip the tests when MiniStack is unavailable (fail
    them under ``CI``, where a missing emulator is a broken setup)."""
    try:
        with ministack_server(workdir, **kwargs) as url:
            yield url
    except MiniStackUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"MiniStack unavailable: {exc}")
        pytest.skip(f"MiniStack unavailable: {exc}")


def _http_answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status counts)."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:  # URLError included
        return False


def _log_tail(log: Path, n: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def flat(text: str) -> str:
    """CLI output without Rich's table and panel borders and its line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─┃┏┓┗┛━┡┩╇┳┻┠┨╂┯┷┼├┤┬┴]", " ", text).split())
