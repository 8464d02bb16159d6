"""The root ``Settings`` model and ``load_settings``: TOML, environment and overrides merged."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from s3flow.errors import ConfigError
from s3flow.settings.base import AwsSettings, LocalSettings, StateSettings, WorkerSettings
from s3flow.settings.environment import (
    IndexedEnvSource,
    Loc,
    apply_env,
    covering,
    env_name,
    env_variables,
    owner,
    read_env,
    variables_inside,
)
from s3flow.settings.jobs import (
    JOBS_BRIDGE,
    JobsSettings,
    TemplateSettings,
    WebSettings,
    bridge_pipeline,
    page_origins,
)
from s3flow.settings.pipelines import PipelineSettings, queue_name_of

CONFIG_ENV = "S3FLOW_CONFIG"


def key_filters_overlap(prefixes: tuple[str, str], suffixes: tuple[str, str]) -> bool:
    """Whether one key could pass two prefix/suffix filters.

    S3's rule for notification configurations: two prefixes overlap when a key can
    start with both (one starts with the other; an empty prefix overlaps every one),
    two suffixes when a key can end with both. Filters overlap when their prefixes
    and their suffixes do.
    """
    (p, q), (s, t) = prefixes, suffixes
    return (p.startswith(q) or q.startswith(p)) and (s.endswith(t) or t.endswith(s))


def filters_overlap(a: PipelineSettings, b: PipelineSettings) -> bool:
    """Whether one key could pass both pipelines' prefix/suffix filters on one bucket
    (:func:`key_filters_overlap`; ``key_regex`` is no part of it: S3 cannot filter by it)."""
    return a.bucket == b.bucket and key_filters_overlap((a.prefix, b.prefix), (a.suffix, b.suffix))


def same_queue(a: str, b: str) -> bool:
    """Whether two ``queue`` settings (names or URLs) surely name one queue: two URLs
    when they are equal; else the names (a name is resolved in the worker's account
    and region, so a URL of another account or region with that name is taken as the
    same: the rare setup that does that can give both as URLs)."""
    if "://" in a and "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return queue_name_of(a) == queue_name_of(b)


def describe_filters(p: PipelineSettings) -> str:
    """``'name' prefix 'in/' suffix ''`` (plus its key_regex when it has one)."""
    text = f"{p.name!r} prefix {p.prefix!r} suffix {p.suffix!r}"
    return text + (f" key_regex {p.key_regex!r}" if p.key_regex is not None else "")


#: An SQS queue URL on AWS, ``https://sqs.<region>.amazonaws.com/<account>/<name>``.
_AWS_QUEUE_URL = re.compile(
    r"https://sqs\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/\d+/[^/]+/?$"
)


class Settings(BaseSettings):
    """All of s3flow's configuration, validated once at start."""

    model_config = SettingsConfigDict(
        env_prefix="S3FLOW_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    aws: AwsSettings = Field(default_factory=AwsSettings, description="AWS access.")
    worker: WorkerSettings = Field(default_factory=WorkerSettings, description="Worker process.")
    local: LocalSettings = Field(default_factory=LocalSettings, description="Embedded endpoint.")
    state: StateSettings = Field(default_factory=StateSettings, description="State store.")
    pipelines: list[PipelineSettings] = Field(
        default_factory=list, description="The pipelines this worker runs."
    )
    jobs: JobsSettings | None = Field(
        default=None, description="Upload jobs (presigned uploads, templates, live progress)."
    )
    templates: list[TemplateSettings] = Field(
        default_factory=list, description="Job templates ([[templates]])."
    )
    web: WebSettings = Field(default_factory=WebSettings, description="HTTP API and page.")

    @model_validator(mode="after")
    def _jobs_bridge(self) -> Settings:
        # [jobs] brings its own pipeline: the bridge on the intake queue. Being an
        # ordinary pipeline, provision, status, files and dlq all cover it.
        if self.jobs is not None and not any(p.name == JOBS_BRIDGE for p in self.pipelines):
            self.pipelines.append(bridge_pipeline(self.jobs))
        if self.jobs is not None and self.jobs.cors_origins is None:
            # The page's own origins: a [web] port other than 8080 still uploads.
            self.jobs.cors_origins = page_origins(self.web)
        return self

    @model_validator(mode="after")
    def _queue_regions(self) -> Settings:
        # An AWS queue URL names its region; requests go to [aws] region's endpoint,
        # where that queue does not exist ("does not exist", with no word of regions).
        for p in self.pipelines:
            for key, value in (("queue", p.queue), ("dlq", p.dlq)):
                found = _AWS_QUEUE_URL.match(value or "")
                if found and found["region"] != self.aws.region:
                    raise ValueError(
                        f"pipeline {p.name!r}: {key} {value!r} is a queue of region "
                        f"{found['region']!r}, but [aws] region is {self.aws.region!r}: set "
                        f"region = {found['region']!r} (or AWS_REGION), or name a queue of "
                        f"{self.aws.region!r}"
                    )
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        names = [t.name for t in self.templates]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(
                    f"template name {name!r} is used twice: give each template its own"
                )
        if self.templates and self.jobs is None:
            raise ValueError(
                "[[templates]] are set but [jobs] is not: add a [jobs] table with a project"
            )
        seen: set[str] = set()
        for p in self.pipelines:
            if p.name in seen:
                raise ValueError(
                    f"pipeline name {p.name!r} is used twice: give each pipeline its own"
                )
            seen.add(p.name)
        for p in self.pipelines:
            for q in self.pipelines:
                # A DLQ that a worker reads: the dead letters sent there are taken as
                # notifications (skipped as not its object, or done) and deleted. Several
                # pipelines may share one DLQ, as long as none reads it.
                if same_queue(p.dlq_name, q.queue):
                    what = "its own queue" if q is p else f"the queue of pipeline {q.name!r}"
                    raise ValueError(
                        f"pipeline {p.name!r}: dlq {p.dlq_name!r} is {what} (queue "
                        f"{q.queue!r}): its dead letters would go to a queue a worker reads, "
                        "be taken as notifications and deleted, and nothing would be kept; "
                        f"give pipeline {p.name!r} a dlq that no pipeline has as its queue "
                        "(or leave dlq out: '<queue>-dlq')"
                    )
        for p in self.pipelines:
            for q in self.pipelines:
                if q is p or q.name < p.name:
                    continue
                # The state store keys a record by object, not by pipeline: two pipelines
                # taking one object would share its record. Two key_regex are trusted to
                # keep them apart here; their bucket notifications still overlap, which
                # S3 refuses (`s3flow provision` says so: s3flow.provisioning).
                if same_queue(p.queue, q.queue):
                    raise ValueError(
                        f"pipelines {p.name!r} and {q.name!r} both read queue {q.queue!r}: "
                        "each would take the other's messages, skip their objects as not "
                        "its own and delete them; give each pipeline its own queue"
                    )
                overlap = filters_overlap(p, q)
                if overlap and not (p.key_regex and q.key_regex) and self.state.url != "none":
                    raise ValueError(
                        f"pipelines {p.name!r} and {q.name!r} both take keys of bucket "
                        f"{p.bucket!r} (prefix/suffix overlap: {describe_filters(p)}; "
                        f"{describe_filters(q)}): an object would be claimed by one and "
                        "skipped as done by the other; make the prefixes or suffixes "
                        "disjoint, or make them one pipeline whose [[pipelines.routes]] "
                        "tell the objects apart (docs/routing.md). A key_regex on both would "
                        "pass this check, but S3 refuses overlapping notifications on one "
                        "bucket, so `s3flow provision` refuses them (docs/operations.md, "
                        '"Several pipelines on one bucket")'
                    )
            ttl = self.state.claim_ttl_s
            if ttl and ttl < p.visibility_timeout_s:
                raise ValueError(
                    f"state.claim_ttl_s ({ttl}) is shorter than pipeline {p.name!r}'s "
                    f"visibility_timeout_s ({p.visibility_timeout_s}): claims are renewed with "
                    "the visibility heartbeat and would expire mid-job; use 0 (the default: "
                    "the visibility timeout) or a longer value"
                )
            if p.wait_time_s >= self.aws.read_timeout_s:
                raise ValueError(
                    f"pipeline {p.name!r}: wait_time_s ({p.wait_time_s}) must be shorter than "
                    f"aws.read_timeout_s ({self.aws.read_timeout_s}) or long polls time out"
                )
        return self

    @model_validator(mode="after")
    def _output_loops(self) -> Settings:
        # An output inside its own pipeline's notification filter is processed again,
        # for ever (1 upload made 1805 objects in a minute).
        for p in self.pipelines:
            problem = p.output_loop()
            if problem:
                raise ValueError(problem)
        # A template's outputs go to s3://<uploads bucket>/<output_prefix><job_id>/:
        # under the intake pipeline's filter, each output would be taken as an upload.
        bridge = next((p for p in self.pipelines if p.name == JOBS_BRIDGE), None)
        if self.jobs is None or bridge is None or bridge.suffix or bridge.key_regex:
            return self
        if bridge.bucket != self.jobs.bucket:
            return self
        for t in self.templates:
            if t.output_prefix.startswith(bridge.prefix):
                raise ValueError(
                    f"template {t.name!r}: output_prefix {t.output_prefix!r} is under the "
                    f"uploads prefix {bridge.prefix!r} of bucket {bridge.bucket!r}: every "
                    "job output would be taken by the intake notification as an upload; "
                    "give output_prefix a prefix outside it (the default is 'outputs/')"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # TOML is loaded by load_settings() and passed as init data; the env wins over
        # the file, and the command line's overrides over both, as documented. The env
        # source merges S3FLOW_PIPELINES__0__KEY into the file's pipeline 0 (by index)
        # instead of replacing the file's list.
        return (
            _Overrides(settings_cls),
            IndexedEnvSource(settings_cls, env_settings, init_settings),
            init_settings,
        )

    def pipeline(self, name: str) -> PipelineSettings:
        """Return the pipeline called ``name`` or raise ConfigError listing the known ones."""
        for p in self.pipelines:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.pipelines) or "(none configured)"
        raise ConfigError(f"no pipeline named {name!r}; configured pipelines: {known}")

    def template(self, name: str) -> TemplateSettings | None:
        """The job template called ``name``, or None."""
        return next((t for t in self.templates if t.name == name), None)


#: s3flow's own variables that look like ``S3FLOW_<SECTION>_<KEY>``: the API URL of
#: `s3flow upload` and the executor contract's worker id (see s3flow.executors.contract).
_OWN_VARIABLES = frozenset({"S3FLOW_WEB_URL", "S3FLOW_WORKER_ID"})


def _keys_of(annotation: Any) -> frozenset[str]:
    """The keys of a settings section's model (``X | None`` too); none for a list."""
    if get_origin(annotation) is list:
        return frozenset()
    for t in (annotation, *get_args(annotation)):
        fields = getattr(t, "model_fields", None)
        if isinstance(fields, dict):
            return frozenset(fields)
    return frozenset()


def _env_section(name: str) -> str | None:
    """The settings section an ``S3FLOW_<SECTION>...`` variable's name starts with (as
    written, lower case), or None for a name not starting ``S3FLOW_``."""
    if not name.upper().startswith("S3FLOW_"):
        return None
    return name[len("S3FLOW_") :].split("__", 1)[0].lower()


def configured_by_environment() -> bool:
    """Whether an ``S3FLOW_<SECTION>...`` variable sets a setting (a container's whole
    config may come that way, with no file)."""
    return any(_env_section(name) in Settings.model_fields for name in os.environ)


def _check_env_sections() -> None:
    """ConfigError naming each ``S3FLOW_<SECTION>__<KEY>`` variable whose section is
    none of the settings' (``S3FLOW_WORKR__SHUTDOWN_GRACE_S``): pydantic-settings
    ignores it, so the typo would go unnoticed; likewise ``S3FLOW_<SECTION>_<KEY>``
    with one underscore where a section and one of its keys meet. Other variables
    without ``__`` are left alone (``S3FLOW_CONFIG``, ``S3FLOW_OUTPUT``,
    ``S3FLOW_WEB_URL`` mean other things)."""
    sections = set(Settings.model_fields)
    unknown = sorted(
        name for name in os.environ if "__" in name and _env_section(name) not in (None, *sections)
    )
    if unknown:
        known = ", ".join(f"S3FLOW_{s.upper()}__..." for s in sorted(sections))
        raise ConfigError(
            f"environment variable {', '.join(unknown)} names no settings section: "
            f"the sections are {known}; correct or unset it"
        )
    # One underscore where two belong (S3FLOW_WORKER_SHUTDOWN_GRACE_S): a section and one
    # of its keys, so surely meant for it; other S3FLOW_ names are left alone.
    single = []
    for name in sorted(os.environ):
        rest = name[len("S3FLOW_") :].lower() if name.upper().startswith("S3FLOW_") else ""
        if not rest or "__" in rest or name.upper() in _OWN_VARIABLES:
            continue
        for section, info in Settings.model_fields.items():
            key = rest.removeprefix(section + "_")
            if rest.startswith(section + "_") and key in _keys_of(info.annotation):
                single.append(f"{name} (write S3FLOW_{section.upper()}__{key.upper()})")
    if single:
        raise ConfigError(
            f"environment variable {', '.join(single)}: a section and its key are "
            "joined with two underscores; as written the variable is ignored"
        )


#: The command line's overrides while :func:`load_settings` builds a Settings.
_OVERRIDES: ContextVar[dict[str, Any] | None] = ContextVar("s3flow_overrides", default=None)


class _Overrides(PydanticBaseSettingsSource):
    """The overrides given to :func:`load_settings` (command-line flags): the first source,
    above the environment (pydantic-settings merges the sources' nested sections)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_OVERRIDES.get() or {})


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _format_loc(loc: tuple[int | str, ...], data: dict[str, Any]) -> str:
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node):
                node = node[item]
                name = node.get("name") if isinstance(node, dict) else None
                if name:
                    label = f"[{item}] ({name!r})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + item)
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts)


def error_lines(
    exc: ValidationError,
    where: Callable[[tuple[int | str, ...]], str],
    unknown: str,
    origin: Callable[[tuple[int | str, ...]], str | None] | None = None,
) -> list[str]:
    """One ``  - <key>: <problem>`` line per error of ``exc``.

    ``where(loc)`` names the key of an error; ``unknown`` is the problem of a key the
    model does not know. Any other problem shows the bad value, unless it is a table.
    ``origin(loc)``, when given, says where the value came from and what to do
    (appended after ``; ``), or None to say nothing.
    """
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = where(loc)
        got = err.get("input")
        if err["type"] == "extra_forbidden":
            line = f"  - {key}: {unknown}"
        elif err["type"] == "list_type" and isinstance(got, dict):
            # TOML's [pipelines] is one table; [[pipelines]] starts each table of a list
            table = ".".join(str(part) for part in loc if isinstance(part, str))
            line = (
                f"  - {key}: a list of tables is wanted, this is one table: write "
                f"[[{table}]] (two brackets) above each one, not [{table}]"
            )
        else:
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            problem = err["msg"].removeprefix("Value error, ")
            line = f"  - {problem}" if not loc else f"  - {key}: {problem}{shown}"
        came = origin(loc) if origin is not None else None
        lines.append(f"{line}; {came}" if came else line)
    return lines


def format_validation_error(
    exc: ValidationError,
    source: str,
    data: dict[str, Any],
    origin: Callable[[Loc], str | None] | None = None,
) -> str:
    """Render a pydantic error as lines naming each bad key, its problem and the source.

    ``origin(loc)``: where a key's value came from (see :func:`error_lines`).
    """
    lines = error_lines(
        exc,
        lambda loc: _format_loc(loc, data) or "<top>",
        "unknown key (check the spelling; see docs/configuration.md)",
        origin,
    )
    return "\n".join([f"invalid configuration ({source}):", *lines])


def _explain(
    exc: ValidationError, path: Path | None, data: dict[str, Any], over: dict[str, Any]
) -> str:
    """The message of a settings error: each bad key with the source that gave its value.

    A value set by an ``S3FLOW_*`` variable names the variable and says to correct
    or unset it; one set on the command line says so; one from the file names the
    file when other sources are in play too (else the heading names it alone).
    """
    names = env_variables(set(Settings.model_fields))
    env = read_env(Settings, EnvSettingsSource(Settings)) if names else {}
    shown = _deep_merge(_deep_merge(data, apply_env(Settings, data, env)), over)
    sources = [str(path)] if path is not None else []
    if names:
        sources.append("environment " + ", ".join(sorted(names.values())))
    if over:
        sources.append("command-line options")
    layers = [("command line", over), ("environment", env), ("file", data)]

    def origin(loc: Loc) -> str | None:
        if not loc:  # the whole configuration: its message names the keys
            return None
        found = owner(loc, layers)
        if found is None or not found[1]:
            # A key missing from its table: say where the table comes from.
            table = found[0] if found is not None else (owner(loc[:-1], layers) or ("",))[0]
            if table != "environment":
                return None
            whole = covering(loc, names)
            if whole is not None:
                return f"its table comes from the environment variable {whole}: add it there"
            given = ", ".join(variables_inside(loc[:-1], names))
            return f"its table comes from the environment ({given}): set {env_name(loc)} too"
        layer = found[0]
        if layer == "command line":
            return "set by a command-line option"
        inside = variables_inside(loc, names)
        if layer == "environment":
            var = covering(loc, names)
            if var is None:  # a table the environment sets keys of
                return f"the environment sets {', '.join(inside)} inside it"
            return f"from the environment variable {var}: correct or unset it"
        if inside:
            return f"in {path}, with the environment setting {', '.join(inside)} inside it"
        return f"in {path}: correct it there" if len(sources) > 1 else None

    return format_validation_error(exc, "; ".join(sources) or "defaults", shown, origin)


def load_settings(
    config: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Load and validate settings from a TOML file, the environment and overrides.

    ``config`` defaults to ``$S3FLOW_CONFIG``; with neither, only the
    environment, overrides and defaults are used. Raises :class:`ConfigError`
    with a message naming each bad key.
    """
    path = config if config is not None else os.environ.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    p: Path | None = None
    if path:
        p = Path(path)
        try:
            raw = p.read_bytes()
            # A UTF-8 BOM (Windows editors write one) is no part of TOML: dropped.
            data = tomllib.loads(raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(
                f"config file {p} does not exist (given by -c/--config or {CONFIG_ENV})"
            ) from exc
        except UnicodeDecodeError as exc:
            # The whole file is decoded first: a UTF-16 file (a BOM ff fe), Latin-1
            # text or a binary file fails here, before any TOML is parsed.
            raise ConfigError(
                f"config file {p} is not UTF-8 text (byte {exc.start}: {exc.reason}): a "
                "config file must be UTF-8 TOML; save it as UTF-8"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc}") from exc
    _check_env_sections()
    token = _OVERRIDES.set(overrides or {})
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, p, data, overrides or {})) from exc
    finally:
        _OVERRIDES.reset(token)
