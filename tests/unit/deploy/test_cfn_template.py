"""The CloudFormation export: what it declares, how it names things, what it grants."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cfn_support import (
    CONFIGS,
    EXAMPLES,
    JOBS_DYNAMODB,
    LINE_COUNT,
    ROOT,
    defaults,
    export,
    resolve,
    settings_of,
)

from s3flow.deploy import (
    TEMPLATE_BODY_LIMIT,
    dynamodb_table_prefix,
    export_cloudformation,
    render_template,
)
from s3flow.deploy.cloudformation import _Builder
from s3flow.deploy.iam import KNOWN_PROCESSORS, MANIFEST_PREFIX_DEFAULT, QUARANTINING_PROCESSORS
from s3flow.deploy.naming import camel
from s3flow.deploy.template import TEMPLATE_S3_LIMIT, check_limits
from s3flow.errors import ConfigError
from s3flow.provisioning import queue_policy
from s3flow.settings import PipelineSettings, Settings, load_settings
from s3flow.state.dynamodb.client import DynamoClient
from s3flow.state.dynamodb.tables import table_definitions


def _template(name: str) -> dict[str, Any]:
    return export(settings_of(name)).template


def _of_type(t: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in t["Resources"].items() if r["Type"] == type_}


def _statements(t: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    (policy,) = t["Resources"][role]["Properties"]["Policies"]
    return {st["Sid"]: st for st in policy["PolicyDocument"]["Statement"]}


def _actions(t: dict[str, Any], role: str) -> set[str]:
    return {a for st in _statements(t, role).values() for a in st["Action"]}


# --- parameters and conditions -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_parameter_has_a_default(name: str) -> None:
    t = _template(name)
    assert {"Image", "Project", "Branch", "DesiredTasks", "MaxTasks", "Autoscaling"} <= set(
        t["Parameters"]
    )
    for key, p in t["Parameters"].items():
        assert "Default" in p, key


def test_a_sqlite_store_runs_one_task_per_group_even_while_deploying() -> None:
    """Each task keeps its own SQLite store: the defaults used to scale to 4 tasks, and
    a rolling deployment ran the old and the new task side by side."""
    sqlite = _template("line-count")
    assert sqlite["Parameters"]["MaxTasks"]["Default"] == 1
    assert sqlite["Parameters"]["Autoscaling"]["Default"] == "false"
    (service,) = _of_type(sqlite, "AWS::ECS::Service").values()
    deployment = service["Properties"]["DeploymentConfiguration"]
    assert (deployment["MaximumPercent"], deployment["MinimumHealthyPercent"]) == (100, 0)
    dynamodb = _template("jobs-dynamodb")
    assert dynamodb["Parameters"]["MaxTasks"]["Default"] == 4
    assert dynamodb["Parameters"]["Autoscaling"]["Default"] == "true"
    for service in _of_type(dynamodb, "AWS::ECS::Service").values():
        deployment = service["Properties"]["DeploymentConfiguration"]
        assert (deployment["MaximumPercent"], deployment["MinimumHealthyPercent"]) == (200, 100)


def test_autoscaling_sits_behind_its_condition() -> None:
    t = _template("jobs-dynamodb")
    scaling = {
        k: r
        for k, r in t["Resources"].items()
        if r["Type"].startswith("AWS::ApplicationAutoScaling")
    }
    assert len(scaling) == 4  # target + policy for the pipeline and for the jobs group
    assert all(r.get("Condition") == "UseAutoscaling" for r in scaling.values())
    assert t["Conditions"]["UseAutoscaling"] == {"Fn::Equals": [{"Ref": "Autoscaling"}, "true"]}
    # Nothing unconditional refers to them.
    others = {k: r for k, r in t["Resources"].items() if k not in scaling}
    assert not any(name in json.dumps(others) for name in scaling)
    # With autoscaling the service count is the scaler's; without, DesiredTasks.
    for service in _of_type(t, "AWS::ECS::Service").values():
        assert service["Properties"]["DesiredCount"] == {
            "Fn::If": ["UseAutoscaling", {"Ref": "AWS::NoValue"}, {"Ref": "DesiredTasks"}]
        }


def test_backlog_per_task_metric_math() -> None:
    t = _template("jobs-dynamodb")
    policy = t["Resources"]["ScalingPolicyJobsIntake"]["Properties"]
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    metrics = {m["Id"]: m for m in config["CustomizedMetricSpecification"]["Metrics"]}
    assert metrics["backlogPerTask"]["Expression"] == "(q1 + q2) / tasks"
    assert [m["ReturnData"] for m in metrics.values()] == [False, False, False, True]
    queues = [
        metrics[q]["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Fn::GetAtt"][0]
        for q in ("q1", "q2")
    ]
    assert queues == ["QueueIntake", "QueueProcessingFifo"]
    tasks = metrics["tasks"]["MetricStat"]["Metric"]
    assert (tasks["Namespace"], tasks["MetricName"]) == (
        "ECS/ContainerInsights",
        "RunningTaskCount",
    )
    assert config["TargetValue"] == settings_of("jobs-dynamodb").jobs.concurrency  # type: ignore[union-attr]
    cluster = t["Resources"]["Cluster"]["Properties"]
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["ClusterSettings"]
    counts = t["Resources"]["ScalingPolicyCounts"]["Properties"]
    assert counts["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 32


# --- buckets, queues, notifications ---------------------------------------------------------


def test_buckets_are_encrypted_private_and_tls_only() -> None:
    t = _template("jobs-dynamodb")
    buckets = _of_type(t, "AWS::S3::Bucket")
    assert set(buckets) == {"BucketIncoming", "BucketResults", "BucketUploads"}
    for logical, b in buckets.items():
        p = b["Properties"]
        rule = p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        assert all(p["PublicAccessBlockConfiguration"].values())
        assert len(p["PublicAccessBlockConfiguration"]) == 4
        assert b["DeletionPolicy"] == b["UpdateReplacePolicy"] == "Retain"
        policy = t["Resources"][f"{logical}Policy"]["Properties"]
        assert policy["Bucket"] == {"Ref": logical}
        (deny,) = policy["PolicyDocument"]["Statement"]
        assert deny["Effect"] == "Deny" and deny["Action"] == "s3:*"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert deny["Resource"][1] == {"Fn::Sub": "${" + logical + ".Arn}/*"}
    # Every bucket aborts multipart uploads left incomplete (a worker killed mid-upload
    # of a big output): without a rule their parts were kept, and billed, for ever.
    abort = {
        "Id": "s3flow-abort-incomplete-uploads",
        "Status": "Enabled",
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
    }
    for b in buckets.values():
        assert b["Properties"]["LifecycleConfiguration"]["Rules"][-1] == abort
    assert buckets["BucketIncoming"]["Properties"]["LifecycleConfiguration"]["Rules"] == [abort]
    uploads = buckets["BucketUploads"]["Properties"]
    rule, _ = uploads["LifecycleConfiguration"]["Rules"]
    assert rule["Prefix"] == "uploads/" and rule["ExpirationInDays"] == 1
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert uploads["CorsConfiguration"]["CorsRules"][0]["AllowedOrigins"] == [
        "https://app.example.com"
    ]


def test_queues_dlqs_and_fifos() -> None:
    t = _template("jobs-dynamodb")
    queues = {
        resolve(r["Properties"]["QueueName"], defaults(t)): r["Properties"]
        for r in _of_type(t, "AWS::SQS::Queue").values()
    }
    assert set(queues) == {
        "counts-events",
        "counts-events-dlq",
        "acme-dev-intake",
        "acme-dev-intake-dlq",
        "acme-dev-processing.fifo",
        "acme-dev-processing-dlq.fifo",
        "acme-dev-progress.fifo",
    }
    assert all(q["SqsManagedSseEnabled"] is True for q in queues.values())
    counts = queues["counts-events"]
    p = settings_of("jobs-dynamodb").pipeline("counts")
    assert counts["VisibilityTimeout"] == p.visibility_timeout_s
    assert counts["ReceiveMessageWaitTimeSeconds"] == p.wait_time_s
    assert counts["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["QueueCountsEventsDlq", "Arn"]},
        "maxReceiveCount": p.redrive_max_receive_count,
    }
    assert queues["counts-events-dlq"]["MessageRetentionPeriod"] == 1_209_600
    for fifo in ("processing.fifo", "processing-dlq.fifo", "progress.fifo"):
        q = queues[f"acme-dev-{fifo}"]
        assert q["FifoQueue"] is True and q["ContentBasedDeduplication"] is False
    # 10 above [jobs] max_receive_count (3): the runner fails a job whose worker died in
    # its last attempt on the next receive, before SQS would move the message away
    assert queues["acme-dev-processing.fifo"]["RedrivePolicy"]["maxReceiveCount"] == 13
    assert "FifoQueue" not in counts


def test_notifications_wait_for_the_queue_policies() -> None:
    t = _template("jobs-dynamodb")
    incoming = t["Resources"]["BucketIncoming"]
    assert incoming["DependsOn"] == ["QueueCountsEventsPolicy"]
    (config,) = incoming["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert config == {
        "Event": "s3:ObjectCreated:*",
        "Queue": {"Fn::GetAtt": ["QueueCountsEvents", "Arn"]},
        "Filter": {
            "S3Key": {
                "Rules": [{"Name": "prefix", "Value": "logs/"}, {"Name": "suffix", "Value": ".log"}]
            }
        },
    }
    # The policy names the bucket by ARN, not by reference: no cycle.
    policy = t["Resources"]["QueueCountsEventsPolicy"]
    assert "BucketIncoming" not in json.dumps(policy)
    assert t["Resources"]["BucketUploads"]["DependsOn"] == ["QueueIntakePolicy"]


def test_the_queue_policy_is_provisions_with_references() -> None:
    t = _template("line-count")
    (st,) = t["Resources"]["QueueCountsEventsPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    arn = "arn:aws:sqs:eu-west-1:123456789012:counts-events"
    want = json.loads(queue_policy(arn, "incoming", "123456789012"))["Statement"][0]
    got = resolve(st, {})
    got["Resource"] = arn if got["Resource"] == {"Fn::GetAtt": ["QueueCountsEvents", "Arn"]} else 0
    assert got == want
    assert st["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


def test_two_pipelines_share_a_dlq_and_a_bucket() -> None:
    t = _template("ndjson-dynamodb")
    names = [r["Properties"]["QueueName"] for r in _of_type(t, "AWS::SQS::Queue").values()]
    assert sorted(names) == ["lake-dlq", "lake-events", "lake-manifests"]
    raw = t["Resources"]["BucketLakeRaw"]
    assert raw["DependsOn"] == ["QueueLakeEventsPolicy", "QueueLakeManifestsPolicy"]
    configs = raw["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert len(configs) == 2
    assert len(_of_type(t, "AWS::CloudWatch::Alarm")) == 3  # one DLQ, two queues


def _pipeline(name: str, **change: Any) -> dict[str, Any]:
    queue = name.replace(".", "-") + "-events"
    return {**LINE_COUNT["pipelines"][0], "name": name, "queue": queue, "prefix": name, **change}


@pytest.mark.parametrize(
    "pipelines",
    [
        # a bucket's policy id was another bucket's id
        [_pipeline("a", bucket="acme-data", output="s3://acme-data-policy/out/")],
        [_pipeline("a", bucket="acme-data-policy", output="s3://acme-data/out/")],
        # a DLQ's alarm id was another queue's id, in either order
        [_pipeline("a", queue="orders"), _pipeline("b", queue="orders-dlq-depth-alarm")],
        [_pipeline("b", queue="orders-dlq-depth-alarm"), _pipeline("a", queue="orders")],
        # pipeline names that are one name in camel case
        [_pipeline("a-b", queue="q1"), _pipeline("a.b", queue="q2")],
    ],
)
def test_distinct_names_never_share_a_logical_id(pipelines: list[dict[str, Any]]) -> None:
    """Ids appended to (a policy, alarms) could be another name's id: the export
    stopped with a traceback ("logical id ... is used twice")."""
    t = export(Settings(pipelines=pipelines)).template
    assert len(_of_type(t, "AWS::S3::BucketPolicy")) == len(_of_type(t, "AWS::S3::Bucket"))
    queues = _of_type(t, "AWS::SQS::Queue")
    assert len(_of_type(t, "AWS::CloudWatch::Alarm")) == len(queues)
    assert len(_of_type(t, "AWS::ECS::Service")) == len(pipelines)


def _queue_ids(t: dict[str, Any]) -> dict[str, str]:
    """Each queue's name (the default parameters' branch) -> its logical id."""
    return {
        resolve(r["Properties"]["QueueName"], defaults(t)): logical
        for logical, r in _of_type(t, "AWS::SQS::Queue").items()
    }


_NO_REAL_CLASH = [
    # a DLQ has no queue policy: QueueXPolicy is only the queue x-policy's id
    _pipeline("a", dlq="x"),
    _pipeline("b", queue="x-policy"),
]
_NO_REAL_CLASH_ALARM = [
    # a queue that is no DLQ has no depth alarm: QueueOrdersDepthAlarm is the other queue
    _pipeline("a", queue="orders"),
    _pipeline("b", queue="orders-depth-alarm"),
]
_REAL_CLASH = [
    # QueueXPolicy is both the queue policy of x and the DLQ x-policy
    _pipeline("a", queue="x"),
    _pipeline("b", queue="b-events", dlq="x-policy"),
]


@pytest.mark.parametrize("pipelines", [_NO_REAL_CLASH, _NO_REAL_CLASH_ALARM, _REAL_CLASH])
def test_logical_ids_do_not_depend_on_the_order_of_the_names(
    pipelines: list[dict[str, Any]],
) -> None:
    """The first name handed out kept its plain ids and a later one got the hash, so
    listing the pipelines in another order renamed resources (a queue replaced)."""
    forward = export(Settings(pipelines=pipelines)).template
    backward = export(Settings(pipelines=pipelines[::-1])).template
    assert set(forward["Resources"]) == set(backward["Resources"])
    assert _queue_ids(forward) == _queue_ids(backward)


@pytest.mark.parametrize("pipelines", [_NO_REAL_CLASH, _NO_REAL_CLASH_ALARM])
@pytest.mark.parametrize("reverse", [False, True])
def test_ids_the_template_does_not_have_clash_with_nothing(
    pipelines: list[dict[str, Any]], reverse: bool
) -> None:
    """Ids a name could have (a DLQ's queue policy, a queue's depth alarm) were kept
    from every other name, so queues x (a DLQ) and x-policy got a hash in their ids
    though the template has one QueueXPolicy only."""
    t = export(Settings(pipelines=pipelines[::-1] if reverse else pipelines)).template
    queues = _queue_ids(t)
    assert all(logical == "Queue" + camel(name) for name, logical in queues.items())
    assert _of_type(t, "AWS::SQS::Queue").keys() == set(queues.values())


@pytest.mark.parametrize("reverse", [False, True])
def test_ids_the_template_has_twice_are_still_told_apart(reverse: bool) -> None:
    t = export(Settings(pipelines=_REAL_CLASH[::-1] if reverse else _REAL_CLASH)).template
    queues = _queue_ids(t)
    assert queues["x"] == "QueueX"
    assert t["Resources"]["QueueXPolicy"]["Type"] == "AWS::SQS::QueuePolicy"
    assert t["Resources"]["QueueXPolicy"]["Properties"]["Queues"] == [{"Ref": "QueueX"}]
    assert re.fullmatch(r"QueueXPolicy[0-9A-F]{6}", queues["x-policy"])
    assert queues["x-policy"] + "DepthAlarm" in t["Resources"]


@pytest.mark.parametrize("name", sorted(CONFIGS) + [str(p) for p in EXAMPLES])
def test_every_declared_id_is_in_the_template(name: str) -> None:
    """Declaring an id the template does not have would keep another name from it."""
    settings = settings_of(name)
    prefix = dynamodb_table_prefix(settings)
    tables = table_definitions(prefix) if prefix is not None else []
    builder = _Builder(settings, tables, None)
    t = builder.build().template
    assert builder.naming.declared_ids() <= set(t["Resources"])


def test_a_pipeline_named_web_keeps_clear_of_the_web_task() -> None:
    cfg = json.loads(json.dumps(CONFIGS["jobs-dynamodb"]))
    cfg["pipelines"][0]["name"] = "web"
    t = export(Settings(**cfg)).template
    assert t["Resources"]["TaskDefinitionWeb"]["Properties"]["TaskRoleArn"] == {
        "Fn::GetAtt": ["WebTaskRole", "Arn"]
    }
    assert len(_of_type(t, "AWS::ECS::TaskDefinition")) == 3


def test_logical_ids_of_names_that_clash_nowhere_stay() -> None:
    t = _template("jobs-dynamodb")
    assert {"BucketIncoming", "BucketIncomingPolicy", "QueueCountsEventsDlqDepthAlarm"} <= set(
        t["Resources"]
    )
    assert {"ServiceCounts", "TaskDefinitionCounts", "ScalingPolicyCounts"} <= set(t["Resources"])


# --- the state store --------------------------------------------------------------------------


def test_tables_are_the_stores_own_definitions() -> None:
    t = _template("jobs-dynamodb")
    tables = _of_type(t, "AWS::DynamoDB::Table")
    want = {d["TableName"]: d for d in table_definitions("acme-dev-state")}
    got = {resolve(r["Properties"]["TableName"], defaults(t)): r for r in tables.values()}
    assert set(got) == set(want)
    for name, r in got.items():
        props = r["Properties"]
        for key in ("KeySchema", "AttributeDefinitions", "BillingMode"):
            assert props[key] == want[name][key], (name, key)
        assert props.get("GlobalSecondaryIndexes") == want[name].get("GlobalSecondaryIndexes")
        assert r["DeletionPolicy"] == "Retain"
    assert not _of_type(_template("line-count"), "AWS::DynamoDB::Table")


def test_a_dynamodb_store_needs_its_table_definitions() -> None:
    with pytest.raises(ValueError, match="table_definitions"):
        export_cloudformation(settings_of("jobs-dynamodb"))


def test_the_job_tables_are_the_clients_names() -> None:
    # iam.py gives the web app the "-jobs" and "-job-events" tables by name.
    names = DynamoClient("p", load_settings().aws)
    assert (names.jobs_table, names.job_events_table) == ("p-jobs", "p-job-events")


# --- IAM ------------------------------------------------------------------------------------------


def test_worker_role_is_least_privilege() -> None:
    t = _template("jobs-dynamodb")
    st = _statements(t, "WorkerTaskRole")
    assert set(st) == {
        "ConsumeQueues",
        "SendToQueues",
        "ReadSources",
        "ListBuckets",
        "WriteOutputs",
        "TagQuarantined",
        "StateStore",
    }
    p = defaults(t)
    res = {sid: resolve(s["Resource"], p) for sid, s in st.items()}
    assert res["ReadSources"] == [
        "arn:aws:s3:::incoming/logs/*",
        "arn:aws:s3:::acme-dev-uploads/uploads/*",
    ]
    assert res["WriteOutputs"] == [
        "arn:aws:s3:::results/counts/*",
        "arn:aws:s3:::acme-dev-uploads/outputs/*",  # the bridge's output and a template's
        "arn:aws:s3:::acme-dev-uploads/bundles/*",  # the other template's output_prefix
    ]
    # Outputs over the multipart threshold go up in parts (a zip step, a big PDF): a
    # failed upload is aborted, pipeline outputs and job outputs alike.
    assert st["WriteOutputs"]["Action"] == [
        "s3:AbortMultipartUpload",
        "s3:DeleteObject",
        "s3:GetObject",
        "s3:PutObject",
    ]
    # Only the bridge quarantines (on_permanent_error = "quarantine").
    assert res["TagQuarantined"] == ["arn:aws:s3:::acme-dev-uploads/uploads/*"]
    assert [r["Fn::GetAtt"][0] for r in st["ConsumeQueues"]["Resource"]] == [
        "QueueCountsEvents",
        "QueueIntake",
        "QueueProcessingFifo",
    ]
    assert [r["Fn::GetAtt"][0] for r in st["SendToQueues"]["Resource"]] == [
        "QueueCountsEventsDlq",
        "QueueIntakeDlq",
        "QueueProcessingDlqFifo",
        "QueueProgressFifo",
    ]
    assert "dynamodb:Scan" not in st["StateStore"]["Action"]  # operators' listings only
    assert "dynamodb:DescribeTable" in st["StateStore"]["Action"]  # the start-up check
    assert len(st["StateStore"]["Resource"]) == 9  # six tables, three with indexes
    for s in st.values():
        assert all(":*" not in a and a != "*" for a in s["Action"]), s
        assert "*" not in s["Resource"], s


def test_the_worker_of_a_sqlite_config_has_no_table_access() -> None:
    t = _template("line-count")
    assert not any(a.startswith("dynamodb:") for a in _actions(t, "WorkerTaskRole"))
    assert "WebTaskRole" not in t["Resources"]  # no [jobs]: no web app
    assert "TagQuarantined" not in _statements(t, "WorkerTaskRole")


def test_processor_extras() -> None:
    t = _template("ndjson-dynamodb")
    st = _statements(t, "WorkerTaskRole")
    p = defaults(t)
    assert resolve(st["WriteManifests"]["Resource"], p) == [
        f"arn:aws:s3:::lake-raw/{MANIFEST_PREFIX_DEFAULT}*"
    ]
    assert st["WriteManifests"]["Action"] == ["s3:PutObject"]
    assert "arn:aws:s3:::lake-parquet/events/*" in resolve(st["WriteOutputs"]["Resource"], p)
    assert "s3:AbortMultipartUpload" in st["WriteOutputs"]["Action"]
    # Validation (events) and quarantine (compact) tag their sources; compaction also
    # tags the NDJSON files its manifests list.
    assert resolve(st["TagQuarantined"]["Resource"], p) == [
        "arn:aws:s3:::lake-raw/events/*",
        "arn:aws:s3:::lake-raw/manifests/*",
    ]


@pytest.mark.parametrize(
    ("change", "quarantines"),
    [
        ({}, False),
        ({"processor": "ndjson-manifest", "options": {"dataset": "d"}}, True),
        ({"processor": "jobs-bridge"}, True),
        ({"routes": [{"key_glob": "*.ndjson", "processor": "ndjson-manifest"}]}, True),
        ({"routes": [{"key_glob": "*.log"}]}, True),  # no default route: the rest
        ({"routes": [{"key_glob": "*.log"}, {"processor": "line-count"}]}, False),
    ],
)
def test_what_quarantines_may_tag(change: dict[str, Any], quarantines: bool) -> None:
    """Beyond validation and on_permanent_error, objects are quarantined by processors
    that refuse them (InvalidInputError) and by routes that match nothing: without the
    tagging grant AWS refused the tags and the object was dead-lettered instead."""
    cfg = json.loads(json.dumps(LINE_COUNT))
    cfg["pipelines"][0].update(change)
    st = _statements(export(Settings(**cfg)).template, "WorkerTaskRole")
    tagged = resolve(st["TagQuarantined"]["Resource"], {}) if "TagQuarantined" in st else []
    assert tagged == (["arn:aws:s3:::incoming/logs/*"] if quarantines else [])


def test_the_quarantining_processors_are_built_in() -> None:
    assert QUARANTINING_PROCESSORS <= KNOWN_PROCESSORS


def test_a_routes_processor_gets_its_grants_with_the_routes_options() -> None:
    """A route running ndjson-manifest writes manifests (where its own options say, or
    the pipeline's merged under them when it runs the pipeline's processor), and a
    route running parquet-compact uploads in parts: iam.py looked at the pipeline's
    processor only."""
    cfg = json.loads(json.dumps(LINE_COUNT))
    cfg["pipelines"][0]["options"] = {"manifest_prefix": "pipeline-level/"}
    cfg["pipelines"][0]["routes"] = [
        {"key_glob": "*.ndjson", "processor": "ndjson-manifest", "options": {"dataset": "e"}},
        {"key_glob": "*.jsonl", "processor": "parquet-compact"},
        {"processor": "ndjson-manifest", "options": {"manifest_prefix": "m2/", "dataset": "f"}},
    ]
    cfg["pipelines"].append(
        dict(
            cfg["pipelines"][0],
            name="merged",
            processor="ndjson-manifest",
            queue="merged-events",
            prefix="merged/",
            options={"manifest_bucket": "manifests", "dataset": "g"},
            routes=[{"key_glob": "*.ndjson", "options": {"manifest_prefix": "own/"}}],
        )
    )
    st = _statements(export(Settings(**cfg)).template, "WorkerTaskRole")
    assert resolve(st["WriteManifests"]["Resource"], {}) == [
        f"arn:aws:s3:::incoming/{MANIFEST_PREFIX_DEFAULT}*",  # another processor: own options
        "arn:aws:s3:::incoming/m2/*",
        "arn:aws:s3:::manifests/own/*",  # the pipeline's bucket, the route's prefix
    ]


@pytest.mark.skipif(
    "routes" not in PipelineSettings.model_fields, reason="settings without [[pipelines.routes]]"
)
def test_routes_on_tags_read_tags_and_container_executors_are_named() -> None:
    cfg = json.loads(json.dumps(LINE_COUNT))
    cfg["pipelines"][0]["routes"] = [
        {"tags": {"kind": "big"}, "executor": "ecs"},
        {"processor": "my.module:Thing"},
    ]
    cfg["pipelines"][0]["executors"] = {
        "ecs": {"cluster": "c", "task_definition": "td", "container": "main"}
    }
    result = export(Settings(**cfg))
    st = _statements(result.template, "WorkerTaskRole")
    assert st["ReadTags"]["Action"] == ["s3:GetObjectTagging", "s3:GetObjectVersionTagging"]
    assert resolve(st["ReadTags"]["Resource"], {}) == ["arn:aws:s3:::incoming/logs/*"]
    assert any("'ecs' executor" in w for w in result.warnings)
    assert any("'my.module:Thing' is not built in" in w for w in result.warnings)


def test_container_runs_results_are_read_and_deleted_by_the_worker() -> None:
    """The worker reads and deletes each ecs/batch run's result document under the
    executor's results prefix: WriteOutputs (the output prefix) did not cover it."""
    cfg = json.loads(json.dumps(LINE_COUNT))
    cfg["pipelines"][0]["routes"] = [{"key_glob": "*.big", "executor": "ecs"}, {}]
    cfg["pipelines"][0]["executor"] = "batch"
    cfg["pipelines"][0]["executors"] = {
        "ecs": {"cluster": "c", "task_definition": "td", "container": "main"},
        "batch": {"job_queue": "q", "job_definition": "jd", "results": "s3://runs/docs"},
    }
    result = export(Settings(**cfg))
    st = _statements(result.template, "WorkerTaskRole")
    assert st["ReadRunResults"]["Action"] == ["s3:DeleteObject", "s3:GetObject"]
    assert resolve(st["ReadRunResults"]["Resource"], {}) == [
        "arn:aws:s3:::runs/docs/counts/*",  # batch: its own results setting
        "arn:aws:s3:::results/.s3flow/results/counts/*",  # ecs: the output bucket's
    ]
    assert "arn:aws:s3:::runs" in resolve(st["ListBuckets"]["Resource"], {})  # 404, not 403
    (ecs,) = [w for w in result.warnings if "'ecs' executor" in w]
    assert "s3://results/.s3flow/results/counts/*" in ecs
    assert "ReadRunResults" not in _statements(_template("line-count"), "WorkerTaskRole")


#: What S3 checks, on a versioned bucket, for a call that names a ``VersionId``.
_VERSION_ACTION = {
    "s3:GetObject": "s3:GetObjectVersion",
    "s3:GetObjectTagging": "s3:GetObjectVersionTagging",
    "s3:PutObjectTagging": "s3:PutObjectVersionTagging",
    "s3:DeleteObjectTagging": "s3:DeleteObjectVersionTagging",
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_worker_may_read_and_tag_the_version_an_event_names(name: str) -> None:
    """The worker HEADs, reads and tags sources by the event's ``VersionId`` (objects,
    routes, quarantine, compaction's scans): on a versioned bucket AWS checks the
    ``*Version*`` actions for those calls, so each source statement grants both."""
    st = _statements(_template(name), "WorkerTaskRole")
    assert st["ReadSources"]["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]
    for sid in ("ReadSources", "ReadTags", "TagQuarantined"):
        if sid not in st:
            continue
        actions = set(st[sid]["Action"])
        wanted = {_VERSION_ACTION[a] for a in actions if a in _VERSION_ACTION}
        assert wanted <= actions, (sid, sorted(wanted - actions))


def test_quarantine_tags_the_events_version() -> None:
    st = _statements(_template("ndjson-dynamodb"), "WorkerTaskRole")
    assert st["TagQuarantined"]["Action"] == [
        "s3:DeleteObjectTagging",
        "s3:DeleteObjectVersionTagging",
        "s3:GetObjectTagging",
        "s3:GetObjectVersionTagging",
        "s3:PutObjectTagging",
        "s3:PutObjectVersionTagging",
    ]


def test_the_manifest_prefix_default_is_the_processors() -> None:
    from s3flow.pipelines.ndjson_parquet.manifest_processor import NdjsonManifestOptions

    assert NdjsonManifestOptions.model_fields["manifest_prefix"].default == MANIFEST_PREFIX_DEFAULT


def test_web_role() -> None:
    t = _template("jobs-dynamodb")
    st = _statements(t, "WebTaskRole")
    p = defaults(t)
    assert resolve(st["PresignUploads"]["Resource"], p) == [
        "arn:aws:s3:::acme-dev-uploads/uploads/*"
    ]
    assert st["PresignUploads"]["Action"] == ["s3:PutObject"]
    assert resolve(st["PresignDownloads"]["Resource"], p) == [
        "arn:aws:s3:::acme-dev-uploads/outputs/*",
        "arn:aws:s3:::acme-dev-uploads/bundles/*",
    ]
    assert [r["Fn::GetAtt"][0] for r in st["ConsumeProgress"]["Resource"]] == ["QueueProgressFifo"]
    assert st["ReadUploadsCors"]["Action"] == ["s3:GetBucketCORS"]
    assert resolve(st["ReadUploadsCors"]["Resource"], p) == ["arn:aws:s3:::acme-dev-uploads"]
    assert st["JobStore"]["Action"] == [
        "dynamodb:BatchGetItem",
        "dynamodb:DescribeTable",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:Query",
    ]
    tables = json.dumps(st["JobStore"]["Resource"])
    assert "TableStateJobs" in tables and "TableStateJobEvents" in tables
    assert "TableStateFiles" not in tables
    trust = t["Resources"]["WebTaskRole"]["Properties"]["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert trust["Statement"][0]["Condition"]["StringEquals"] == {
        "aws:SourceAccount": {"Ref": "AWS::AccountId"}
    }


def test_the_docs_iam_table_lists_every_action() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for name in CONFIGS:
        t = _template(name)
        roles = [r for r in ("WorkerTaskRole", "WebTaskRole") if r in t["Resources"]]
        for action in set().union(*(_actions(t, r) for r in roles)):
            assert f"`{action}`" in doc, action


def test_the_docs_name_settings_by_their_own_table() -> None:
    """deploy.md put cors_origins under [web] (where it is an unknown key)."""
    doc = (ROOT / "docs" / "deploy.md").read_text()
    named = re.findall(r"`\[(\w+)\] (\w+)`", doc)
    assert ("jobs", "cors_origins") in named
    for table, key in named:
        section = Settings.model_fields[table].annotation
        models = [a for a in getattr(section, "__args__", (section,)) if a is not type(None)]
        assert any(key in m.model_fields for m in models), f"[{table}] {key}"


def test_the_docs_describe_what_they_point_to() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for option in re.findall(r"`(--[a-z0-9-]+)[^`]*` below", doc):
        later = doc[doc.index(option) + len(option) :]
        assert option in later, f"{option} is pointed to but not described below"
    assert "--s3-bucket BUCKET" in doc


# --- the container's configuration ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_task_environment_is_the_config(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_of(name)
    t = _template(name)
    task = next(iter(_of_type(t, "AWS::ECS::TaskDefinition").values()))
    (container,) = task["Properties"]["ContainerDefinitions"]
    for var in resolve(container["Environment"], defaults(t)):
        monkeypatch.setenv(var["Name"], var["Value"])
    rebuilt = load_settings()
    exclude = {"worker": {"worker_id"}, "aws": {"region"}}
    assert rebuilt.model_dump(exclude=exclude) == settings.model_dump(exclude=exclude)
    assert rebuilt.aws.region == "eu-west-1"  # the task's own region


def test_the_task_keeps_the_aws_settings_that_are_not_the_exporting_machines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``fast_path = false`` reaches the task (it used to be dropped, turning the fast
    path back on in production); an endpoint's addressing style does not."""
    cfg = json.loads(json.dumps(LINE_COUNT))
    cfg["aws"] = {"fast_path": False, "max_attempts": 8, "s3_addressing_style": "path"}
    t = export(Settings(**cfg)).template
    (container,) = t["Resources"]["TaskDefinitionCounts"]["Properties"]["ContainerDefinitions"]
    for var in resolve(container["Environment"], defaults(t)):
        monkeypatch.setenv(var["Name"], var["Value"])
    aws = load_settings().aws
    assert (aws.fast_path, aws.max_attempts, aws.s3_addressing_style) == (False, 8, "auto")


def test_another_branch_renames_what_follows_the_pattern(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = _template("jobs-dynamodb")
    params = {**defaults(t), "Branch": "feature-x"}
    names = {
        resolve(r["Properties"]["QueueName"], params)
        for r in _of_type(t, "AWS::SQS::Queue").values()
    }
    assert "acme-feature-x-intake" in names and "counts-events" in names
    (container,) = t["Resources"]["TaskDefinitionJobsIntake"]["Properties"]["ContainerDefinitions"]
    for var in resolve(container["Environment"], params):
        monkeypatch.setenv(var["Name"], var["Value"])
    rebuilt = load_settings()
    assert rebuilt.jobs is not None and rebuilt.jobs.branch == "feature-x"
    assert rebuilt.state.url == "dynamodb://acme-feature-x-state"
    assert rebuilt.pipeline("jobs-intake").queue == "acme-feature-x-intake"
    assert container["Command"] == ["worker", "--pipeline", "jobs-intake"]


def test_a_literal_dollar_brace_survives_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = json.loads(json.dumps(LINE_COUNT))
    cfg["pipelines"][0]["options"] = {"note": "${not-a-parameter}"}
    settings = Settings(**cfg)
    t = export(settings).template
    (container,) = t["Resources"]["TaskDefinitionCounts"]["Properties"]["ContainerDefinitions"]
    for var in resolve(container["Environment"], defaults(t)):
        monkeypatch.setenv(var["Name"], var["Value"])
    assert load_settings().pipeline("counts").options == {"note": "${not-a-parameter}"}


def test_one_service_per_worker_group() -> None:
    t = _template("jobs-dynamodb")
    commands = sorted(
        r["Properties"]["ContainerDefinitions"][0]["Command"]
        for r in _of_type(t, "AWS::ECS::TaskDefinition").values()
    )
    assert commands == [
        ["web", "--host", "0.0.0.0", "--port", "8080"],
        ["worker", "--pipeline", "counts"],
        ["worker", "--pipeline", "jobs-intake"],
    ]
    assert set(_of_type(t, "AWS::ECS::Service")) == {"ServiceCounts", "ServiceJobsIntake"}
    task = t["Resources"]["TaskDefinitionCounts"]["Properties"]
    assert task["RequiresCompatibilities"] == ["FARGATE"]
    assert task["TaskRoleArn"] == {"Fn::GetAtt": ["WorkerTaskRole", "Arn"]}
    assert task["ContainerDefinitions"][0]["Image"] == {"Ref": "Image"}
    assert task["ContainerDefinitions"][0]["StopTimeout"] == 40  # grace 30 s + 10


def test_alarms() -> None:
    t = _template("jobs-dynamodb")
    alarms = _of_type(t, "AWS::CloudWatch::Alarm")
    depth = {k: a["Properties"] for k, a in alarms.items() if k.endswith("DepthAlarm")}
    age = {k: a["Properties"] for k, a in alarms.items() if k.endswith("AgeAlarm")}
    assert set(depth) == {
        "QueueCountsEventsDlqDepthAlarm",
        "QueueIntakeDlqDepthAlarm",
        "QueueProcessingDlqFifoDepthAlarm",
    }
    assert len(age) == 4  # counts, intake, processing, progress
    for a in depth.values():
        # every message on the DLQ: those a reader holds (dlq list, a redrive) too
        parts = {m["Id"]: m for m in a["Metrics"]}
        assert parts["total"]["Expression"] == "m0 + m1 + m2" and parts["total"]["ReturnData"]
        assert [parts[f"m{i}"]["MetricStat"]["Metric"]["MetricName"] for i in range(3)] == [
            "ApproximateNumberOfMessagesVisible",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        assert (a["Threshold"], a["ComparisonOperator"]) == (0, "GreaterThanThreshold")
        assert a["AlarmActions"]["Fn::If"][0] == "HasAlarmTopic"
    for a in age.values():
        assert a["MetricName"] == "ApproximateAgeOfOldestMessage"
        assert a["Threshold"] == {"Ref": "MaxMessageAgeSeconds"}
        assert a["AlarmActions"]["Fn::If"][0] == "HasAlarmTopic"


# --- refusals, warnings, rendering -------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"queue": "https://sqs.us-east-1.amazonaws.com/1/q"}, "is a URL"),
        ({"queue": "q.fifo"}, "FIFO"),
    ],
)
def test_what_cannot_be_exported(change: dict[str, str], message: str) -> None:
    cfg = json.loads(json.dumps(LINE_COUNT))
    cfg["pipelines"][0].update(change)
    with pytest.raises(ConfigError, match=message):
        export(Settings(**cfg))
    with pytest.raises(ConfigError, match="no pipelines"):
        export(Settings())


def test_the_library_export_refuses_overlapping_notifications() -> None:
    """export_cloudformation itself (not only the CLI) refuses two pipelines on one bucket
    that only their key_regex keeps apart: the stack would fail in S3."""
    cfg = json.loads(json.dumps(LINE_COUNT))
    cfg["pipelines"][0]["key_regex"] = "^logs/c"
    second = dict(cfg["pipelines"][0], name="errors", queue="errors-events", key_regex="^logs/e")
    cfg["pipelines"].append(second)
    with pytest.raises(ConfigError, match="'counts' and 'errors' on bucket 'incoming'"):
        export(Settings(**cfg))


def test_warnings() -> None:
    assert any("SQLite" in w for w in export(settings_of("line-count")).warnings)
    assert export(settings_of("jobs-dynamodb")).warnings == []
    cfg = json.loads(json.dumps(LINE_COUNT))
    cfg["pipelines"][0].update({"output": "/tmp/out", "processor": "my.module:Thing"})
    warnings = export(Settings(**cfg)).warnings
    assert any("local directory" in w for w in warnings)
    assert any("not built in" in w for w in warnings)
    assert not any("shutdown_grace_s" in w for w in warnings)


def test_a_shutdown_grace_past_what_ecs_allows_is_warned_about() -> None:
    """StopTimeout is capped at 120 s: a grace of 200 s was cut ~80 s short, silently."""
    cfg = json.loads(json.dumps(LINE_COUNT))
    cfg.setdefault("worker", {})["shutdown_grace_s"] = 200
    out = export(Settings(**cfg))
    (said,) = [w for w in out.warnings if "shutdown_grace_s" in w]
    assert said.startswith("worker.shutdown_grace_s = 200: ECS kills a task at most 120 s")
    assert "keep shutdown_grace_s at or below 110" in said
    cfg["worker"]["shutdown_grace_s"] = 110
    assert not any("shutdown_grace_s" in w for w in export(Settings(**cfg)).warnings)


def test_the_export_is_deterministic_and_fits_inline() -> None:
    for name in CONFIGS:
        a = render_template(_template(name))
        assert a == render_template(_template(name))
        assert len(a.encode()) <= TEMPLATE_BODY_LIMIT
        assert json.loads(a)["AWSTemplateFormatVersion"] == "2010-09-09"


def test_a_template_cloudformation_would_refuse_is_not_exported() -> None:
    """54 pipelines made 514 resources (the limit is 500): exported all the same."""
    pipelines = [_pipeline(f"p{i:02}", queue=f"q{i:02}") for i in range(54)]
    with pytest.raises(ConfigError, match=r"has 5\d\d resources, over .* limit of 500 per"):
        export(Settings(pipelines=pipelines))
    export(Settings(pipelines=pipelines[:40]))  # within every limit


@pytest.mark.parametrize(
    ("section", "count", "message"),
    [
        ("Outputs", 201, "has 201 outputs, over CloudFormation's limit of 200"),
        ("Parameters", 201, "has 201 parameters, over CloudFormation's limit of 200"),
        ("Resources", 501, "has 501 resources, over CloudFormation's limit of 500"),
    ],
)
def test_each_limit_is_checked(section: str, count: int, message: str) -> None:
    template = {section: {f"X{i}": {} for i in range(count)}}
    with pytest.raises(ConfigError, match=message + ".*split the pipelines"):
        check_limits(template)
    check_limits({section: {f"X{i}": {} for i in range(count - 1)}})


def test_a_body_over_the_s3_limit_is_refused() -> None:
    big = {"Description": "x" * TEMPLATE_S3_LIMIT}
    with pytest.raises(ConfigError, match=f"over CloudFormation's limit of {TEMPLATE_S3_LIMIT}"):
        check_limits(big)
    check_limits({"Description": "x" * (TEMPLATE_S3_LIMIT - 100)})


def test_a_big_template_is_written_compact() -> None:
    big = {"Resources": {f"R{i}": {"Type": "AWS::SQS::Queue"} for i in range(1500)}}
    text = render_template(big)
    assert "\n" not in text.rstrip("\n") and json.loads(text) == big
    assert "\n " in render_template({"Resources": {}})


def test_dynamodb_table_prefix() -> None:
    assert dynamodb_table_prefix(settings_of("jobs-dynamodb")) == "acme-dev-state"
    assert dynamodb_table_prefix(settings_of("line-count")) is None


def _families(t: dict[str, Any]) -> dict[str, str]:
    """Each worker service's --pipeline -> its task definition's family (default parameters)."""
    out = {}
    for r in _of_type(t, "AWS::ECS::TaskDefinition").values():
        props = r["Properties"]
        command = props["ContainerDefinitions"][0]["Command"]
        if command[0] == "worker":
            out[command[-1]] = resolve(props["Family"], defaults(t))
    return out


@pytest.mark.parametrize("reverse", [False, True])
def test_pipelines_of_one_family_name_get_distinct_families(reverse: bool) -> None:
    """'my.pipe' and 'my-pipe' both had the family {project}-{branch}-worker-my-pipe: each
    deployment of one replaced the other's task definition."""
    pipelines = [_pipeline("my.pipe", queue="q1"), _pipeline("my-pipe"), _pipeline("other")]
    t = export(Settings(pipelines=pipelines[::-1] if reverse else pipelines)).template
    families = _families(t)
    assert len(set(families.values())) == 3
    # the names that clash with nothing keep the family they had
    assert families["my-pipe"] == "s3flow-main-worker-my-pipe"
    assert families["other"] == "s3flow-main-worker-other"
    assert re.fullmatch(r"s3flow-main-worker-my-pipe-[0-9a-f]{6}", families["my.pipe"])
    # alone, a name with a dot keeps its plain family
    alone = export(Settings(pipelines=[_pipeline("my.pipe")])).template
    assert _families(alone) == {"my.pipe": "s3flow-main-worker-my-pipe"}


@pytest.mark.parametrize(
    ("jobs", "most"),
    [
        ({"project": "acme", "branch": "dev"}, (23, 31)),
        ({"project": "p" * 31, "branch": "b" * 23}, (31, 23)),
        # with a bucket of its own, the longest queue {p}-{b}-processing-dlq.fifo is the bound
        ({"project": "acme", "branch": "dev", "uploads_bucket": "acme-up"}, (28, 31)),
    ],
)
def test_project_and_branch_parameters_keep_names_within_aws_limits(
    jobs: dict[str, str], most: tuple[int, int]
) -> None:
    """Project and Branch of 31 characters each passed the AllowedPattern, and the stack
    failed on a bucket name of 71 characters and a queue name of 88."""
    config = {**JOBS_DYNAMODB, "jobs": {**JOBS_DYNAMODB["jobs"], **jobs}}
    t = export(Settings(**config)).template
    params = t["Parameters"]
    assert (params["Project"]["MaxLength"], params["Branch"]["MaxLength"]) == most
    assert f"{most[1]} characters at most" in params["Branch"]["Description"]
    for name in ("Project", "Branch"):  # the defaults fit
        assert len(params[name]["Default"]) <= params[name]["MaxLength"]
    longest = {"Project": "p" * most[0], "Branch": "b" * most[1]}
    for r in _of_type(t, "AWS::SQS::Queue").values():
        assert len(resolve(r["Properties"]["QueueName"], longest)) <= 80
    for r in _of_type(t, "AWS::S3::Bucket").values():
        assert len(resolve(r["Properties"]["BucketName"], longest)) <= 63
