"""Deploying s3flow: a CloudFormation template for everything a config needs.

``s3flow provision --export cloudformation`` calls :func:`export_cloudformation`;
docs/deploy.md walks through a deployment. This package sits in the base layer
with :mod:`s3flow.provisioning`: it reads settings and writes a template, and the
state store's table definitions are handed to it (it does not import the store).
"""

from __future__ import annotations

from s3flow.deploy.cloudformation import (
    CloudFormationExport,
    dynamodb_table_prefix,
    export_cloudformation,
)
from s3flow.deploy.template import TEMPLATE_BODY_LIMIT, render_template

__all__ = [
    "TEMPLATE_BODY_LIMIT",
    "CloudFormationExport",
    "dynamodb_table_prefix",
    "export_cloudformation",
    "render_template",
]
