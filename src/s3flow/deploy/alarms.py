"""CloudWatch alarms on the queues: a dead-letter queue holds messages, a queue's oldest
message waits too long (``MaxMessageAgeSeconds``); both notify ``AlarmTopicArn`` if set."""

from __future__ import annotations

from collections.abc import Mapping

from s3flow.deploy.naming import NO_VALUE, Json, Naming, get_att, if_, ref
from s3flow.deploy.template import Template
from s3flow.settings import Settings


def add_queue_alarms(
    t: Template, naming: Naming, settings: Settings, queues: Mapping[str, str]
) -> None:
    """A depth alarm per dead-letter queue and an age alarm per other queue of ``settings``.

    ``queues``: the logical id of each queue name, as the template declares them.
    """
    dlqs = [p.dlq_name for p in settings.pipelines]
    mains = [p.queue for p in settings.pipelines]
    jobs = settings.jobs
    if jobs is not None:
        dlqs.append(jobs.resource("processing-dlq.fifo"))
        mains += [jobs.resource("processing.fifo"), jobs.resource("progress.fifo")]
    actions = if_("HasAlarmTopic", [ref("AlarmTopicArn")], NO_VALUE)
    # (queues, logical id suffix, metric, threshold, evaluation periods of 60 s, description)
    kinds: list[tuple[list[str], str, str, Json, int, str]] = [
        (
            dlqs,
            "Depth",
            "ApproximateNumberOfMessagesVisible",
            0,
            1,
            "messages in the dead-letter queue",
        ),
        (
            mains,
            "Age",
            "ApproximateAgeOfOldestMessage",
            ref("MaxMessageAgeSeconds"),
            3,
            "the oldest message waits too long",
        ),
    ]
    for names, suffix, metric, threshold, periods, what in kinds:
        for queue in dict.fromkeys(names):
            logical = queues[queue]
            t.add(
                f"{logical}{suffix}Alarm",
                "AWS::CloudWatch::Alarm",
                {
                    "AlarmDescription": naming.name(f"s3flow: {what} ({queue})"),
                    "Namespace": "AWS/SQS",
                    "MetricName": metric,
                    "Dimensions": [{"Name": "QueueName", "Value": get_att(logical, "QueueName")}],
                    "Statistic": "Maximum",
                    "Period": 60,
                    "EvaluationPeriods": periods,
                    "Threshold": threshold,
                    "ComparisonOperator": "GreaterThanThreshold",
                    "TreatMissingData": "notBreaching",
                    "AlarmActions": actions,
                    "OKActions": actions,
                },
            )
