"""The ECS part of the export: network, cluster, roles' trust, task definitions, services,
queue-backlog autoscaling.

One *worker group* is one ECS service running ``s3flow worker --pipeline NAME``: one
per pipeline, and one for ``[jobs]`` (the intake bridge and the job runner on the
processing FIFO run together). Each group scales on its own queues' backlog per
running task (target tracking on CloudWatch metric math, the AWS-documented
"backlog per task" recipe): visible messages (``AWS/SQS``) divided by the
service's running tasks (``ECS/ContainerInsights``, so the cluster turns Container
Insights on). The autoscaling resources sit behind the ``UseAutoscaling``
condition (parameter ``Autoscaling``).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

from s3flow.deploy.naming import NO_VALUE, Json, Naming, get_att, if_, ref, sub
from s3flow.deploy.template import Template
from s3flow.errors import ConfigError

CONTAINER_PORT_WEB = 8080
FARGATE_MAX_STOP_TIMEOUT_S = 120
_ECS_TRUST = "ecs-tasks.amazonaws.com"
#: The web app's task definition: a fixed id, kept out of the worker groups' ids.
WEB_TASK_DEFINITION = "TaskDefinitionWeb"


@dataclass(frozen=True)
class WorkerGroup:
    """One ECS service of workers."""

    name: str
    """The group's name: the pipeline's, or ``jobs``."""
    pipeline: str
    """What ``--pipeline`` selects (``jobs-intake`` for the jobs group)."""
    queues: tuple[str, ...]
    """Queue names whose visible messages are this group's backlog."""
    backlog_per_task: int
    """Target of the autoscaling policy: visible messages per running task."""


def task_trust_policy() -> dict[str, Json]:
    """Trust of a task role: ECS tasks of this account (and region) only."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": _ECS_TRUST},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "ArnLike": {
                        "aws:SourceArn": sub(
                            "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:*"
                        )
                    },
                    "StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")},
                },
            }
        ],
    }


def add_network(t: Template) -> tuple[Json, Json]:
    """A small VPC with two public subnets, used when no ``Subnets`` are given.

    Returns the ``Subnets`` and ``SecurityGroups`` of a service's awsvpc configuration.
    """
    c = "CreateNetwork"
    t.add(
        "Vpc",
        "AWS::EC2::VPC",
        {"CidrBlock": "10.42.0.0/16", "EnableDnsHostnames": True, "EnableDnsSupport": True},
        condition=c,
    )
    t.add("InternetGateway", "AWS::EC2::InternetGateway", {}, condition=c)
    t.add(
        "VpcGatewayAttachment",
        "AWS::EC2::VPCGatewayAttachment",
        {"VpcId": ref("Vpc"), "InternetGatewayId": ref("InternetGateway")},
        condition=c,
    )
    t.add("PublicRouteTable", "AWS::EC2::RouteTable", {"VpcId": ref("Vpc")}, condition=c)
    t.add(
        "PublicRoute",
        "AWS::EC2::Route",
        {
            "RouteTableId": ref("PublicRouteTable"),
            "DestinationCidrBlock": "0.0.0.0/0",
            "GatewayId": ref("InternetGateway"),
        },
        condition=c,
        depends_on=["VpcGatewayAttachment"],
    )
    subnets = []
    for i in (0, 1):
        subnet = t.add(
            f"PublicSubnet{i + 1}",
            "AWS::EC2::Subnet",
            {
                "VpcId": ref("Vpc"),
                "CidrBlock": f"10.42.{i}.0/24",
                "AvailabilityZone": {"Fn::Select": [i, {"Fn::GetAZs": ""}]},
                "MapPublicIpOnLaunch": False,
            },
            condition=c,
        )
        t.add(
            f"PublicSubnet{i + 1}RouteTable",
            "AWS::EC2::SubnetRouteTableAssociation",
            {"SubnetId": ref(subnet), "RouteTableId": ref("PublicRouteTable")},
            condition=c,
        )
        subnets.append(ref(subnet))
    t.add(
        "TaskSecurityGroup",
        "AWS::EC2::SecurityGroup",
        {
            "GroupDescription": "s3flow tasks: outbound only",
            "VpcId": ref("Vpc"),
            "SecurityGroupEgress": [
                {"IpProtocol": "-1", "CidrIp": "0.0.0.0/0", "Description": "AWS APIs"}
            ],
        },
        condition=c,
    )
    return (
        if_(c, subnets, ref("Subnets")),
        if_(
            c,
            [ref("TaskSecurityGroup")],
            if_("HasSecurityGroups", ref("SecurityGroups"), NO_VALUE),
        ),
    )


def add_cluster(t: Template) -> None:
    """The cluster (Container Insights on: autoscaling reads its RunningTaskCount) and logs."""
    t.add(
        "Cluster",
        "AWS::ECS::Cluster",
        {
            "ClusterName": sub("${Project}-${Branch}"),
            "ClusterSettings": [{"Name": "containerInsights", "Value": "enabled"}],
        },
    )
    t.add(
        "LogGroup",
        "AWS::Logs::LogGroup",
        {"LogGroupName": sub("/s3flow/${Project}-${Branch}"), "RetentionInDays": 30},
        deletion="Delete",
    )
    t.add(
        "ExecutionRole",
        "AWS::IAM::Role",
        {
            "Description": "s3flow: pull the image, write the container logs",
            "AssumeRolePolicyDocument": task_trust_policy(),
            "Policies": [
                {
                    "PolicyName": "s3flow-task-execution",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Sid": "Logs",
                                "Effect": "Allow",
                                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                                "Resource": get_att("LogGroup", "Arn"),
                            },
                            {
                                "Sid": "PullImageToken",
                                "Effect": "Allow",
                                "Action": "ecr:GetAuthorizationToken",
                                "Resource": "*",
                            },
                            {
                                "Sid": "PullImage",
                                "Effect": "Allow",
                                "Action": [
                                    "ecr:BatchCheckLayerAvailability",
                                    "ecr:BatchGetImage",
                                    "ecr:GetDownloadUrlForLayer",
                                ],
                                "Resource": sub(
                                    "arn:${AWS::Partition}:ecr:${AWS::Region}:"
                                    "${AWS::AccountId}:repository/*"
                                ),
                            },
                        ],
                    },
                }
            ],
        },
    )


def _family_text(text: str) -> str:
    """``text`` as a task definition family may have it (``.`` becomes ``-``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)


def family_parts(names: list[str]) -> dict[str, str]:
    """Each worker group's name as its family writes it: with ``.`` as ``-``, and a short
    hash of the name when another group's would be the same (``my.pipe`` beside
    ``my-pipe``), as logical ids do. A name family-safe already keeps its plain part,
    then names in sorted order: only the colliding one changes (a stack's families stay)."""
    parts: dict[str, str] = {}
    taken: set[str] = set()
    for name in sorted(names, key=lambda n: (_family_text(n) != n, n)):
        part = _family_text(name)
        if part in taken:
            part += "-" + hashlib.sha256(name.encode()).hexdigest()[:6]
            if part in taken:
                raise ConfigError(
                    f"pipeline {name!r}: its ECS task definition family clashes with "
                    "another worker group's even with a hash of the name; rename it"
                )
        taken.add(part)
        parts[name] = part
    return parts


def worker_family_role(naming: Naming, group: str) -> str:
    """``worker-<group>``, distinct among the template's worker groups (:func:`family_parts`)."""
    names = [name for kind, name in naming.declared_names() if kind == "WorkerGroup"]
    return "worker-" + family_parts(names or [group]).get(group, _family_text(group))


def _family(naming: Naming, role: str) -> Json:
    return sub("${Project}-${Branch}-" + naming.text(_family_text(role)))


def _container(
    name: str,
    command: list[str],
    environment: list[dict[str, Json]],
    stop_timeout_s: float,
) -> dict[str, Json]:
    return {
        "Name": name,
        "Image": ref("Image"),
        "Essential": True,
        "Command": command,
        "Environment": environment,
        "StopTimeout": min(FARGATE_MAX_STOP_TIMEOUT_S, math.ceil(stop_timeout_s) + 10),
        "LogConfiguration": {
            "LogDriver": "awslogs",
            "Options": {
                "awslogs-group": ref("LogGroup"),
                "awslogs-region": ref("AWS::Region"),
                "awslogs-stream-prefix": name,
            },
        },
    }


def _task_definition(
    t: Template,
    logical_id: str,
    family: Json,
    role: str,
    container: dict[str, Json],
    cpu: Json,
    memory: Json,
) -> str:
    return t.add(
        logical_id,
        "AWS::ECS::TaskDefinition",
        {
            "Family": family,
            "RequiresCompatibilities": ["FARGATE"],
            "NetworkMode": "awsvpc",
            "Cpu": cpu,
            "Memory": memory,
            "RuntimePlatform": {"OperatingSystemFamily": "LINUX", "CpuArchitecture": "X86_64"},
            "ExecutionRoleArn": get_att("ExecutionRole", "Arn"),
            "TaskRoleArn": get_att(role, "Arn"),
            "ContainerDefinitions": [container],
        },
    )


def add_worker_group(
    t: Template,
    naming: Naming,
    group: WorkerGroup,
    *,
    environment: list[dict[str, Json]],
    network: tuple[Json, Json],
    queue_name: dict[str, Json],
    stop_timeout_s: float,
    single_task: bool = False,
) -> str:
    """Task definition, service and (conditional) autoscaling of one group; the service's id.

    ``queue_name`` maps a queue's name to its ``QueueName`` attribute in the template.
    ``single_task``: never two tasks at once, not even during a deployment (the state
    store is on the task's disk): the old task stops before the new one starts.
    """
    base = naming.stem("WorkerGroup", group.name)
    task = _task_definition(
        t,
        naming.logical_id("WorkerGroup", group.name, "TaskDefinition{}"),
        _family(naming, worker_family_role(naming, group.name)),
        "WorkerTaskRole",
        _container("worker", ["worker", "--pipeline", group.pipeline], environment, stop_timeout_s),
        ref("WorkerCpu"),
        ref("WorkerMemory"),
    )
    subnets, security_groups = network
    service = t.add(
        naming.logical_id("WorkerGroup", group.name),
        "AWS::ECS::Service",
        {
            "Cluster": ref("Cluster"),
            "TaskDefinition": ref(task),
            "LaunchType": "FARGATE",
            # With autoscaling the count belongs to it: an update must not reset it.
            "DesiredCount": if_("UseAutoscaling", NO_VALUE, ref("DesiredTasks")),
            "DeploymentConfiguration": {
                "MinimumHealthyPercent": 0 if single_task else 100,
                "MaximumPercent": 100 if single_task else 200,
                "DeploymentCircuitBreaker": {"Enable": True, "Rollback": True},
            },
            "NetworkConfiguration": {
                "AwsvpcConfiguration": {
                    "AssignPublicIp": ref("AssignPublicIp"),
                    "Subnets": subnets,
                    "SecurityGroups": security_groups,
                }
            },
            "PropagateTags": "SERVICE",
            "Tags": [{"Key": "s3flow:worker-group", "Value": naming.name(group.name)}],
        },
    )
    target = t.add(
        naming.logical_id("WorkerGroup", group.name, "ScalableTarget{}"),
        "AWS::ApplicationAutoScaling::ScalableTarget",
        {
            "ServiceNamespace": "ecs",
            "ScalableDimension": "ecs:service:DesiredCount",
            "ResourceId": {
                "Fn::Join": ["/", ["service", ref("Cluster"), get_att(service, "Name")]]
            },
            "MinCapacity": ref("DesiredTasks"),
            "MaxCapacity": ref("MaxTasks"),
        },
        condition="UseAutoscaling",
    )
    metrics: list[Json] = []
    for i, queue in enumerate(group.queues, start=1):
        metrics.append(
            {
                "Id": f"q{i}",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/SQS",
                        "MetricName": "ApproximateNumberOfMessagesVisible",
                        "Dimensions": [{"Name": "QueueName", "Value": queue_name[queue]}],
                    },
                    "Stat": "Sum",
                },
                "ReturnData": False,
            }
        )
    metrics.append(
        {
            "Id": "tasks",
            "MetricStat": {
                "Metric": {
                    "Namespace": "ECS/ContainerInsights",
                    "MetricName": "RunningTaskCount",
                    "Dimensions": [
                        {"Name": "ClusterName", "Value": ref("Cluster")},
                        {"Name": "ServiceName", "Value": get_att(service, "Name")},
                    ],
                },
                "Stat": "Average",
            },
            "ReturnData": False,
        }
    )
    backlog = " + ".join(f"q{i}" for i in range(1, len(group.queues) + 1))
    metrics.append(
        {
            "Id": "backlogPerTask",
            "Label": "visible messages per running task",
            "Expression": f"({backlog}) / tasks",
            "ReturnData": True,
        }
    )
    t.add(
        naming.logical_id("WorkerGroup", group.name, "ScalingPolicy{}"),
        "AWS::ApplicationAutoScaling::ScalingPolicy",
        {
            "PolicyName": sub("${AWS::StackName}-" + base + "-backlog-per-task"),
            "PolicyType": "TargetTrackingScaling",
            "ScalingTargetId": ref(target),
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": group.backlog_per_task,
                "ScaleOutCooldown": 60,
                "ScaleInCooldown": 300,
                "CustomizedMetricSpecification": {"Metrics": metrics},
            },
        },
        condition="UseAutoscaling",
    )
    return service


def add_web_task(
    t: Template,
    naming: Naming,
    *,
    environment: list[dict[str, Json]],
) -> str:
    """The web app's task definition (no service: it belongs behind your load balancer)."""
    container = _container(
        "web",
        ["web", "--host", "0.0.0.0", "--port", str(CONTAINER_PORT_WEB)],
        environment,
        10,
    )
    container["PortMappings"] = [{"ContainerPort": CONTAINER_PORT_WEB, "Protocol": "tcp"}]
    return _task_definition(
        t, WEB_TASK_DEFINITION, _family(naming, "web"), "WebTaskRole", container, "512", "1024"
    )
