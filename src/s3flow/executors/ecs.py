"""The ``ecs`` executor: one ECS task per object (RunTask, DescribeTasks, StopTask).

The task runs the configured task definition with the object in its container's
environment (container overrides) and, by default, the command ``run PROCESSOR
s3://bucket/key --output URI`` (the image's entry point is ``s3flow``). It is final
when its ``lastStatus`` is ``STOPPED``; the named container's ``exitCode`` settles it
(see :mod:`s3flow.executors.remote`). The task ARN is recorded in the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from s3flow.errors import ExecutorUnavailableError, RetryableError, S3flowError
from s3flow.executors.base import ObjectJob
from s3flow.executors.remote import ContainerExecutor, container_overrides, launch_error
from s3flow.settings import EcsExecutorSettings


def ecs_exit(task: Mapping[str, Any], container: str) -> tuple[int | None, str]:
    """(exit code of ``container``, reason) of a STOPPED task description."""
    reasons = []
    if task.get("stopCode"):
        reasons.append(str(task["stopCode"]))
    if task.get("stoppedReason"):
        reasons.append(str(task["stoppedReason"]))
    code: int | None = None
    for c in task.get("containers") or []:
        if c.get("name") == container:
            if c.get("exitCode") is not None:
                code = int(c["exitCode"])
            if c.get("reason"):
                reasons.append(f"container: {c['reason']}")
    return code, "; ".join(reasons)


#: RunTask failure reasons saying the cluster has no room for the task now: the CPU, memory,
#: ports, ENIs or GPUs of its instances are taken (``RESOURCE:*``), or Fargate has no
#: capacity or the account's task quota is reached. They pass as running tasks end.
_CAPACITY_PREFIXES = ("RESOURCE:",)
_CAPACITY_WORDS = ("capacity", "try again later", "limit on the number of")
#: Reasons saying the cluster cannot place the task at all until the operator changes it
#: (its instances are missing, inactive or disconnected, or none meets the placement
#: constraints).
_PLACEMENT_REASONS = frozenset(
    {"MISSING", "INACTIVE", "AGENT", "ATTRIBUTE", "DISTINCT_INSTANCE", "LOCATION", "MEMBEROF"}
)


def _failure_kind(failure: Mapping[str, Any]) -> str:
    """``capacity``, ``placement`` or ``other`` for one entry of RunTask's ``failures``."""
    reason = str(failure.get("reason") or "")
    text = f"{reason} {failure.get('detail') or ''}".lower()
    if reason.upper().startswith(_CAPACITY_PREFIXES) or any(w in text for w in _CAPACITY_WORDS):
        return "capacity"
    if reason.upper() in _PLACEMENT_REASONS:
        return "placement"
    return "other"


def run_task_failure(failures: list[Mapping[str, Any]], cluster: str) -> S3flowError:
    """The error for a RunTask call that started no task, by its ``failures``.

    Capacity (``RESOURCE:MEMORY``, ``RESOURCE:CPU``, "Capacity is unavailable", the
    task quota) and placement problems (instances missing, inactive or disconnected,
    constraints nobody meets) are the cluster's, not the object's:
    :class:`~s3flow.errors.ExecutorUnavailableError`, retried with backoff without
    counting a failure, so a burst larger than the cluster never dead-letters good
    files. Anything else (or no reason at all) is a plain retryable error: counted, so
    after ``max_receive_count`` the message is dead-lettered as usual.
    """
    text = "; ".join(
        f"{f.get('reason')}{': ' + str(f['detail']) if f.get('detail') else ''}"
        + (f" ({f['arn']})" if f.get("arn") else "")
        for f in failures
    )
    what = f"ECS RunTask on cluster {cluster} started no task: {text or 'no reason given'}"
    kinds = {_failure_kind(f) for f in failures}
    if kinds == {"capacity"}:
        return ExecutorUnavailableError(
            f"{what} (the cluster has no room for it now; retried without counting a failure "
            "of the file: add capacity, or lower the pipeline's concurrency)"
        )
    if kinds and kinds <= {"capacity", "placement"}:
        return ExecutorUnavailableError(
            f"{what} (the cluster cannot place the task: check its container instances and "
            "the task definition's placement constraints; retried without counting a "
            "failure of the file)"
        )
    return RetryableError(what)


class EcsExecutor(ContainerExecutor):
    """Runs each object as an ECS task."""

    name = "ecs"
    what = "ECS task"
    service = "ecs"
    settings: EcsExecutorSettings

    def run_task_args(
        self, job: ObjectJob, env: dict[str, str], command: list[str] | None
    ) -> dict[str, Any]:
        """The RunTask arguments for one object."""
        s = self.settings
        override = {"name": s.container, **container_overrides(env, command)}
        args: dict[str, Any] = {
            "cluster": s.cluster,
            "taskDefinition": s.task_definition,
            "count": 1,
            "startedBy": s.started_by,
            "overrides": {"containerOverrides": [override]},
        }
        if s.launch_type:
            args["launchType"] = s.launch_type
        if s.platform_version:
            args["platformVersion"] = s.platform_version
        if s.subnets:
            args["networkConfiguration"] = {
                "awsvpcConfiguration": {
                    "subnets": list(s.subnets),
                    "securityGroups": list(s.security_groups),
                    "assignPublicIp": "ENABLED" if s.assign_public_ip else "DISABLED",
                }
            }
        return args

    async def _launch(
        self, client: Any, job: ObjectJob, env: dict[str, str], command: list[str] | None
    ) -> tuple[str, dict[str, Any]]:
        try:
            resp = await client.run_task(**self.run_task_args(job, env, command))
        except Exception as exc:
            raise launch_error(exc, f"ECS RunTask on cluster {self.settings.cluster}") from exc
        tasks = resp.get("tasks") or []
        if not tasks:
            raise run_task_failure(list(resp.get("failures") or []), self.settings.cluster)
        arn = str(tasks[0]["taskArn"])
        return arn, {"task_arn": arn}

    async def _describe(self, client: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
        resp = await client.describe_tasks(cluster=self.settings.cluster, tasks=ids)
        return {str(t["taskArn"]): t for t in resp.get("tasks") or []}

    def _is_final(self, desc: Mapping[str, Any]) -> bool:
        return desc.get("lastStatus") in ("STOPPED", "DELETED")

    def exit_of(self, desc: Mapping[str, Any]) -> tuple[int | None, str]:
        """The configured container's exit code and the task's stop reason."""
        return ecs_exit(desc, self.settings.container)

    async def _stop(self, client: Any, ident: str, reason: str) -> None:
        await client.stop_task(cluster=self.settings.cluster, task=ident, reason=reason[:255])
