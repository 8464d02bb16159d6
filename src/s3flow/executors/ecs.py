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

from s3flow.errors import RetryableError
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
            failures = "; ".join(
                f"{f.get('reason')}{': ' + f['detail'] if f.get('detail') else ''}"
                for f in resp.get("failures") or []
            )
            raise RetryableError(f"ECS RunTask started no task: {failures or 'no reason given'}")
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
