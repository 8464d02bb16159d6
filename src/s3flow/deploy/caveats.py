"""What a person should know before deploying the exported template.

The warnings name what the template cannot do for a config: a store or output that
lives on a task's disk, processors or executors whose permissions it does not know,
network routes it does not make.
"""

from __future__ import annotations

from s3flow.deploy.ecs import FARGATE_MAX_STOP_TIMEOUT_S
from s3flow.deploy.iam import KNOWN_PROCESSORS
from s3flow.settings import Settings, results_prefix


def deployment_warnings(settings: Settings) -> list[str]:
    """The warnings of :class:`~s3flow.deploy.cloudformation.CloudFormationExport`."""
    s = settings
    w: list[str] = []
    if s.state.url.startswith("sqlite:") or s.state.url.endswith((".db", ".sqlite")):
        w.append(
            "state.url is SQLite: each task keeps its own store on its disk (claims and "
            "file records per task, gone when the task is replaced)"
            + (", and the web app cannot see the workers' jobs" if s.jobs is not None else "")
            + "; use 'dynamodb://PREFIX' for more than one task"
        )
    for p in s.pipelines:
        if not p.output.startswith("s3://"):
            w.append(
                f"pipeline {p.name!r} writes to the local directory {p.output!r} inside "
                "the container: it is lost with the task; use an s3:// output"
            )
        routes = getattr(p, "routes", None) or []
        processors = [p.processor, *(r.processor for r in routes if r.processor)]
        for name in dict.fromkeys(processors):
            if name not in KNOWN_PROCESSORS:
                w.append(
                    f"pipeline {p.name!r}: processor {name!r} is not built in; the "
                    "worker role lets it read its source and write its output only: add "
                    "what else it needs to WorkerTaskRole"
                )
        for executor in sorted({e for e, _ in p.executor_uses()} & {"ecs", "batch"}):
            w.append(
                f"pipeline {p.name!r} runs objects with the {executor!r} executor: the "
                "template does not grant WorkerTaskRole the calls that start and watch "
                "those tasks (and iam:PassRole of their roles); add them. Their containers' "
                "own role needs s3:PutObject on their outputs and on "
                f"{results_prefix(getattr(p.executors, executor), p.output, p.name)}* "
                "(each run's result document, which WorkerTaskRole may read and delete)"
            )
        if p.processor == "parquet-compact" and p.options.get("executor") == "spark":
            w.append(
                f"pipeline {p.name!r}: the spark executor needs a Spark cluster and its "
                "own S3 access; the template covers the local executor"
            )
        if p.processor == "csv-to-kafka":
            w.append(
                f"pipeline {p.name!r} produces to Kafka: give the tasks a route to the "
                "brokers (Subnets, SecurityGroups)"
            )
    if any(p.processor == "parquet-compact" for p in s.pipelines) and not any(
        p.processor == "ndjson-manifest" for p in s.pipelines
    ):
        w.append(
            "parquet-compact reads the NDJSON files its manifests list, but no "
            "ndjson-manifest pipeline names them here: grant WorkerTaskRole s3:GetObject "
            "and s3:GetObjectVersion (and tagging) on them"
        )
    grace = s.worker.shutdown_grace_s
    if grace + 10 > FARGATE_MAX_STOP_TIMEOUT_S:
        w.append(
            f"worker.shutdown_grace_s = {grace:g}: ECS kills a task at most "
            f"{FARGATE_MAX_STOP_TIMEOUT_S} s after it asked it to stop (StopTimeout), so "
            f"work still running {FARGATE_MAX_STOP_TIMEOUT_S - 10} s after SIGTERM is cut "
            "off and its messages come back after their visibility timeout; keep "
            f"shutdown_grace_s at or below {FARGATE_MAX_STOP_TIMEOUT_S - 10}"
        )
    if s.jobs is not None and not s.web.tokens:
        w.append(
            "the web task listens on 0.0.0.0, which needs web.tokens: without them "
            "`s3flow web` refuses to start there"
        )
    return w
