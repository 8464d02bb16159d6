"""The exported CloudFormation template deploys to a CloudFormation emulator and runs.

MiniStack (see deploy_support.py) on 127.0.0.1: the template of a config with a
line-count pipeline, ``[jobs]`` and a DynamoDB state store is created with
``Autoscaling=false`` (the emulator has no Application Auto Scaling) and another
``Branch`` than the config's, so every name goes through the parameters. Then the
worker runs the way its ECS task would: the command and environment of the deployed
task definition (no config file), in burst mode, against the deployed stack, and
processes an uploaded file. A second deploy of the same template changes nothing.

MiniStack records ECS services but runs no containers here (no Docker), refuses
metric-math alarms (the DLQ depth alarms are cut to their first metric), does not
evaluate IAM or resource policies, and does not store a bucket's
``LifecycleConfiguration`` or ``BucketEncryption`` given through CloudFormation:
those are checked by cfn-lint and the unit tests, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from deploy_support import (
    CREDENTIALS,
    client,
    failed_events,
    ministack,
    wait_stack,
)

from s3flow.deploy import dynamodb_table_prefix, export_cloudformation, render_template
from s3flow.settings import Settings
from s3flow.state.dynamodb.tables import table_definitions

pytestmark = pytest.mark.integration

BRANCH = "it"  # deployed; the config says "cfg"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ministack(tmp_path_factory.mktemp("ministack")) as url:
        yield url


def _settings(project: str) -> Settings:
    pre = f"{project}-cfg-"
    return Settings(
        state={"url": f"dynamodb://{pre}state"},
        jobs={"project": project, "branch": "cfg", "wait_time_s": 1},
        templates=[{"name": "count", "steps": [{"processor": "line-count"}]}],
        pipelines=[
            {
                "name": "counts",
                "processor": "line-count",
                "bucket": f"{pre}incoming",
                "prefix": "logs/",
                "queue": f"{pre}counts",
                "output": f"s3://{pre}results/counts/",
                "wait_time_s": 1,
                "visibility_timeout_s": 30,
            }
        ],
    )


def _deploy(cfn: Any, name: str, body: str, params: list[dict[str, str]], *, update: bool) -> None:
    call = cfn.update_stack if update else cfn.create_stack
    call(StackName=name, TemplateBody=body, Parameters=params, Capabilities=["CAPABILITY_IAM"])


def _without_metric_math(template: dict[str, Any]) -> dict[str, Any]:
    """The template with each metric-math alarm (the DLQ depth alarms: visible + held +
    delayed) cut down to its first metric. MiniStack refuses ``Metrics`` ("metric math
    is not supported"); AWS takes it, and cfn-lint checks it (tests/unit/deploy)."""
    out = json.loads(json.dumps(template))
    for res in out["Resources"].values():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::CloudWatch::Alarm" and "Metrics" in props:
            stat = props.pop("Metrics")[0]["MetricStat"]
            props.update(stat["Metric"], Period=stat["Period"], Statistic=stat["Stat"])
    return out


def test_template_deploys_and_a_worker_runs_against_the_stack(
    emulator: str, tmp_path: Path
) -> None:
    project = f"t{uuid.uuid4().hex[:8]}"
    settings = _settings(project)
    prefix = dynamodb_table_prefix(settings)
    assert prefix is not None
    export = export_cloudformation(settings, tables=table_definitions(prefix))
    body = render_template(_without_metric_math(export.template))
    stack = f"s3flow-{project}"
    params = [
        {"ParameterKey": "Autoscaling", "ParameterValue": "false"},
        {"ParameterKey": "Branch", "ParameterValue": BRANCH},
    ]
    cfn = client(emulator, "cloudformation")

    _deploy(cfn, stack, body, params, update=False)
    desc = wait_stack(cfn, stack)
    assert desc["StackStatus"] == "CREATE_COMPLETE", failed_events(cfn, stack)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in desc.get("Outputs", [])}

    # What the template declared, as the emulator's APIs now report it.
    pre = f"{project}-{BRANCH}-"
    s3, sqs = client(emulator, "s3"), client(emulator, "sqs")
    for bucket in (f"{pre}incoming", f"{pre}results", f"{pre}uploads"):
        pab = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert all(pab.values()), (bucket, pab)
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        (deny,) = policy["Statement"]
        assert deny["Effect"] == "Deny"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    cors = s3.get_bucket_cors(Bucket=f"{pre}uploads")["CORSRules"]
    assert cors[0]["AllowedMethods"] == ["GET", "POST"]
    notif = s3.get_bucket_notification_configuration(Bucket=f"{pre}incoming")
    (config,) = notif["QueueConfigurations"]
    assert config["QueueArn"].endswith(f":{pre}counts")
    assert config["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "logs/"}]

    def attrs(name: str) -> dict[str, str]:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        got: dict[str, str] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])[
            "Attributes"
        ]
        return got

    counts = attrs(f"{pre}counts")
    assert json.loads(counts["RedrivePolicy"])["deadLetterTargetArn"].endswith(f":{pre}counts-dlq")
    assert counts["SqsManagedSseEnabled"] == "true"
    queue_policy = json.loads(counts["Policy"])["Statement"][0]["Condition"]
    assert queue_policy["ArnLike"]["aws:SourceArn"] == f"arn:aws:s3:::{pre}incoming"
    assert queue_policy["StringEquals"]["aws:SourceAccount"]
    assert attrs(f"{pre}counts-dlq")["MessageRetentionPeriod"] == "1209600"
    for fifo in ("processing.fifo", "processing-dlq.fifo", "progress.fifo"):
        assert attrs(f"{pre}{fifo}")["FifoQueue"] == "true"
    ddb = client(emulator, "dynamodb")
    for definition in table_definitions(f"{pre}state"):
        table = ddb.describe_table(TableName=definition["TableName"])["Table"]
        assert table["KeySchema"] == definition["KeySchema"]
        assert [i["IndexName"] for i in table.get("GlobalSecondaryIndexes", [])] == [
            i["IndexName"] for i in definition.get("GlobalSecondaryIndexes", [])
        ]

    # The worker as its ECS task runs it: the deployed task definition's command and
    # environment, no config file, against the deployed resources.
    ecs = client(emulator, "ecs")
    cluster = outputs["ClusterName"]
    assert cluster == f"{project}-{BRANCH}"
    services = ecs.describe_services(cluster=cluster, services=[outputs["ServiceCountsName"]])[
        "services"
    ]
    assert services and services[0]["desiredCount"] == 1
    task = ecs.describe_task_definition(taskDefinition=services[0]["taskDefinition"])
    (container,) = task["taskDefinition"]["containerDefinitions"]
    assert container["command"] == ["worker", "--pipeline", "counts"]
    task_env = {e["name"]: e["value"] for e in container["environment"]}

    s3.put_object(Bucket=f"{pre}incoming", Key="logs/a b.txt", Body=b"1\n2\n3\n")
    s3.put_object(Bucket=f"{pre}incoming", Key="other/skipped.txt", Body=b"x\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3FLOW_", "AWS_"))}
    env.update(task_env)
    env.update(
        {
            "AWS_ENDPOINT_URL": emulator,
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        }
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "s3flow", *container["command"], "--burst"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "counts: processed 1," in done.stderr, done.stderr[-3000:]
    result = json.loads(
        s3.get_object(Bucket=f"{pre}results", Key="counts/logs/a b.txt.json")["Body"].read()
    )
    assert result["lines"] == 3, result
    # The file's record is in the deployed DynamoDB store.
    items = ddb.scan(TableName=f"{pre}state-files")["Items"]
    assert any("a b.txt" in json.dumps(i) for i in items), items
    print(f"worker run against the stack: {time.monotonic() - started:.1f}s")

    # The same template again changes nothing.
    with pytest.raises(ClientError) as exc:
        _deploy(cfn, stack, body, params, update=True)
    assert "No updates are to be performed" in str(exc.value)
    assert wait_stack(cfn, stack)["StackStatus"] == "CREATE_COMPLETE"


def test_the_emulator_has_no_application_auto_scaling(emulator: str) -> None:
    """Why the deploy test passes Autoscaling=false: the default needs a real account."""
    project = f"t{uuid.uuid4().hex[:8]}"
    settings = _settings(project)
    prefix = dynamodb_table_prefix(settings)
    assert prefix is not None
    body = render_template(
        export_cloudformation(settings, tables=table_definitions(prefix)).template
    )
    cfn = client(emulator, "cloudformation")
    with pytest.raises(ClientError) as exc:
        _deploy(cfn, f"s3flow-{project}", body, [], update=False)
    assert "AWS::ApplicationAutoScaling::ScalableTarget" in str(exc.value)
