"""A CloudFormation template under construction: its sections and how it is written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from s3flow.deploy.naming import Json
from s3flow.errors import ConfigError

#: CloudFormation's limit for a template passed inline (``TemplateBody``); a bigger one
#: must be uploaded to S3 first (``aws cloudformation deploy --s3-bucket ...``).
TEMPLATE_BODY_LIMIT = 51_200
#: CloudFormation's limit for a template uploaded to S3 (``TemplateURL``), in bytes.
TEMPLATE_S3_LIMIT = 1_048_576
#: CloudFormation's quotas per template: resources, outputs, parameters.
SECTION_LIMITS = {"Resources": 500, "Outputs": 200, "Parameters": 200}


@dataclass
class Template:
    """Sections of a template; ``add`` refuses a logical id used twice."""

    description: str
    parameters: dict[str, Json] = field(default_factory=dict)
    conditions: dict[str, Json] = field(default_factory=dict)
    resources: dict[str, Json] = field(default_factory=dict)
    outputs: dict[str, Json] = field(default_factory=dict)

    def add(
        self,
        logical_id: str,
        type_: str,
        properties: dict[str, Json],
        *,
        condition: str | None = None,
        depends_on: list[str] | None = None,
        deletion: str | None = None,
    ) -> str:
        """Add a resource; returns its logical id.

        ``deletion``: its ``DeletionPolicy`` and ``UpdateReplacePolicy`` (``Retain`` keeps
        a bucket or table when the stack is deleted or the resource replaced).
        """
        if logical_id in self.resources:
            raise ValueError(f"logical id {logical_id!r} is used twice")
        resource: dict[str, Json] = {"Type": type_}
        if condition is not None:
            resource["Condition"] = condition
        if depends_on:
            resource["DependsOn"] = sorted(set(depends_on))
        if deletion is not None:
            resource["DeletionPolicy"] = deletion
            resource["UpdateReplacePolicy"] = deletion
        resource["Properties"] = properties
        self.resources[logical_id] = resource
        return logical_id

    def output(
        self, name: str, value: Json, description: str, *, condition: str | None = None
    ) -> None:
        """Add an output (a name used twice is refused, as for :meth:`add`)."""
        if name in self.outputs:
            raise ValueError(f"output {name!r} is used twice")
        out: dict[str, Json] = {"Description": description, "Value": value}
        if condition is not None:
            out["Condition"] = condition
        self.outputs[name] = out

    def to_dict(self) -> dict[str, Any]:
        """The template as a JSON-ready dict (empty sections left out)."""
        doc: dict[str, Any] = {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Description": self.description,
        }
        for key, section in (
            ("Parameters", self.parameters),
            ("Conditions", self.conditions),
            ("Resources", self.resources),
            ("Outputs", self.outputs),
        ):
            if section:
                doc[key] = section
        return doc


def render_template(template: dict[str, Any]) -> str:
    """The template as JSON text ending with a newline.

    Indented when that fits in CloudFormation's inline limit
    (:data:`TEMPLATE_BODY_LIMIT`), else without whitespace, so that a template that
    can be passed inline is (the compact form of a large config is about 35% smaller).
    """
    pretty = json.dumps(template, indent=1, ensure_ascii=False) + "\n"
    if len(pretty.encode()) <= TEMPLATE_BODY_LIMIT:
        return pretty
    return json.dumps(template, separators=(",", ":"), ensure_ascii=False) + "\n"


def check_limits(template: dict[str, Any]) -> None:
    """Raise :class:`~s3flow.errors.ConfigError` when CloudFormation would refuse
    ``template``: more resources, outputs or parameters than a stack may have, or a
    body over :data:`TEMPLATE_S3_LIMIT` even written compact and uploaded to S3."""
    split = "split the pipelines across several configs, one stack each"
    for section, limit in SECTION_LIMITS.items():
        count = len(template.get(section, {}))
        if count > limit:
            raise ConfigError(
                f"the template has {count} {section.lower()}, over CloudFormation's limit "
                f"of {limit} per stack: {split}"
            )
    size = len(render_template(template).encode())
    if size > TEMPLATE_S3_LIMIT:
        raise ConfigError(
            f"the template is {size} bytes, over CloudFormation's limit of "
            f"{TEMPLATE_S3_LIMIT} bytes even from S3: {split}"
        )
