"""settings.load_settings: the documented example, unknown keys, bad values, sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3flow.errors import ConfigError
from s3flow.settings import CONFIG_ENV, PipelineSettings, Settings, load_settings
from s3flow.settings.jobs import NAME_PREFIX_MAX, JobsSettings
from s3flow.settings.loading import filters_overlap

DOCUMENTED_EXAMPLE = """\
[aws]
region = "us-east-1"            # endpoint from AWS_ENDPOINT_URL* when set

[[pipelines]]
name = "counts"
processor = "line-count"
bucket = "incoming"
prefix = "logs/"
queue = "counts-events"        # its DLQ: "counts-events-dlq"
output = "s3://results/counts/"
concurrency = 32
visibility_timeout_s = 60
max_receive_count = 3
"""

MINIMAL_PIPELINE = """\
[[pipelines]]
name = "counts"
bucket = "incoming"
queue = "counts-events"
output = "s3://results/counts/"
"""


def write(tmp_path: Path, text: str, name: str = "s3flow.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


def test_documented_example_loads(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, DOCUMENTED_EXAMPLE))
    assert isinstance(s, Settings)
    assert s.aws.region == "us-east-1"
    assert len(s.pipelines) == 1
    p = s.pipelines[0]
    assert p.name == "counts"
    assert p.processor == "line-count"
    assert p.bucket == "incoming"
    assert p.prefix == "logs/"
    assert p.queue == "counts-events"
    assert p.dlq is None
    assert p.dlq_name == "counts-events-dlq"
    assert p.output == "s3://results/counts/"
    assert p.concurrency == 32
    assert p.visibility_timeout_s == 60
    assert p.max_receive_count == 3
    assert s.pipeline("counts") is p


def test_documented_example_accepts_str_path(tmp_path: Path) -> None:
    s = load_settings(str(write(tmp_path, DOCUMENTED_EXAMPLE)))
    assert s.pipelines[0].concurrency == 32


def test_defaults(tmp_path: Path) -> None:
    p = load_settings(write(tmp_path, MINIMAL_PIPELINE)).pipelines[0]
    assert p.max_receive_count == 3
    assert p.wait_time_s == 20
    assert p.processor == "line-count"
    assert p.concurrency == 16
    assert p.prefix == "" and p.suffix == "" and p.key_regex is None
    assert p.ignore_removed is True
    assert p.options == {}


def test_no_file_at_all_gives_defaults() -> None:
    s = load_settings(None)
    assert s.pipelines == []
    assert s.aws.region == "us-east-1"
    assert s.worker.shutdown_grace_s == 30.0


def test_explicit_dlq_and_queue_url(tmp_path: Path) -> None:
    text = MINIMAL_PIPELINE + 'dlq = "my-dead-letters"\n'
    assert load_settings(write(tmp_path, text)).pipelines[0].dlq_name == "my-dead-letters"
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/counts-events/"
    p = PipelineSettings(name="x", bucket="b", queue=url, output="/tmp/out")
    assert p.dlq_name == "https://sqs.us-east-1.amazonaws.com/123456789012/counts-events-dlq"


def test_pipeline_options_table(tmp_path: Path) -> None:
    text = MINIMAL_PIPELINE + '[pipelines.options]\ntext_encoding = "utf-8"\n'
    assert load_settings(write(tmp_path, text)).pipelines[0].options == {"text_encoding": "utf-8"}


def test_unknown_top_level_key(tmp_path: Path) -> None:
    msg = config_error(write(tmp_path, 'pipelnes = "oops"\n' + DOCUMENTED_EXAMPLE))
    assert "pipelnes" in msg
    assert "unknown key" in msg


def test_unknown_key_in_aws(tmp_path: Path) -> None:
    text = DOCUMENTED_EXAMPLE.replace('region = "us-east-1"', 'regoin = "us-east-1"')
    msg = config_error(write(tmp_path, text))
    assert "aws.regoin" in msg
    assert "unknown key" in msg


def test_unknown_key_in_pipeline_names_pipeline_and_key(tmp_path: Path) -> None:
    text = DOCUMENTED_EXAMPLE.replace("concurrency = 32", "concurrenc = 32")
    path = write(tmp_path, text)
    msg = config_error(path)
    assert "pipelines[0] ('counts').concurrenc" in msg
    assert "unknown key" in msg
    assert str(path) in msg


def test_second_pipeline_error_names_its_index(tmp_path: Path) -> None:
    second = MINIMAL_PIPELINE.replace('"counts"', '"other"') + "bogus = 1\n"
    msg = config_error(write(tmp_path, DOCUMENTED_EXAMPLE + "\n" + second))
    assert "pipelines[1] ('other').bogus" in msg


@pytest.mark.parametrize(
    ("line", "replacement", "key"),
    [
        ("concurrency = 32", "concurrency = 0", "concurrency"),
        ("concurrency = 32", "concurrency = 1001", "concurrency"),
        ("visibility_timeout_s = 60", 'visibility_timeout_s = "abc"', "visibility_timeout_s"),
        ("visibility_timeout_s = 60", "visibility_timeout_s = 43201", "visibility_timeout_s"),
        ("max_receive_count = 3", "max_receive_count = 0", "max_receive_count"),
        ('prefix = "logs/"', 'key_regex = "("', "key_regex"),
        ('output = "s3://results/counts/"', 'output = "ftp://x"', "output"),
        ('output = "s3://results/counts/"', 'output = "s3:///counts/"', "output"),
        ('output = "s3://results/counts/"', 'output = ""', "output"),
        ('queue = "counts-events"', 'queue = "bad queue name!"', "queue"),
        ('name = "counts"', 'name = "has space"', "name"),
        ('bucket = "incoming"', 'bucket = "in coming"', "bucket"),
        ('bucket = "incoming"', 'bucket = "incoming."', "bucket"),
        ('bucket = "incoming"', 'bucket = "-incoming"', "bucket"),
        ('output = "s3://results/counts/"', 'output = "s3://res ults/counts/"', "output"),
    ],
)
def test_bad_value_names_the_key(tmp_path: Path, line: str, replacement: str, key: str) -> None:
    assert line in DOCUMENTED_EXAMPLE
    msg = config_error(write(tmp_path, DOCUMENTED_EXAMPLE.replace(line, replacement)))
    assert f".{key}:" in msg
    assert msg.startswith("invalid configuration")


def test_bad_value_shows_what_was_given(tmp_path: Path) -> None:
    text = DOCUMENTED_EXAMPLE.replace("visibility_timeout_s = 60", 'visibility_timeout_s = "abc"')
    assert "'abc'" in config_error(write(tmp_path, text))


def test_missing_required_key(tmp_path: Path) -> None:
    text = DOCUMENTED_EXAMPLE.replace('bucket = "incoming"\n', "")
    msg = config_error(write(tmp_path, text))
    assert "pipelines[0] ('counts').bucket" in msg


def test_retry_max_below_base_is_rejected(tmp_path: Path) -> None:
    text = MINIMAL_PIPELINE + "retry_base_s = 10\nretry_max_s = 5\n"
    assert "retry_max_s" in config_error(write(tmp_path, text))


def test_duplicate_pipeline_names(tmp_path: Path) -> None:
    msg = config_error(write(tmp_path, DOCUMENTED_EXAMPLE + "\n" + MINIMAL_PIPELINE))
    assert "'counts'" in msg
    assert "twice" in msg


def test_missing_file_mentions_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "s3flow.toml"
    msg = config_error(path)
    assert str(path) in msg
    assert "does not exist" in msg


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[aws\nregion = us-east-1\n")
    msg = config_error(path)
    assert "not valid TOML" in msg
    assert str(path) in msg


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe\x00",  # a UTF-16 byte-order mark, then a NUL
        '[aws]\nregion = "us-east-1"\n'.encode("utf-16"),
        "# r\xe9gion\n[aws]\n".encode("latin-1"),
    ],
    ids=["bom-bytes", "utf-16", "latin-1"],
)
def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "s3flow.toml"
    path.write_bytes(raw)
    msg = config_error(path)
    assert str(path) in msg
    assert "must be UTF-8 TOML" in msg


def test_a_utf8_config_file_with_a_bom_is_read(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a BOM: it was a TOML error at line 1, column 1."""
    path = tmp_path / "s3flow.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'[aws]\nregion = "eu-west-1"\n')
    assert load_settings(path).aws.region == "eu-west-1"


def test_config_is_a_directory(tmp_path: Path) -> None:
    msg = config_error(tmp_path)
    assert str(tmp_path) in msg


def test_env_var_wins_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, DOCUMENTED_EXAMPLE + "\n[worker]\nshutdown_grace_s = 3\n")
    assert load_settings(path).worker.shutdown_grace_s == 3.0
    monkeypatch.setenv("S3FLOW_WORKER__SHUTDOWN_GRACE_S", "7")
    s = load_settings(path)
    assert s.worker.shutdown_grace_s == 7.0
    # the rest of the file still applies
    assert s.pipelines[0].concurrency == 32


def test_command_line_overrides_win_over_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags (load_settings' overrides) > environment > file, as README and
    docs/configuration.md say; the rest of each section still applies."""
    path = write(tmp_path, DOCUMENTED_EXAMPLE + "\n[worker]\nshutdown_grace_s = 3\n")
    monkeypatch.setenv("S3FLOW_WORKER__LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("S3FLOW_WORKER__SHUTDOWN_GRACE_S", "7")
    s = load_settings(path, {"worker": {"log_level": "ERROR"}})
    assert s.worker.log_level == "ERROR"
    assert s.worker.shutdown_grace_s == 7.0  # the env over the file, untouched by the flag
    assert load_settings(path).worker.log_level == "DEBUG"  # no override: the env
    assert load_settings(path, {"worker": {"shutdown_grace_s": 9}}).worker.shutdown_grace_s == 9


def test_env_var_applies_without_file_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3FLOW_WORKER__SHUTDOWN_GRACE_S", "7")
    assert load_settings(write(tmp_path, DOCUMENTED_EXAMPLE)).worker.shutdown_grace_s == 7.0


def test_env_var_bad_value_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3FLOW_WORKER__SHUTDOWN_GRACE_S", "-1")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert "shutdown_grace_s" in str(info.value)


def test_region_default_from_aws_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert load_settings(None).aws.region == "eu-central-1"


def test_overrides_win_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, DOCUMENTED_EXAMPLE + "\n[worker]\nshutdown_grace_s = 3\n")
    s = load_settings(path, overrides={"worker": {"shutdown_grace_s": 11}})
    assert s.worker.shutdown_grace_s == 11.0
    assert s.aws.region == "us-east-1"


def test_s3flow_config_env_used_when_no_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(write(tmp_path, DOCUMENTED_EXAMPLE)))
    s = load_settings()
    assert [p.name for p in s.pipelines] == ["counts"]
    assert s.pipelines[0].concurrency == 32


def test_explicit_config_beats_s3flow_config_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.toml"))
    other = write(tmp_path, MINIMAL_PIPELINE.replace('"counts"', '"explicit"'), "other.toml")
    assert [p.name for p in load_settings(other).pipelines] == ["explicit"]


def test_s3flow_config_env_missing_file_is_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "missing.toml" in str(info.value)
    assert CONFIG_ENV in str(info.value)


def test_pipeline_lookup_unknown_lists_known(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, DOCUMENTED_EXAMPLE))
    with pytest.raises(ConfigError) as info:
        s.pipeline("nope")
    assert "'nope'" in str(info.value)
    assert "counts" in str(info.value)


def test_overlapping_pipelines_on_one_bucket_are_refused() -> None:
    base = {"bucket": "b", "output": "/tmp/x"}
    with pytest.raises(ConfigError, match="both take keys of bucket 'b'"):
        load_settings(
            None,
            {
                "pipelines": [
                    {"name": "a", "queue": "qa", **base},
                    {"name": "c", "queue": "qc", "prefix": "x/", **base},
                ]
            },
        )
    ok = load_settings(
        None,
        {
            "pipelines": [
                {"name": "a", "queue": "qa", "prefix": "y/", **base},
                {"name": "c", "queue": "qc", "prefix": "x/", **base},
                {"name": "d", "queue": "qd", "suffix": ".csv", "prefix": "z/", **base},
            ]
        },
    )
    assert len(ok.pipelines) == 3
    stateless = load_settings(
        None,
        {
            "state": {"url": "none"},
            "pipelines": [
                {"name": "a", "queue": "qa", **base},
                {"name": "c", "queue": "qc", **base},
            ],
        },
    )
    assert len(stateless.pipelines) == 2


def test_queues_of_one_name_in_two_accounts_are_two_queues() -> None:
    base = {"bucket": "b", "output": "/tmp/x"}
    a, b = (f"https://sqs.us-east-1.amazonaws.com/{n}/events" for n in ("111", "222"))
    ok = load_settings(
        None,
        {
            "pipelines": [
                {"name": "a", "queue": a, "prefix": "x/", **base},
                {"name": "c", "queue": b, "prefix": "y/", **base},
            ]
        },
    )
    assert len(ok.pipelines) == 2


def test_two_pipelines_on_one_queue_are_refused() -> None:
    """Each would receive the other's messages, skip their objects and delete them."""
    base = {"bucket": "b", "output": "/tmp/x"}
    with pytest.raises(ConfigError, match="pipelines 'a' and 'c' both read queue"):
        load_settings(
            None,
            {
                "aws": {"region": "eu-west-1"},
                "pipelines": [
                    {"name": "a", "queue": "q", "prefix": "x/", **base},
                    {
                        "name": "c",
                        "prefix": "y/",
                        **base,
                        "bucket": "other",
                        "queue": ("https://sqs.eu-west-1.amazonaws.com/123456789012/q"),
                    },
                ],
            },
        )


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        # S3's examples (notification-how-to-filtering): an empty prefix or suffix overlaps
        # every other; 'jpg' and 'pg' overlap (a key can end with both), '.jpg' and '.png'
        # do not; a common prefix is fine when the suffixes do not overlap.
        ({}, {"prefix": "images"}, True),
        ({"suffix": "jpg"}, {"suffix": "pg"}, True),
        ({"suffix": ".jpg"}, {"suffix": ".png"}, False),
        ({"prefix": "images", "suffix": ".jpg"}, {"prefix": "images", "suffix": ".png"}, False),
        ({"prefix": "images", "suffix": "jpg"}, {"suffix": "jpg"}, True),
        ({"prefix": "logs/"}, {"prefix": "images/"}, False),
        ({"prefix": "in/"}, {"prefix": "in/sub/", "suffix": ".csv"}, True),
        ({"bucket": "other"}, {}, False),  # another bucket: its own notifications
        # key_regex is no notification filter: it changes nothing here.
        ({"key_regex": "^a"}, {"key_regex": "^b"}, True),
    ],
)
def test_filters_overlap_follows_s3s_notification_rule(
    a: dict[str, str], b: dict[str, str], overlap: bool
) -> None:
    base = {"bucket": "b", "queue": "q", "output": "/tmp/x"}
    pa = PipelineSettings.model_validate({**base, "name": "a", **a})
    pb = PipelineSettings.model_validate({**base, "name": "c", **b})
    assert filters_overlap(pa, pb) is overlap and filters_overlap(pb, pa) is overlap


def test_the_overlap_refusal_names_the_filters_and_what_to_do() -> None:
    """The message shows each pipeline's filters and offers routes, and says that a
    key_regex on both (accepted here) is refused by provision: S3 cannot filter by it."""
    base = {"bucket": "b", "output": "/tmp/x"}
    with pytest.raises(ConfigError) as info:
        load_settings(
            None,
            {
                "pipelines": [
                    {"name": "a", "queue": "qa", "prefix": "in/", **base},
                    {"name": "c", "queue": "qc", "suffix": ".csv", "key_regex": "x", **base},
                ]
            },
        )
    text = str(info.value)
    assert (
        "'a' prefix 'in/' suffix ''" in text and "'c' prefix '' suffix '.csv' key_regex 'x'" in text
    )
    assert "[[pipelines.routes]]" in text and "docs/routing.md" in text
    assert "`s3flow provision` refuses them" in text
    both = {"key_regex": "y"}
    ok = load_settings(
        None,
        {
            "pipelines": [
                {"name": "a", "queue": "qa", "prefix": "in/", **base, **both},
                {"name": "c", "queue": "qc", "suffix": ".csv", **base, "key_regex": "x"},
            ]
        },
    )
    assert [p.name for p in ok.pipelines] == ["a", "c"]


def test_a_claim_ttl_shorter_than_the_visibility_timeout_is_refused() -> None:
    pipe = {"name": "p", "bucket": "b", "queue": "q", "output": "s3://o/"}
    data = {"pipelines": [{**pipe, "visibility_timeout_s": 60}], "state": {"claim_ttl_s": 20}}
    with pytest.raises(ConfigError, match="claim_ttl_s"):
        load_settings(None, data)
    assert load_settings(None, {**data, "state": {"claim_ttl_s": 90}}).state.claim_ttl_s == 90
    assert load_settings(None, {**data, "state": {"claim_ttl_s": 0}}).state.claim_ttl_s == 0


@pytest.mark.parametrize(
    ("executors", "message"),
    [
        ({"pool": {"processes": -1}}, "greater than or equal to 0"),
        ({"pool": {"processes": 257}}, "less than or equal to 256"),
    ],
)
def test_pool_processes_bounds(executors: dict[str, object], message: str) -> None:
    from pydantic import ValidationError

    base = {"name": "p", "bucket": "b", "queue": "q", "output": "/tmp/out"}
    with pytest.raises(ValidationError, match=f"(?s)executors.pool.processes.*{message}"):
        PipelineSettings.model_validate({**base, "executors": executors})


def test_container_executor_sections_are_optional_and_documented() -> None:
    from s3flow.settings import ExecutorsSettings

    fields = ExecutorsSettings.model_fields
    for name in ("ecs", "batch"):
        assert ExecutorsSettings().model_dump()[name] is None
        assert fields[name].description == (
            f"[pipelines.executors.{name}]: needed by executor = '{name}'."
        )


@pytest.mark.parametrize(
    ("concurrency", "explicit", "prefetch"),
    [(1, None, 0), (2, None, 2), (16, None, 16), (64, None, 16), (64, 3, 3), (1, 4, 4)],
)
def test_prefetch_default_covers_the_slots_up_to_16(
    concurrency: int, explicit: int | None, prefetch: int
) -> None:
    p = PipelineSettings(
        name="p",
        bucket="b",
        queue="q",
        output="s3://o/",
        concurrency=concurrency,
        prefetch_messages=explicit,
    )
    assert p.prefetch == prefetch


# --- the environment: where a bad value came from; pipelines by index ----------------------


def test_a_bad_environment_value_names_its_variable_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, DOCUMENTED_EXAMPLE)
    monkeypatch.setenv("S3FLOW_WORKER__SHUTDOWN_GRACE_S", "abc")
    msg = config_error(path)
    (line,) = [ln for ln in msg.splitlines() if "worker.shutdown_grace_s:" in ln]
    assert "(got 'abc')" in line  # what is wrong
    assert "from the environment variable S3FLOW_WORKER__SHUTDOWN_GRACE_S" in line  # where
    assert "correct or unset it" in line  # what to do
    assert str(path) not in line
    assert msg.splitlines()[0] == (
        f"invalid configuration ({path}; environment S3FLOW_WORKER__SHUTDOWN_GRACE_S):"
    )


def test_a_bad_pipeline_key_from_the_environment_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, DOCUMENTED_EXAMPLE)
    monkeypatch.setenv("s3flow_pipelines__0__concurrency", "lots")  # any case, named as set
    monkeypatch.setenv("S3FLOW_PIPELINES__0__VISIBILITY_TIMEOUTS", "60")
    msg = config_error(path)
    assert (
        "pipelines[0] ('counts').concurrency: Input should be a valid integer, unable to parse "
        "string as an integer (got 'lots'); from the environment variable "
        "s3flow_pipelines__0__concurrency: correct or unset it"
    ) in msg
    assert (
        "pipelines[0] ('counts').visibility_timeouts: unknown key (check the spelling; see "
        "docs/configuration.md); from the environment variable "
        "S3FLOW_PIPELINES__0__VISIBILITY_TIMEOUTS: correct or unset it"
    ) in msg


def test_with_the_environment_in_play_a_bad_file_value_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, DOCUMENTED_EXAMPLE.replace("concurrency = 32", "concurrency = 0"))
    monkeypatch.setenv("S3FLOW_WORKER__LOG_LEVEL", "DEBUG")
    assert f"(got 0); in {path}: correct it there" in config_error(path)
    with pytest.raises(ConfigError, match=r"\(got 'nope'\); set by a command-line option"):
        load_settings(write(tmp_path, DOCUMENTED_EXAMPLE), {"worker": {"log_level": "nope"}})


def test_an_environment_table_that_is_not_json_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3FLOW_PIPELINES", '[{"name": "x"')
    msg = config_error(write(tmp_path, DOCUMENTED_EXAMPLE))
    assert msg.startswith("invalid configuration (environment): S3FLOW_PIPELINES: ")
    assert "must be JSON" in msg and "correct or unset it" in msg


def test_an_environment_key_of_pipeline_0_overrides_that_key_of_the_files_pipeline_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3FLOW_PIPELINES__0__KEY merges into the file's first [[pipelines]] (it used to
    replace the whole list with a pipeline of that one key)."""
    text = DOCUMENTED_EXAMPLE + '[pipelines.validation]\nsuffixes = [".log"]\n'
    path = write(tmp_path, text)
    from_file = load_settings(path).pipelines[0]
    monkeypatch.setenv("S3FLOW_PIPELINES__0__CONCURRENCY", "4")
    monkeypatch.setenv("S3FLOW_PIPELINES__0__VALIDATION__MAX_BYTES", "100")
    p = load_settings(path).pipelines[0]
    assert (p.concurrency, p.validation.max_bytes) == (4, 100)
    assert p.validation.suffixes == [".log"]  # the rest of the table stays
    assert p.model_copy(update={"concurrency": 32, "validation": from_file.validation}) == (
        from_file
    )
    # An index one past the file's list adds a pipeline (all of its keys from the env).
    for key, value in {
        "NAME": "more",
        "BUCKET": "other",
        "QUEUE": "q2",
        "OUTPUT": "s3://o/",
    }.items():
        monkeypatch.setenv(f"S3FLOW_PIPELINES__1__{key}", value)
    more = load_settings(path).pipelines
    assert [(q.name, q.bucket, q.concurrency) for q in more] == [
        ("counts", "incoming", 4),
        ("more", "other", 16),
    ]
    monkeypatch.delenv("S3FLOW_PIPELINES__1__BUCKET")
    assert (
        "pipelines[1] ('more').bucket: Field required; its table comes from the environment "
        "(S3FLOW_PIPELINES__1__NAME, S3FLOW_PIPELINES__1__OUTPUT, S3FLOW_PIPELINES__1__QUEUE): "
        "set S3FLOW_PIPELINES__1__BUCKET too"
    ) in config_error(path)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"S3FLOW_PIPELINES__CONCURRENCY": "4"},
            "S3FLOW_PIPELINES__CONCURRENCY: pipelines is a list, so a variable below "
            "S3FLOW_PIPELINES names an entry by its index first, e.g. "
            "S3FLOW_PIPELINES__0__CONCURRENCY",
        ),
        (
            {"S3FLOW_PIPELINES__2__CONCURRENCY": "4"},
            "S3FLOW_PIPELINES__2__CONCURRENCY: there is no pipelines[2] to set a key of: the "
            "list has 1 ([0] ('counts'))",
        ),
        (
            {
                "S3FLOW_PIPELINES": '[{"name": "x", "bucket": "b", "queue": "q", "output": "/o"}]',
                "S3FLOW_PIPELINES__0__CONCURRENCY": "4",
            },
            "S3FLOW_PIPELINES__0__CONCURRENCY cannot change an entry of S3FLOW_PIPELINES, "
            "which sets the whole list as JSON",
        ),
    ],
    ids=["no-index", "gap", "under-json"],
)
def test_an_indexed_variable_that_cannot_apply_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    msg = config_error(write(tmp_path, DOCUMENTED_EXAMPLE))
    assert msg.startswith("invalid configuration (environment): ")
    assert message in msg


def test_s3flow_pipelines_as_json_still_replaces_the_files_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container form (docs/deploy.md): one variable holds the whole list."""
    monkeypatch.setenv(
        "S3FLOW_PIPELINES",
        '[{"name": "x", "bucket": "b", "queue": "q", "output": "s3://o/", '
        '"routes": [{"key_glob": "*.txt", "processor": "line-count"}]}]',
    )
    monkeypatch.setenv("S3FLOW_PIPELINES__0__ROUTES__0__PROCESSOR", "zip")
    msg = config_error(write(tmp_path, DOCUMENTED_EXAMPLE))
    assert "S3FLOW_PIPELINES__0__ROUTES__0__PROCESSOR cannot change an entry" in msg
    monkeypatch.delenv("S3FLOW_PIPELINES__0__ROUTES__0__PROCESSOR")
    (p,) = load_settings(write(tmp_path, DOCUMENTED_EXAMPLE)).pipelines
    assert (p.name, p.prefix, p.routes[0].key_glob) == ("x", "", "*.txt")


@pytest.mark.parametrize("region", ["us east 1", "", "-us-east-1", "us_east_1"])
def test_a_region_that_is_no_region_name_is_refused_saying_so(region: str) -> None:
    """botocore refused "us east 1" only when it built a client (a traceback), and "" got
    as far as the endpoint (moto answered an HTML 500 page)."""
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"aws": {"region": region}})
    message = str(info.value)
    assert "aws.region" in message and f"{region!r} is not an AWS region name" in message
    assert "us-east-1" in message


@pytest.mark.parametrize("region", ["us-east-1", "eu-central-1", "us-gov-west-1", "local"])
def test_region_names_are_accepted(region: str) -> None:
    assert load_settings(None, {"aws": {"region": region}}).aws.region == region


@pytest.mark.parametrize(
    ("output", "says"),
    [
        ("s3:/results/counts/", "looks like a URL"),
        ("S3://results/counts/", "looks like a URL"),
        ("file:///tmp/out/", "looks like a URL"),
        ("https://results.example/", "looks like a URL"),
        ("s3://", "needs a bucket"),
        ("", "must be 's3://bucket/prefix/' or a local directory"),
    ],
)
def test_an_output_that_is_neither_s3_nor_a_directory_is_refused(output: str, says: str) -> None:
    """`s3:/results/` (one slash) passed and the worker wrote into ./s3:/results/."""
    data = {
        "pipelines": [
            {"name": "p", "processor": "line-count", "bucket": "b", "queue": "q", "output": output}
        ]
    }
    with pytest.raises(ConfigError) as info:
        load_settings(None, data)
    assert "pipelines[0] ('p').output" in str(info.value) and says in str(info.value)


@pytest.mark.parametrize("output", ["s3://results/p/", "out/", "/tmp/out", "./a:b/"])
def test_s3_urls_and_directories_are_outputs(output: str) -> None:
    data = {
        "pipelines": [
            {"name": "p", "processor": "line-count", "bucket": "b", "queue": "q", "output": output}
        ]
    }
    assert load_settings(None, data).pipelines[0].output == output


def test_an_environment_variable_of_no_section_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S3FLOW_WORKR__SHUTDOWN_GRACE_S (a typo of the section) was ignored in silence, while
    a typo of the key inside a section was refused."""
    monkeypatch.setenv("S3FLOW_WORKR__SHUTDOWN_GRACE_S", "10")
    monkeypatch.setenv("S3FLOW_OUTPUT", "s3://b/p/")  # no "__": not a setting, left alone
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    message = str(info.value)
    assert "environment variable S3FLOW_WORKR__SHUTDOWN_GRACE_S names no settings section" in (
        message
    )
    assert "S3FLOW_WORKER__..." in message and "correct or unset it" in message
    monkeypatch.delenv("S3FLOW_WORKR__SHUTDOWN_GRACE_S")
    monkeypatch.setenv("S3FLOW_WORKER__SHUTDOWN_GRACE_S", "10")
    assert load_settings(None).worker.shutdown_grace_s == 10


def test_upload_cors_origins_follow_the_web_page() -> None:
    """They were always 127.0.0.1:8080 and localhost:8080: with another [web] port the
    browser page could not upload (the bucket refused its preflight)."""
    jobs = {"project": "acme", "branch": "dev"}
    s = load_settings(None, {"jobs": jobs, "web": {"port": 18481}})
    assert s.jobs is not None
    assert s.jobs.origins() == ["http://127.0.0.1:18481", "http://localhost:18481"]
    s = load_settings(None, {"jobs": jobs, "web": {"url": "https://app.example.com/jobs/"}})
    assert s.jobs is not None
    assert s.jobs.origins() == [
        "https://app.example.com",
        "http://127.0.0.1:8080",
        "http://localhost:8080",
    ]
    mine = {**jobs, "cors_origins": ["https://mine.example.com"]}
    s = load_settings(None, {"jobs": mine, "web": {"port": 18481}})
    assert s.jobs is not None and s.jobs.origins() == ["https://mine.example.com"]


def test_one_underscore_between_a_section_and_its_key_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S3FLOW_WORKER_SHUTDOWN_GRACE_S=abc was ignored in silence (exit 0)."""
    monkeypatch.setenv("S3FLOW_WORKER_SHUTDOWN_GRACE_S", "abc")
    monkeypatch.setenv("S3FLOW_JOBS_JOB_TIMEOUT_S", "5")  # an optional section too
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert str(info.value) == (
        "environment variable S3FLOW_JOBS_JOB_TIMEOUT_S (write S3FLOW_JOBS__JOB_TIMEOUT_S), "
        "S3FLOW_WORKER_SHUTDOWN_GRACE_S (write S3FLOW_WORKER__SHUTDOWN_GRACE_S): a section "
        "and its key are joined with two underscores; as written the variable is ignored"
    )


def test_s3flows_own_variables_that_look_like_settings_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("S3FLOW_WEB_URL", "S3FLOW_WORKER_ID", "S3FLOW_KAFKA_PORT", "S3FLOW_PIPELINES_0"):
        monkeypatch.setenv(name, "1")
    assert load_settings(None).worker.shutdown_grace_s > 0


def test_a_bucket_given_as_a_url_says_to_write_the_name_and_the_prefix(tmp_path: Path) -> None:
    text = DOCUMENTED_EXAMPLE.replace('bucket = "incoming"', 'bucket = "s3://incoming/logs/"')
    msg = config_error(write(tmp_path, text))
    assert (
        "bucket: 's3://incoming/logs/' is not a bucket name: write the name "
        "alone, 'incoming'; the key prefix goes in `prefix = 'logs/'`"
    ) in msg
    text = DOCUMENTED_EXAMPLE.replace('bucket = "incoming"', 'bucket = "incoming/"')
    assert "write the name alone, 'incoming' (got" in config_error(write(tmp_path, text))


@pytest.mark.parametrize("bucket", ["incoming", "a.b-c", "Legacy_Bucket_2017", "x" * 255])
def test_bucket_names_older_buckets_and_other_stores_use_are_taken(
    tmp_path: Path, bucket: str
) -> None:
    text = DOCUMENTED_EXAMPLE.replace('bucket = "incoming"', f'bucket = "{bucket}"')
    assert load_settings(write(tmp_path, text)).pipelines[0].bucket == bucket


def test_an_uploads_bucket_that_is_no_bucket_name_is_refused(tmp_path: Path) -> None:
    msg = config_error(
        write(tmp_path, '[jobs]\nproject = "acme"\nuploads_bucket = "s3://acme-uploads"\n')
    )
    assert "jobs.uploads_bucket: 's3://acme-uploads' is not a bucket name" in msg


def test_log_level_takes_any_case_as_the_cli_does() -> None:
    """`--log-level debug` worked, `log_level = "debug"` in the file was refused."""
    assert load_settings(None, {"worker": {"log_level": "debug"}}).worker.log_level == "DEBUG"
    with pytest.raises(ConfigError, match=r"worker\.log_level"):
        load_settings(None, {"worker": {"log_level": "loud"}})


def test_one_table_where_a_list_of_tables_is_wanted_says_to_write_two_brackets(
    tmp_path: Path,
) -> None:
    """`[pipelines]` instead of `[[pipelines]]` said "Input should be a valid list"."""
    text = DOCUMENTED_EXAMPLE.replace("[[pipelines]]", "[pipelines]", 1)
    msg = config_error(write(tmp_path, text))
    assert (
        "pipelines: a list of tables is wanted, this is one table: write [[pipelines]] "
        "(two brackets) above each one, not [pipelines]"
    ) in msg, msg


def test_a_whole_config_error_names_no_pseudo_key(tmp_path: Path) -> None:
    """A pipeline name used twice said "<top>: Value error, pipeline name ...": a key
    that is no key, pydantic's prefix, and nothing to do."""
    start = DOCUMENTED_EXAMPLE.index("[[pipelines]]")
    pipeline = DOCUMENTED_EXAMPLE[start:].split("\n[", 1)[0]
    msg = config_error(write(tmp_path, DOCUMENTED_EXAMPLE + "\n" + pipeline + "\n"))
    assert "  - pipeline name 'counts' is used twice: give each pipeline its own" in msg, msg
    assert "<top>" not in msg and "Value error" not in msg


def test_a_queue_url_of_another_region_than_the_configs_is_refused(tmp_path: Path) -> None:
    """Requests go to [aws] region's endpoint, where the queue of the URL's region does
    not exist: the worker said only "does not exist"."""
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/counts-events"
    text = DOCUMENTED_EXAMPLE.replace('queue = "counts-events"', f'queue = "{url}"')
    msg = config_error(write(tmp_path, text))
    assert (
        f"pipeline 'counts': queue '{url}' is a queue of region 'eu-west-1', but [aws] "
        "region is 'us-east-1': set region = 'eu-west-1'"
    ) in msg, msg
    same = text.replace('region = "us-east-1"', 'region = "eu-west-1"')
    assert load_settings(write(tmp_path, same)).pipelines[0].queue == url


# --- queues, DLQs and outputs that would lose or loop messages ----------------------------


def _pipe(name: str, **over: object) -> dict[str, object]:
    return {
        "name": name,
        "bucket": "b",
        "prefix": f"{name}/",
        "queue": f"{name}-q",
        "output": "s3://o/",
        **over,
    }


@pytest.mark.parametrize(
    ("pipelines", "says"),
    [
        ([_pipe("a", dlq="a-q")], "pipeline 'a': dlq 'a-q' is its own queue"),
        (
            [_pipe("a", dlq="b-q"), _pipe("b")],
            "pipeline 'a': dlq 'b-q' is the queue of pipeline 'b'",
        ),
        # the other way round, and a queue given by URL
        ([_pipe("b"), _pipe("a", dlq="b-q")], "dlq 'b-q' is the queue of pipeline 'b'"),
        (
            [_pipe("a", dlq="https://sqs.us-east-1.amazonaws.com/1/b-q"), _pipe("b")],
            "is the queue of pipeline 'b'",
        ),
        # a queue named like another pipeline's default DLQ
        ([_pipe("a"), _pipe("b", queue="a-q-dlq")], "pipeline 'a': dlq 'a-q-dlq'"),
    ],
)
def test_a_dlq_that_a_pipeline_reads_is_refused(
    pipelines: list[dict[str, object]], says: str
) -> None:
    """Dead letters sent to a queue a worker consumes were taken as notifications and
    deleted: nothing was kept."""
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"pipelines": pipelines})
    assert says in str(info.value) and "give pipeline" in str(info.value)


def test_pipelines_may_share_one_dlq() -> None:
    s = load_settings(None, {"pipelines": [_pipe("a", dlq="dead"), _pipe("b", dlq="dead")]})
    assert [p.dlq_name for p in s.pipelines] == ["dead", "dead"]


@pytest.mark.parametrize(
    "over",
    [
        {},  # the whole bucket
        {"prefix": "in/", "output": "s3://b/in/out/"},
        {"prefix": "in/", "output": "s3://b/in"},  # the sink writes under in/
        {"prefix": "in", "output": "s3://b/inbox/"},
    ],
)
def test_an_output_inside_its_own_filter_is_refused(over: dict[str, object]) -> None:
    """Each output was taken as a new object and processed into another, for ever (1805
    objects from one upload in a minute)."""
    pipe = {"name": "p", "bucket": "b", "queue": "q", "output": "s3://b/out/", **over}
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"pipelines": [pipe]})
    text = str(info.value)
    assert "pipeline 'p': output" in text and "inside the pipeline's own notification" in text
    assert "another bucket" in text


@pytest.mark.parametrize(
    "over",
    [
        {"prefix": "in/", "output": "s3://b/out/"},
        {"prefix": "in/", "output": "s3://other/in/"},
        {"suffix": ".txt", "output": "s3://b/"},  # outputs end '.txt.json'
        {"key_regex": r"\.csv$", "output": "s3://b/"},
        {"prefix": "in/", "output": "out/"},  # a local directory
    ],
)
def test_an_output_outside_its_own_filter_passes(over: dict[str, object]) -> None:
    pipe = {"name": "p", "bucket": "b", "queue": "q", **over}
    assert load_settings(None, {"pipelines": [pipe]}).pipelines[0].output == over["output"]


def test_a_template_writing_under_the_uploads_prefix_is_refused() -> None:
    """The intake notification (uploads/ of the uploads bucket) took job outputs as uploads."""
    data: dict[str, object] = {
        "jobs": {"project": "acme", "branch": "dev"},
        "templates": [
            {"name": "count", "steps": [{"processor": "line-count"}], "output_prefix": "x/"},
            {"name": "bad", "steps": [{"processor": "line-count"}], "output_prefix": "uploads/o/"},
        ],
    }
    with pytest.raises(ConfigError) as info:
        load_settings(None, data)
    assert "template 'bad': output_prefix 'uploads/o/' is under the uploads prefix" in str(
        info.value
    )
    data["templates"] = data["templates"][:1]  # type: ignore[index]
    assert load_settings(None, data).templates[0].output_prefix == "x/"


@pytest.mark.parametrize("length", [77, 80])
def test_a_queue_whose_default_dlq_name_is_too_long_is_refused(length: int) -> None:
    """'<queue>-dlq' of a 77-80 character queue is longer than SQS's 80."""
    queue = "q" * length
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"pipelines": [_pipe("p", queue=queue)]})
    text = str(info.value)
    assert f"default dlq '{queue}-dlq'" in text and f"has {length + 4} characters" in text
    assert "at most 76 characters, or set dlq" in text
    # an explicit dlq, or a queue of 76, passes
    load_settings(None, {"pipelines": [_pipe("p", queue=queue, dlq="p-dlq")]})
    load_settings(None, {"pipelines": [_pipe("p", queue="q" * 76)]})


def test_a_fifo_queue_name_counts_its_suffix() -> None:
    """'.fifo' counts among SQS's 80 characters: 80 + '.fifo' passed."""
    with pytest.raises(ConfigError, match=r"a '\.fifo' at the end counts among the 80"):
        load_settings(None, {"pipelines": [_pipe("p", dlq="d" * 76 + ".fifo", queue="x.fifo")]})


def test_a_fifo_dlq_of_a_standard_queue_is_refused() -> None:
    """Provision made it without FifoQueue (AWS refuses that for a '.fifo' name), and a
    standard queue cannot redrive to a FIFO queue."""
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"pipelines": [_pipe("p", dlq="p-dlq.fifo")]})
    text = str(info.value)
    assert "pipeline 'p': dlq 'p-dlq.fifo' is a FIFO queue" in text
    assert "queue 'p-q' is a standard queue" in text and "without '.fifo'" in text


@pytest.mark.parametrize(
    ("jobs", "says"),
    [
        # the bucket {project}-{branch}-uploads: 63 at most
        ({"project": "p" * 31, "branch": "b" * 24}, "-uploads' has 64 characters, at most 63"),
        # with a bucket of its own, the longest queue: 80 at most
        (
            {"project": "p" * 31, "branch": "b" * 29, "uploads_bucket": "up"},
            "-processing-dlq.fifo' has 81 characters, at most 80",
        ),
    ],
)
def test_jobs_names_too_long_together_are_refused(jobs: dict[str, str], says: str) -> None:
    """Project and branch of 31 characters each passed, and made names AWS refuses."""
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"jobs": jobs})
    assert says in str(info.value) and "shorten one of them" in str(info.value)


def test_jobs_names_at_their_longest_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(None, {"jobs": {"project": "p" * 31, "branch": "b" * 23}})
    assert s.jobs is not None and len(s.jobs.bucket) == 63
    s = load_settings(
        None, {"jobs": {"project": "p" * 31, "branch": "b" * 28, "uploads_bucket": "up"}}
    )
    assert s.jobs is not None and len(s.jobs.resource("processing-dlq.fifo")) == 80
    # a branch found (not given) is cut to what the names leave it
    monkeypatch.setenv("S3FLOW_BRANCH", "feature/" + "x" * 40)
    s = load_settings(None, {"jobs": {"project": "p" * 31}})
    assert s.jobs is not None and s.jobs.branch == "feature-" + "x" * 15
    described = JobsSettings.model_fields["branch"].description or ""
    assert f"at most {NAME_PREFIX_MAX - 1} characters together" in described
