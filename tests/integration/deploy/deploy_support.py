"""Helpers of the deploy tests: a MiniStack server (CloudFormation-capable) on 127.0.0.1.

MiniStack (PyPI ``ministack``) binds 0.0.0.0 unless told otherwise: it is started with
``BIND_HOST=127.0.0.1``, its extra listeners off, on a free port, in a working directory
of its own (``ministack.log`` there). See ../shared/EMULATORS.md.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

from s3flow.local.endpoint import free_port

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

# MiniStack 1.5.33 keeps a ``Number`` parameter a string and hands ``DesiredCount:
# {"Ref": "DesiredTasks"}`` to its ECS scheduler as "1", which then fails
# ("unsupported operand type(s) for -: 'str' and 'int'"). Real CloudFormation converts
# it (``DesiredCount: !Ref Count`` is the documented pattern). The server is started
# with this one conversion; nothing else is changed.
_START = """
import runpy
from ministack.services.cloudformation import provisioners as p

handlers = p._RESOURCE_HANDLERS["AWS::ECS::Service"]

def _int_count(props):
    if isinstance(props.get("DesiredCount"), str):
        props = {**props, "DesiredCount": int(props["DesiredCount"])}
    return props

_create, _update = handlers["create"], handlers["update"]
handlers["create"] = lambda lid, props, stack: _create(lid, _int_count(props), stack)
handlers["update"] = lambda pid, old, new, stack: _update(
    pid, _int_count(old), _int_count(new), stack
)
runpy.run_module("ministack", run_name="__main__")
"""
REGION = "us-east-1"


class Unavailable(Exception):
    """MiniStack is not installed or did not start."""


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _tail(log: Path, n: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@contextmanager
def ministack(workdir: Path, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Run MiniStack in ``workdir`` on a free loopback port; yields its URL."""
    if importlib.util.find_spec("ministack") is None:
        raise Unavailable("the 'ministack' package is not installed (scripts/install dev)")
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
            [sys.executable, "-c", _START],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _answers(f"{url}/_ministack/health"):
            if proc.poll() is not None:
                raise Unavailable(f"it exited with {proc.returncode}; log:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise Unavailable(f"no answer at {url} in {start_timeout_s:.0f}s:\n{_tail(log)}")
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def client(url: str, service: str) -> Any:
    """A boto3 client of ``service`` on the emulator."""
    return boto3.client(service, endpoint_url=url, region_name=REGION, **CREDENTIALS)


def wait_stack(cfn: Any, name: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """Wait until the stack leaves its *_IN_PROGRESS state; returns its description."""
    deadline = time.monotonic() + timeout_s
    while True:
        stack: dict[str, Any] = cfn.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            return stack
        if time.monotonic() > deadline:
            raise TimeoutError(f"stack {name} still {stack['StackStatus']} after {timeout_s}s")
        time.sleep(0.2)


def failed_events(cfn: Any, name: str) -> list[str]:
    """The stack's ``*_FAILED`` events, for assertion messages."""
    events = cfn.describe_stack_events(StackName=name)["StackEvents"]
    return [
        f"{e['LogicalResourceId']} {e['ResourceStatus']}: {e.get('ResourceStatusReason', '')}"
        for e in events
        if e["ResourceStatus"].endswith("FAILED")
    ]
