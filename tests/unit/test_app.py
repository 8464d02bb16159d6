"""``s3flow.app``: what building a worker loads."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Builds and "runs" a worker in a fresh interpreter, with nothing to reach: no
# queues to resolve (build_runtimes) and a run that returns at once.
_BUILD_A_WORKER = """
import asyncio, sys
from s3flow import app
from s3flow.settings import load_settings

async def no_runtimes(settings, clients, names=None):
    return []

async def run_nothing(self, *, handle_signals=False):
    return self.metrics

app.build_runtimes = no_runtimes
app.Worker.run = run_nothing
settings = load_settings(None, {"state": {"url": "none"}, "aws": {"region": "us-east-1"}})
assert settings.worker.metrics_port is None
asyncio.run(app.run_worker(settings))
print(sorted(m for m in sys.modules if m.split(".")[0] == "prometheus_client"))
"""


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_worker_without_metrics_does_not_import_prometheus_client() -> None:
    assert _python(_BUILD_A_WORKER) == "[]"


def test_the_check_would_see_prometheus_client() -> None:
    # The metrics exporter does import it: the test above looks for the right name.
    code = "import sys, s3flow.ops.exporter; print('prometheus_client' in sys.modules)"
    assert _python(code) == "True"


def test_a_pipelines_bad_options_name_the_pipeline() -> None:
    """With several line-count pipelines, "processor 'line-count': invalid options" did not
    say which one to fix."""
    import pytest

    from s3flow import app
    from s3flow.errors import ConfigError
    from s3flow.settings import PipelineSettings

    p = PipelineSettings(
        name="counts-b",
        processor="line-count",
        bucket="b",
        queue="q",
        output="s3://o/",
        options={"text_encodng": "utf-8"},
    )
    with pytest.raises(ConfigError) as err:
        app._routes_of(p)
    assert str(err.value).startswith(
        "pipeline 'counts-b' ([pipelines.options]): processor 'line-count': invalid options"
    ), err.value
    assert "text_encodng" in str(err.value)


def test_an_unknown_processor_is_named_as_the_processor_setting() -> None:
    """The name is wrong, not the options: it used to say "([pipelines.options])"."""
    import pytest

    from s3flow import app
    from s3flow.errors import ConfigError
    from s3flow.settings import PipelineSettings

    p = PipelineSettings(
        name="counts", processor="line-cnt", bucket="b", queue="q", output="s3://o/"
    )
    with pytest.raises(ConfigError) as err:
        app._routes_of(p)
    assert str(err.value).startswith("pipeline 'counts' (processor): unknown processor 'line-cnt'")


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("noproc", "has no process() method"),
        ("malformed", "is not a 'module:Class' path"),
    ],
)
def test_a_class_that_is_no_processor_is_named_as_the_processor_setting(
    monkeypatch: pytest.MonkeyPatch, kind: str, says: str
) -> None:
    """Not a processor is the processor setting's fault: it said "([pipelines.options])"."""
    from s3flow import app
    from s3flow.errors import ConfigError
    from s3flow.processors import registry
    from s3flow.processors.base import BaseProcessor, ProcessContext, Result
    from s3flow.settings import PipelineSettings

    class NotAProcessor:
        def __init__(self, options: dict[str, object]) -> None:
            pass

    class Sync(BaseProcessor):
        def process(self, ctx: ProcessContext) -> Result:  # type: ignore[override]
            return Result()

    monkeypatch.setattr(registry, "_REGISTRY", {"noproc": NotAProcessor, "sync": Sync})
    spec = ":Thumbs" if kind == "malformed" else kind
    p = PipelineSettings(name="thumbs", processor=spec, bucket="b", queue="q", output="s3://o/")
    with pytest.raises(ConfigError) as err:
        app._routes_of(p)
    # (a malformed path is refused before, choosing the executor: no label, as ever)
    label = "" if kind == "malformed" else " (processor)"
    assert str(err.value).startswith(f"pipeline 'thumbs'{label}: processor {spec!r}"), err.value
    assert says in str(err.value)


def _jobs_settings(processor: str, step: dict[str, object]) -> object:
    from s3flow.settings import load_settings

    return load_settings(
        None,
        {
            "pipelines": [
                {
                    "name": "p",
                    "processor": processor,
                    "bucket": "b",
                    "queue": "q",
                    "output": "s3://o/",
                }
            ],
            "jobs": {"project": "acme"},
            "templates": [{"name": "bundle", "steps": [step]}],
        },
    )


def test_provision_checks_processor_names_and_template_steps() -> None:
    """`s3flow provision` accepted `line_count` (a typo of line-count) and a template
    step's bad option, and created the resources; only the worker refused them."""
    import pytest

    from s3flow import app
    from s3flow.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        app.check_options(_jobs_settings("line_count", {"processor": "zip"}))  # type: ignore[arg-type]
    said = str(err.value)
    assert "pipeline 'p', route 'default': unknown processor 'line_count'" in said
    assert "did you mean 'line-count'?" in said
    with pytest.raises(ConfigError) as err:
        app.check_options(_jobs_settings("line-count", {"processor": "line_count"}))  # type: ignore[arg-type]
    assert "template 'bundle', step 1: unknown processor 'line_count'" in str(err.value)
    bad_option = {"processor": "zip", "options": {"compress": 9}}
    with pytest.raises(ConfigError) as err:
        app.check_options(_jobs_settings("line-count", bad_option))  # type: ignore[arg-type]
    assert "template 'bundle', step 1: " in str(err.value) and "compress" in str(err.value)
    # maybe a plugin installed only where the worker runs (even one named like a
    # built-in): left to the worker
    app.check_options(_jobs_settings("acme-special", {"processor": "zip"}))  # type: ignore[arg-type]
    app.check_options(_jobs_settings("unzip", {"processor": "gzip"}))  # type: ignore[arg-type]
