"""CloudWatch alarms on the queues: a dead-letter queue holds messages, a queue's oldest
message waits too long (``MaxMessageAgeSeconds``); both notify ``AlarmTopicArn`` if set."""

from __future__ import annotations

from collections.abc import Mapping

from s3flow.deploy.naming import NO_VALUE, Naming, get_att, if_, ref
from s3flow.deploy.template import Template
from s3flow.settings import Settings


def alarmed_queues(settings: Settings) -> tuple[list[str], list[str]]:
    """The queues of ``settings`` with a depth alarm (the dead-letter queues) and those
    with an age alarm (the others), each once, in the order the alarms are added."""
    dlqs = [p.dlq_name for p in settings.pipelines]
    mains = [p.queue for p in settings.pipelines]
    jobs = settings.jobs
    if jobs is not None:
        dlqs.append(jobs.resource("processing-dlq.fifo"))
        mains += [jobs.resource("processing.fifo"), jobs.resource("progress.fifo")]
    return list(dict.fromkeys(dlqs)), list(dict.fromkeys(mains))


def add_queue_alarms(
    t: Template, naming: Naming, settings: Settings, queues: Mapping[str, str]
) -> None:
    """A depth alarm per dead-letter queue and an age alarm per other queue of ``settings``.

    ``queues``: the logical id of each queue name, as the template declares them.
    """
    dlqs, mains = alarmed_queues(settings)
    actions = if_("HasAlarmTopic", [ref("AlarmTopicArn")], NO_VALUE)
    common = {
        "EvaluationPeriods": 1,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
        "AlarmActions": actions,
        "OKActions": actions,
    }
    for queue in dlqs:
        logical = queues[queue]
        dims = [{"Name": "QueueName", "Value": get_att(logical, "QueueName")}]
        # Every message on the DLQ, also those a reader holds (`dlq list` for 30 s, an
        # interrupted `dlq redrive` until its lease ends): on the visible count alone the
        # alarm went OK, and notified a recovery, while they waited.
        parts = [
            {
                "Id": f"m{i}",
                "MetricStat": {
                    "Metric": {"Namespace": "AWS/SQS", "MetricName": metric, "Dimensions": dims},
                    "Period": 60,
                    "Stat": "Maximum",
                },
                "ReturnData": False,
            }
            for i, metric in enumerate(_DLQ_METRICS)
        ]
        total = {
            "Id": "total",
            "Expression": " + ".join(f"m{i}" for i in range(len(parts))),
            "Label": "messages on the dead-letter queue",
            "ReturnData": True,
        }
        t.add(
            naming.logical_id("Queue", queue, "Queue{}DepthAlarm"),
            "AWS::CloudWatch::Alarm",
            {
                "AlarmDescription": naming.name(
                    f"s3flow: messages in the dead-letter queue ({queue})"
                ),
                "Metrics": [*parts, total],
                "Threshold": 0,
                **common,
            },
        )
    for queue in mains:
        logical = queues[queue]
        t.add(
            naming.logical_id("Queue", queue, "Queue{}AgeAlarm"),
            "AWS::CloudWatch::Alarm",
            {
                "AlarmDescription": naming.name(
                    f"s3flow: the oldest message waits too long ({queue})"
                ),
                "Namespace": "AWS/SQS",
                "MetricName": "ApproximateAgeOfOldestMessage",
                "Dimensions": [{"Name": "QueueName", "Value": get_att(logical, "QueueName")}],
                "Statistic": "Maximum",
                "Period": 60,
                "Threshold": ref("MaxMessageAgeSeconds"),
                **common,
                "EvaluationPeriods": 3,
            },
        )


#: What a DLQ's depth alarm adds up: its messages visible, held by a reader, delayed.
_DLQ_METRICS = (
    "ApproximateNumberOfMessagesVisible",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)
