"""Generate the configuration reference from the Settings model (one source of truth).

Also documents each built-in processor's ``[pipelines.options]`` from its
``options_model``, so this module sits at the assembly level (it reads the
processor registry).
"""

from __future__ import annotations

import inspect
import re
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from s3flow.settings import (
    AwsSettings,
    BatchExecutorSettings,
    EcsExecutorSettings,
    JobsSettings,
    LocalSettings,
    PipelineSettings,
    PoolExecutorSettings,
    RouteSettings,
    StateSettings,
    StepSettings,
    SubprocessExecutorSettings,
    TemplateSettings,
    ValidationSettings,
    WebSettings,
    WorkerSettings,
)

_SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("[aws]", AwsSettings, "S3FLOW_AWS__"),
    ("[worker]", WorkerSettings, "S3FLOW_WORKER__"),
    ("[local]", LocalSettings, "S3FLOW_LOCAL__"),
    ("[state]", StateSettings, "S3FLOW_STATE__"),
    ("[[pipelines]]", PipelineSettings, ""),
    ("[pipelines.validation]", ValidationSettings, ""),
    ("[[pipelines.routes]]", RouteSettings, ""),
    ("[pipelines.executors.pool]", PoolExecutorSettings, ""),
    ("[pipelines.executors.subprocess]", SubprocessExecutorSettings, ""),
    ("[pipelines.executors.ecs]", EcsExecutorSettings, ""),
    ("[pipelines.executors.batch]", BatchExecutorSettings, ""),
    ("[jobs]", JobsSettings, "S3FLOW_JOBS__"),
    ("[[templates]]", TemplateSettings, ""),
    ("[[templates]] steps = [{...}]", StepSettings, ""),
    ("[web]", WebSettings, "S3FLOW_WEB__"),
]


def _type_name(info: FieldInfo) -> str:
    ann: Any = info.annotation
    text = str(ann) if get_args(ann) else (getattr(ann, "__name__", None) or str(ann))
    text = text.replace("typing.", "").replace("NoneType", "None")
    # Models live in submodules of the package; name them by its public path.
    text = re.sub(r"\bs3flow\.settings\.[a-z_]+\.(?=[A-Z])", "s3flow.settings.", text)
    return text.replace("|", "\\|")


def _default(info: FieldInfo) -> str:
    if info.default is PydanticUndefined:
        return "dynamic" if info.default_factory is not None else "**required**"
    return f"`{info.default!r}`"


def _processor_sections() -> list[tuple[str, type[BaseModel], str]]:
    from s3flow.processors import builtin_processors

    out: list[tuple[str, type[BaseModel], str]] = []
    for name, cls in sorted(builtin_processors().items()):
        model = getattr(cls, "options_model", None)
        # Only s3flow's own processors: user-registered ones document themselves.
        # The jobs bridge's options come from [jobs], never from a user.
        internal = name == "jobs-bridge"
        if (
            model is not None
            and not internal
            and getattr(cls, "__module__", "").startswith("s3flow.")
        ):
            out.append((f'[pipelines.options] of processor = "{name}"', model, ""))
    return out


def settings_reference() -> str:
    """Markdown tables: one per section, one row per key."""
    out = [
        "# Configuration reference",
        "",
        "Generated from `s3flow.settings` (`s3flow config-reference`). Sources, highest",
        "priority first: CLI flags, `S3FLOW_*` environment variables (nested with `__`,",
        "e.g. `S3FLOW_WORKER__SHUTDOWN_GRACE_S=10`), the TOML file (`-c s3flow.toml`, or",
        "`S3FLOW_CONFIG`, else `./s3flow.toml` when it exists), defaults. Unknown keys are",
        "errors that name the key.",
        "",
    ]
    for title, model, env in [*_SECTIONS, *_processor_sections()]:
        out += [f"## `{title}`", "", inspect.cleandoc(model.__doc__ or ""), ""]
        if env:
            out += [f"Environment: `{env}<KEY>`.", ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            desc = (info.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | `{_type_name(info)}` | {_default(info)} | {desc} |")
        out.append("")
    return "\n".join(out)
