"""docs.settings_reference: every setting is documented."""

from __future__ import annotations

import pytest

from s3flow.docs import settings_reference
from s3flow.settings import AwsSettings, LocalSettings, PipelineSettings, WorkerSettings


@pytest.mark.parametrize("name", sorted(PipelineSettings.model_fields))
def test_every_pipeline_field_is_in_the_reference(name: str) -> None:
    assert f"| `{name}` |" in settings_reference()


@pytest.mark.parametrize(
    "model", [AwsSettings, WorkerSettings, LocalSettings], ids=lambda m: m.__name__
)
def test_every_section_field_is_in_the_reference(model: type) -> None:
    ref = settings_reference()
    for name in model.model_fields:  # type: ignore[attr-defined]
        assert f"| `{name}` |" in ref


def test_reference_structure() -> None:
    ref = settings_reference()
    assert ref.startswith("# Configuration reference")
    for section in ("## `[aws]`", "## `[worker]`", "## `[local]`", "## `[[pipelines]]`"):
        assert section in ref
    assert "Environment: `S3FLOW_WORKER__<KEY>`." in ref
    # required fields and literal defaults are shown
    assert "| `bucket` | `str` | **required** |" in ref
    assert "| `concurrency` | `int` | `16` |" in ref
    assert "| `max_receive_count` | `int` | `3` |" in ref


def test_committed_configuration_reference_is_up_to_date() -> None:
    from pathlib import Path

    committed = Path(__file__).parents[2] / "docs" / "configuration.md"
    assert committed.read_text().strip() == settings_reference().strip(), (
        "docs/configuration.md is stale: run `s3flow config-reference > docs/configuration.md`"
    )
