"""The ``batch`` executor: one AWS Batch job per object (SubmitJob, DescribeJobs, TerminateJob).

The job runs the configured job definition on the configured queue with the object in
its container's environment (container overrides) and, by default, the command ``run
PROCESSOR s3://bucket/key --output URI``. It is final when SUCCEEDED or FAILED; the
container's ``exitCode`` settles it (SUCCEEDED without one counts as 0; see
:mod:`s3flow.executors.remote`). The job gets the pipeline's ``job_timeout_s`` as its
attempt timeout; the job ARN and id are recorded in the result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from s3flow.executors.base import ObjectJob
from s3flow.executors.remote import ContainerExecutor, container_overrides, launch_error
from s3flow.settings import BatchExecutorSettings


def batch_exit(job: Mapping[str, Any]) -> tuple[int | None, str]:
    """(exit code, reason) of a SUCCEEDED or FAILED job description."""
    reasons = []
    if job.get("statusReason"):
        reasons.append(str(job["statusReason"]))
    container = job.get("container") or {}
    code = container.get("exitCode")
    if code is None:
        attempts = job.get("attempts") or []
        if attempts:
            code = (attempts[-1].get("container") or {}).get("exitCode")
    if container.get("reason"):
        reasons.append(f"container: {container['reason']}")
    if code is None and job.get("status") == "SUCCEEDED":
        code = 0
    return (int(code) if code is not None else None), "; ".join(reasons)


def job_name(prefix: str, pipeline: str, route: str) -> str:
    """``<prefix>-<pipeline>-<route>`` in Batch's alphabet, at most 128 characters."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{prefix}-{pipeline}-{route}")
    return name[:128]


class BatchExecutor(ContainerExecutor):
    """Runs each object as an AWS Batch job."""

    name = "batch"
    what = "Batch job"
    service = "batch"
    settings: BatchExecutorSettings

    def submit_args(
        self, job: ObjectJob, env: dict[str, str], command: list[str] | None
    ) -> dict[str, Any]:
        """The SubmitJob arguments for one object."""
        s = self.settings
        args: dict[str, Any] = {
            "jobName": job_name(s.job_name_prefix, job.pipeline, job.route),
            "jobQueue": s.job_queue,
            "jobDefinition": s.job_definition,
            "containerOverrides": container_overrides(env, command),
        }
        if self.job_timeout_s:
            args["timeout"] = {"attemptDurationSeconds": max(60, self.job_timeout_s)}
        return args

    async def _launch(
        self, client: Any, job: ObjectJob, env: dict[str, str], command: list[str] | None
    ) -> tuple[str, dict[str, Any]]:
        try:
            resp = await client.submit_job(**self.submit_args(job, env, command))
        except Exception as exc:
            raise launch_error(exc, f"Batch SubmitJob to {self.settings.job_queue}") from exc
        job_id = str(resp["jobId"])
        return job_id, {"job_id": job_id, "job_arn": str(resp.get("jobArn") or "")}

    async def _describe(self, client: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
        resp = await client.describe_jobs(jobs=ids)
        return {str(j["jobId"]): j for j in resp.get("jobs") or []}

    def _is_final(self, desc: Mapping[str, Any]) -> bool:
        return desc.get("status") in ("SUCCEEDED", "FAILED")

    def exit_of(self, desc: Mapping[str, Any]) -> tuple[int | None, str]:
        """The job's container exit code and status reason."""
        return batch_exit(desc)

    async def _stop(self, client: Any, ident: str, reason: str) -> None:
        await client.terminate_job(jobId=ident, reason=reason[:255])
