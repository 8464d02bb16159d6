"""Helpers of the deploy tests: a MiniStack server (CloudFormation-capable) on 127.0.0.1.

MiniStack (PyPI ``ministack``) is started by :func:`itest_support.ministack_server`
(bound to 127.0.0.1, in a working directory of its own). See ../shared/EMULATORS.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from itest_support import ministack_or_skip

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


@contextmanager
def ministack(workdir: Path, start_timeout_s: float = 30.0) -> Iterator[str]:
    """MiniStack (with the ``DesiredCount`` conversion above) in ``workdir``; yields its URL.

    Skips the test (fails it under ``CI``) when MiniStack is unavailable.
    """
    with ministack_or_skip(workdir, start_code=_START, start_timeout_s=start_timeout_s) as url:
        yield url


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
