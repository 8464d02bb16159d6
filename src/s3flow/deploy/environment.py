"""The configuration of a deployed container, as ``S3FLOW_*`` environment variables.

A task needs no config file: every top-level table of the settings is one
variable holding JSON (pydantic-settings reads ``S3FLOW_PIPELINES='[...]'``
like the TOML table), with only the values that differ from the defaults.
What belongs to the machine the export ran on is left out: endpoints, the
profile, the region (the task's own region is used), the worker id (host-pid
of each task) and the embedded endpoint. The pipeline ``[jobs]`` adds is left
out too: the task builds it again from ``[jobs]``, with the stack's
``Project`` and ``Branch``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from s3flow.deploy.naming import Json, Naming, sub
from s3flow.settings import JOBS_BRIDGE, Settings, bridge_pipeline

_PROJECT = "@@S3FLOW-PROJECT@@"
_BRANCH = "@@S3FLOW-BRANCH@@"
_REGION = "@@S3FLOW-REGION@@"
# AwsSettings fields a task keeps. The rest describes the exporting machine and its
# endpoints: the region, the endpoint URLs, the profile, and ``s3_addressing_style``
# (a choice for an endpoint such as MinIO; on AWS "auto" is virtual-hosted style).
_AWS_KEPT = {
    "max_attempts",
    "connect_timeout_s",
    "read_timeout_s",
    "max_pool_connections",
    "fast_path",
}


def _value(data: Any, naming: Naming) -> Json:
    text = naming.text(json.dumps(data, sort_keys=True, separators=(",", ":")))
    text = text.replace(_PROJECT, "${Project}").replace(_BRANCH, "${Branch}")
    return sub(text.replace(_REGION, "${AWS::Region}"))


def _dump(value: Any) -> Any:
    """A settings value as JSON data, without the values equal to their defaults."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_defaults=True)
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


def settings_environment(settings: Settings) -> dict[str, Any]:
    """The plain (JSON-ready) value of each ``S3FLOW_*`` variable, before substitution.

    One variable per top-level table of :class:`~s3flow.settings.Settings` that is not
    all defaults (a table added to the settings later is carried too). ``[jobs]``
    project and branch and the region are placeholders here;
    :func:`container_environment` turns them into ``${Project}``, ``${Branch}`` and
    ``${AWS::Region}``.
    """
    env: dict[str, Any] = {}
    jobs = settings.jobs
    for name in type(settings).model_fields:
        value: Any
        if name == "local":  # the embedded endpoint of the exporting machine
            continue
        if name == "pipelines":
            value = [
                _dump(p)
                for p in settings.pipelines
                if not (jobs is not None and p.name == JOBS_BRIDGE and p == bridge_pipeline(jobs))
            ]
        elif name == "aws":
            kept = settings.aws.model_dump(mode="json", exclude_defaults=True, include=_AWS_KEPT)
            value = {**kept, "region": _REGION}
        elif name == "worker":
            value = settings.worker.model_dump(
                mode="json", exclude_defaults=True, exclude={"worker_id"}
            )
        elif name == "jobs" and jobs is not None:
            value = {**_dump(jobs), "project": _PROJECT, "branch": _BRANCH}
        else:
            value = _dump(getattr(settings, name))
        if value not in (None, {}, []):
            env[f"S3FLOW_{name.upper()}"] = value
    return env


def container_environment(settings: Settings, naming: Naming) -> list[dict[str, Json]]:
    """``Environment`` of an ECS container definition: this config, one variable a table."""
    return [
        {"Name": name, "Value": _value(value, naming)}
        for name, value in settings_environment(settings).items()
    ]
