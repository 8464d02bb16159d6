"""The template's parameters and the conditions built on them.

Every parameter has a default, so a stack can be created without passing any.
"""

from __future__ import annotations

from s3flow.deploy.naming import Json, Naming, ref
from s3flow.deploy.template import Template

_NAME_PATTERN = "^[a-z0-9][a-z0-9-]{0,30}$"
#: The longest Project or Branch (the pattern's 31).
_PART_MAX = 31
#: AWS's longest name of each kind of named resource (S3 bucket, SQS queue, DynamoDB table).
_NAME_MAX = {"Bucket": 63, "Queue": 80, "Table": 255}


def part_lengths(naming: Naming) -> tuple[int, int]:
    """The ``MaxLength`` of the ``Project`` and ``Branch`` parameters.

    A name holding ``{project}-{branch}-`` grows with them (the uploads bucket
    ``{project}-{branch}-uploads`` may have 63 characters): together they may have as
    many characters as the tightest such name leaves. The branch (one stack each) gets
    as much of that as the config's project leaves it, the project the rest; neither is
    below the config's own (which the settings already fit).
    """
    own = len(naming.project) + len(naming.branch)
    room = 2 * _PART_MAX
    for kind, name in naming.declared_names():
        limit = _NAME_MAX.get(kind)
        times = naming.text(name).count("${Project}")
        if limit is not None and times:
            room = min(room, own + (limit - len(name)) // times)
    branch = max(len(naming.branch), min(_PART_MAX, room - len(naming.project)))
    project = max(len(naming.project), min(_PART_MAX, room - branch))
    return project, branch


def parameter(type_: str, default: Json, description: str, **constraints: Json) -> dict[str, Json]:
    """One parameter: ``Type``, ``Default``, the ``constraints`` (``MinValue``,
    ``AllowedValues``...), then ``Description`` (the order the template is written in)."""
    return {"Type": type_, "Default": default, **constraints, "Description": description}


def add_parameters(t: Template, naming: Naming, *, single_task: bool = False) -> None:
    """Add the parameters (names, sizes, network, alarms) and their conditions to ``t``.

    ``single_task``: the state store lives on a task's disk (SQLite), so a worker group
    runs one task: ``MaxTasks`` defaults to 1 and ``Autoscaling`` to ``false``.
    """
    p = t.parameters
    project_max, branch_max = part_lengths(naming)
    limit = " ({} characters at most: the names it goes in keep to AWS's limits)"
    p["Image"] = parameter(
        "String",
        "s3flow:latest",
        "Container image of s3flow (the repository's Dockerfile), "
        "e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/s3flow:0.1.0",
    )
    p["Project"] = parameter(
        "String",
        naming.project,
        "First part of resource names ({project}-{branch}-{role})" + limit.format(project_max),
        AllowedPattern=_NAME_PATTERN,
        MaxLength=project_max,
    )
    p["Branch"] = parameter(
        "String",
        naming.branch,
        "Second part of resource names: one stack per branch" + limit.format(branch_max),
        AllowedPattern=_NAME_PATTERN,
        MaxLength=branch_max,
    )
    p["DesiredTasks"] = parameter(
        "Number",
        1,
        "Tasks per worker group; with autoscaling, the minimum",
        MinValue=0,
        MaxValue=1000,
    )
    p["MaxTasks"] = parameter(
        "Number",
        1 if single_task else 4,
        "Most tasks per worker group (autoscaling)",
        MinValue=1,
        MaxValue=1000,
    )
    p["Autoscaling"] = parameter(
        "String",
        "false" if single_task else "true",
        "Scale each worker group on its queue backlog per task",
        AllowedValues=["true", "false"],
    )
    p["WorkerCpu"] = parameter(
        "String",
        "1024",
        "CPU units of a worker task (Fargate: 1024 = 1 vCPU)",
        AllowedValues=["256", "512", "1024", "2048", "4096", "8192", "16384"],
    )
    p["WorkerMemory"] = parameter(
        "String", "2048", "Memory of a worker task in MiB (a valid Fargate size for the CPU)"
    )
    p["Subnets"] = parameter(
        "CommaDelimitedList",
        "",
        "Subnets of the tasks; empty: a new VPC with two public subnets",
    )
    p["SecurityGroups"] = parameter(
        "CommaDelimitedList",
        "",
        "Security groups of the tasks (with Subnets); empty: the default",
    )
    p["AssignPublicIp"] = parameter(
        "String",
        "ENABLED",
        "ENABLED in public subnets; DISABLED behind NAT or VPC endpoints",
        AllowedValues=["ENABLED", "DISABLED"],
    )
    p["MaxMessageAgeSeconds"] = parameter(
        "Number", 900, "Alarm when a queue's oldest message is older than this", MinValue=60
    )
    p["AlarmTopicArn"] = parameter("String", "", "SNS topic for alarm notifications (empty: none)")
    c = t.conditions
    c["UseAutoscaling"] = {"Fn::Equals": [ref("Autoscaling"), "true"]}
    # The first member of an empty CommaDelimitedList is "".
    c["CreateNetwork"] = {"Fn::Equals": [{"Fn::Select": [0, ref("Subnets")]}, ""]}
    c["HasSecurityGroups"] = {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Select": [0, ref("SecurityGroups")]}, ""]}]
    }
    c["HasAlarmTopic"] = {"Fn::Not": [{"Fn::Equals": [ref("AlarmTopicArn"), ""]}]}
