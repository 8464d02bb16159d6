"""cfn-lint passes on the exported template of every example config and of the test configs.

The example configs are whatever ``examples/**/*.toml`` holds when the tests run (the
folder may grow); the test configs add a jobs + DynamoDB config and an
NDJSON-to-Parquet config with a DynamoDB store. Errors and warnings fail the test;
cfn-lint's informational checks are run too and reported in the failure message.
"""

from __future__ import annotations

from typing import Any

import pytest
from cfn_support import CONFIGS, EXAMPLES, ROOT, export, settings_of

from s3flow.deploy import render_template

cfnlint_api = pytest.importorskip("cfnlint.api", reason="cfn-lint is in the dev extra")

REGIONS = ["us-east-1", "eu-west-1"]


def _lint(name: str) -> tuple[list[Any], list[Any]]:
    body = render_template(export(settings_of(name)).template)
    config = cfnlint_api.ManualArgs(regions=REGIONS, include_checks=["I"])
    matches = cfnlint_api.lint(body, config=config)
    bad = [m for m in matches if m.rule.id[0] in ("E", "W")]
    return bad, matches


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cfn_lint_passes_on_the_test_configs(name: str) -> None:
    bad, matches = _lint(name)
    assert not bad, "\n".join(map(str, matches))


@pytest.mark.parametrize(
    "path", [str(p) for p in EXAMPLES], ids=[str(p.relative_to(ROOT)) for p in EXAMPLES]
)
def test_cfn_lint_passes_on_every_example_config(path: str) -> None:
    bad, matches = _lint(path)
    assert not bad, "\n".join(map(str, matches))


def test_the_check_can_fail() -> None:
    body = render_template(export(settings_of("line-count")).template).replace(
        '"sqs:ReceiveMessage"', '"sqs:ReceiveMessagez"'
    )
    config = cfnlint_api.ManualArgs(regions=REGIONS)
    assert any(
        m.rule.id.startswith("W") or m.rule.id.startswith("E")
        for m in cfnlint_api.lint(body, config=config)
    )
