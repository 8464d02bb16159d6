"""Job templates are checked at start (the worker's job queue and the web app): a bad
step names its template and step, and a zip archive name cannot leave the job's folder."""

from __future__ import annotations

from typing import Any

import pytest

from s3flow.app import check_templates
from s3flow.errors import ConfigError
from s3flow.settings import load_settings
from s3flow.web.runtime import open_runtime


def settings(steps: list[dict[str, Any]]) -> Any:
    return load_settings(
        None,
        {
            "jobs": {"project": "acme", "branch": "dev"},
            "templates": [
                {"name": "count", "steps": [{"processor": "line-count"}]},
                {"name": "bad", "steps": steps},
            ],
            "state": {"url": "none"},
        },
    )


@pytest.mark.parametrize(
    ("steps", "says"),
    [
        (
            [{"processor": "line-count"}, {"processor": "zip", "options": {"name": "../x.zip"}}],
            "template 'bad', step 2 (zip): processor 'zip': invalid options:",
        ),
        (
            [{"processor": "text-to-pdf", "options": {"page_sise": "A4"}}],
            "template 'bad', step 1 (text-to-pdf): processor 'text-to-pdf': invalid options:",
        ),
        ([{"processor": "no-such-proc"}], "template 'bad', step 1 (no-such-proc): "),
    ],
)
def test_a_bad_step_names_its_template_and_step(steps: list[dict[str, Any]], says: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_templates(settings(steps))
    assert str(info.value).startswith(says), str(info.value)


def test_a_zip_name_must_be_a_plain_file_name() -> None:
    """ "../../escape.zip" made the output key outputs/<job>/../../escape.zip: clients
    normalise it (a 403 download link) or skip it (aws s3 cp --recursive)."""
    for name in ("../../escape.zip", "a/b.zip", "a\\b.zip", "..", "c:x.zip"):
        with pytest.raises(ConfigError, match="is not a plain file name"):
            check_templates(settings([{"processor": "zip", "options": {"name": name}}]))
    check_templates(settings([{"processor": "zip", "options": {"name": "résumé.zip"}}]))


async def test_the_web_app_refuses_to_start_with_a_template_that_cannot_run() -> None:
    """`s3flow web` started and took uploads for jobs that could never run."""
    bad = settings([{"processor": "no-such-proc"}])
    with pytest.raises(ConfigError, match="template 'bad', step 1"):
        async with open_runtime(bad):
            pass
