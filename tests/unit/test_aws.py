"""The AWS client factories: one settings translation for async and sync clients (no network)."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config

from s3flow.aws import (
    QueueDepths,
    _create_args,
    check_reachable,
    client_config,
    endpoint_for,
    open_clients,
    pin_endpoints,
    queue_depths,
    sdk_only_reason,
    sync_client,
    sync_client_config,
)
from s3flow.errors import AwsError, ConfigError
from s3flow.local.endpoint import free_port
from s3flow.settings import AwsSettings, load_settings
from s3flow.settings.base import endpoint_url_problem

_CONFIG_FIELDS = (
    "region_name",
    "retries",
    "connect_timeout",
    "read_timeout",
    "max_pool_connections",
    "s3",
)

CUSTOM = AwsSettings(
    region="eu-west-3",
    endpoint_url="http://127.0.0.1:4566",
    endpoint_url_sqs="http://127.0.0.1:9324",
    max_attempts=9,
    connect_timeout_s=1.5,
    read_timeout_s=42.0,
)


class _Signed(Exception):
    """Raised by the before-send hook: the request was built and signed, not sent."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__("signed")
        self.headers = headers


def _signed_headers(client: Any) -> dict[str, str]:
    """Build and sign a ListBuckets request, stop it before it is sent; its headers."""

    def stop(request: Any, **_: Any) -> None:
        raise _Signed(
            {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in request.headers.items()}
        )

    client.meta.events.register("before-send", stop)
    with pytest.raises(_Signed) as info:
        client.list_buckets()
    return info.value.headers


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No credentials anywhere but in the files this test writes (and no IMDS lookups)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    yield tmp_path


@pytest.mark.parametrize(
    "aws",
    [
        AwsSettings(),
        CUSTOM,
        AwsSettings(s3_addressing_style="virtual", max_attempts=1),
        AwsSettings(endpoint_url_s3="http://s3.local:9000", s3_addressing_style="auto"),
    ],
)
@pytest.mark.parametrize("service", ["s3", "sqs", "dynamodb"])
def test_sync_config_is_the_async_config(aws: AwsSettings, service: str) -> None:
    async_conf = client_config(aws, service, 32)
    sync_conf = sync_client_config(aws, service, 32)
    assert type(sync_conf) is Config
    for name in _CONFIG_FIELDS:
        assert getattr(sync_conf, name) == getattr(async_conf, name), name
    assert sync_conf.retries == {"max_attempts": aws.max_attempts, "mode": "standard"}


def test_custom_endpoints_use_path_style_unless_told() -> None:
    assert sync_client_config(CUSTOM, "s3", 10).s3 == {"addressing_style": "path"}
    assert sync_client_config(AwsSettings(), "s3", 10).s3 == {"addressing_style": "auto"}
    virtual = AwsSettings(endpoint_url="http://x:1", s3_addressing_style="virtual")
    assert sync_client_config(virtual, "s3", 10).s3 == {"addressing_style": "virtual"}


def _meta(client: Any) -> dict[str, Any]:
    conf = client.meta.config
    return {
        "endpoint": client.meta.endpoint_url,
        "region": client.meta.region_name,
        **{name: getattr(conf, name) for name in _CONFIG_FIELDS},
    }


@pytest.mark.parametrize("aws", [AwsSettings(), CUSTOM, AwsSettings(region="ap-south-1")])
async def test_sync_clients_equal_the_async_clients(aws: AwsSettings) -> None:
    async with open_clients(aws, pool=12, check_endpoints=False) as clients:
        for service, async_client in (("s3", clients.s3), ("sqs", clients.sqs)):
            client = sync_client(aws, service, pool=12)
            assert _meta(client) == _meta(async_client), service
    assert _meta(sync_client(CUSTOM, "s3"))["endpoint"] == "http://127.0.0.1:4566"
    assert _meta(sync_client(CUSTOM, "sqs"))["endpoint"] == "http://127.0.0.1:9324"
    # botocore counts the first attempt too: max_attempts retries = max_attempts + 1 calls
    assert _meta(sync_client(CUSTOM, "s3"))["retries"]["total_max_attempts"] == 10


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:4566",
        "http://localhost:4566/",
        "https://sqs.us-east-1.amazonaws.com",
        "http://[::1]:4566",
        "HTTP://moto.local:1",
        "http://s3.local:65535",
        "https://gw.example.com/s3",  # a gateway serving S3 under a path
    ],
)
def test_endpoint_urls_the_sdk_takes_are_accepted(url: str) -> None:
    assert endpoint_url_problem(url) is None
    assert AwsSettings(endpoint_url=url).endpoint_url == url
    sync_client(AwsSettings(endpoint_url=url), "sqs")  # and so does the SDK


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("localhost:45661", "write 'http://localhost:45661'"),
        ("127.0.0.1", "write 'http://127.0.0.1'"),
        ("http://127.0.0.1:99999", "port is not a number from 1 to 65535"),
        ("http://127.0.0.1:0", "port 0 is not from 1 to 65535"),
        ("http://127.0.0.1:x", "port is not a number"),
        ("ftp://127.0.0.1:21", "scheme 'ftp' is not http or https"),
        ("http://", "names no host"),
        ("http://bad_host:1", "'bad_host' is not a host name"),
        ("http://local host:1", "whitespace"),
        ("", "empty"),
        (
            "http://localhost:4566/000000000000/orders",
            "has a queue's path or a query ('/000000000000/orders') after the server",
        ),
        ("http://127.0.0.1:9000?x=1", "write 'http://127.0.0.1:9000'"),
        ("http://127.0.0.1:9000/#top", "has a queue's path or a query ('/#top')"),
    ],
)
def test_endpoint_urls_the_sdk_refuses_are_named(
    url: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = endpoint_url_problem(url)
    assert found is not None and problem in found, found
    for key in ("endpoint_url", "endpoint_url_s3", "endpoint_url_sqs"):
        with pytest.raises(ConfigError, match=rf"aws\.{key}: .*not an endpoint URL"):
            load_settings(None, {"aws": {key: url}})
    if url:  # an empty variable is no endpoint: the next one (or AWS) is used
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", url)
        with pytest.raises(ConfigError, match="environment variable AWS_ENDPOINT_URL_SQS="):
            endpoint_for("sqs", AwsSettings())
        # The variable of another service is not read, and a setting wins over it.
        assert endpoint_for("s3", AwsSettings()) is None
        pinned = AwsSettings(endpoint_url_sqs="http://127.0.0.1:1")
        assert endpoint_for("sqs", pinned) == "http://127.0.0.1:1"


def test_sync_client_endpoint_per_service_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://all:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:2")
    aws = AwsSettings(region="us-west-2")
    s3 = sync_client(aws, "s3")
    sqs = sync_client(aws, "sqs")
    assert s3.meta.endpoint_url == "http://s3only:2"
    assert sqs.meta.endpoint_url == "http://all:1"
    assert s3.meta.region_name == sqs.meta.region_name == "us-west-2"
    assert s3.meta.config.s3 == {"addressing_style": "path"}
    assert s3.meta.config.connect_timeout == 5.0
    assert s3.meta.config.read_timeout == 60.0
    assert hasattr(s3, "upload_file")  # a boto3 client (transfer methods)


def test_sync_client_resolves_credentials_from_the_environment(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    headers = _signed_headers(sync_client(CUSTOM, "s3"))
    assert "Credential=AKIDFROMENV/" in headers["Authorization"]
    assert "/eu-west-3/s3/" in headers["Authorization"]


def test_sync_client_uses_the_profile_setting(no_credentials: Path) -> None:
    (no_credentials / "credentials").write_text(
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = d\n"
        "[batch]\naws_access_key_id = AKIDBATCH\naws_secret_access_key = b\n"
        "aws_session_token = tok\n"
    )
    aws = AwsSettings(endpoint_url="http://127.0.0.1:1", profile="batch")
    headers = _signed_headers(sync_client(aws, "s3"))
    assert "Credential=AKIDBATCH/" in headers["Authorization"]
    assert headers["X-Amz-Security-Token"] == "tok"
    plain = _signed_headers(sync_client(aws.model_copy(update={"profile": None}), "s3"))
    assert "Credential=AKIDDEFAULT/" in plain["Authorization"]


def test_clients_share_one_model_loader_and_keep_their_own_credentials(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every client the factories build reads the service models through one loader
    (parsed once per process), while credentials still come from each new client's
    own resolution: a change in the environment shows in the next client."""
    from botocore.loaders import JSONFileLoader

    import s3flow.aws

    parsed: list[str] = []
    original = JSONFileLoader.load_file

    def counting(self: JSONFileLoader, file_path: str) -> Any:
        parsed.append(file_path)
        return original(self, file_path)

    monkeypatch.setattr(JSONFileLoader, "load_file", counting)
    monkeypatch.setattr(s3flow.aws, "_LOADERS", {})  # as in a new process
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFIRST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    first = sync_client(CUSTOM, "s3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECOND")
    second = sync_client(CUSTOM, "s3")

    async def loaders() -> list[Any]:
        async with (
            open_clients(CUSTOM, check_endpoints=False) as a,
            open_clients(CUSTOM, check_endpoints=False) as b,
        ):
            return [c._loader for c in (a.s3, a.sqs, b.s3, b.sqs)]

    shared = {id(first._loader), id(second._loader)} | {id(x) for x in asyncio.run(loaders())}
    assert len(shared) == 1
    # Each model once, however many sessions and clients (the cache is the loader's).
    for model in ("sqs/2012-11-05/service-2", "s3/2006-03-01/service-2"):
        assert len([p for p in parsed if p.endswith(model)]) == 1, (model, parsed)
    assert "Credential=AKIDFIRST/" in _signed_headers(first)["Authorization"]
    assert "Credential=AKIDSECOND/" in _signed_headers(second)["Authorization"]


def test_sync_client_unknown_profile_is_a_config_error(no_credentials: Path) -> None:
    from botocore.exceptions import ProfileNotFound

    with pytest.raises(ConfigError, match="AWS profile 'missing' not found") as info:
        sync_client(AwsSettings(profile="missing"), "s3")
    assert isinstance(info.value.__cause__, ProfileNotFound)


async def test_async_client_unknown_profile_is_a_config_error(no_credentials: Path) -> None:
    from s3flow.aws import async_client

    with pytest.raises(ConfigError, match="AWS profile 'missing' not found"):
        async with async_client(AwsSettings(profile="missing"), "dynamodb"):
            pass


@pytest.mark.parametrize("aws", [AwsSettings(), CUSTOM])
async def test_the_dynamodb_client_is_configured_like_the_others(aws: AwsSettings) -> None:
    from s3flow.aws import async_client

    async with async_client(aws, "dynamodb", pool=12) as client:
        assert _meta(client) == _meta(sync_client(aws, "dynamodb", pool=12))
    if aws is CUSTOM:
        assert _meta(client)["endpoint"] == "http://127.0.0.1:4566"
        assert _meta(client)["region"] == "eu-west-3"


async def test_the_clients_carry_the_settings_they_were_built_from() -> None:
    async with open_clients(CUSTOM, check_endpoints=False) as clients:
        assert clients.aws is CUSTOM


def test_pinned_endpoints_survive_another_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:7000")
    aws = AwsSettings(max_attempts=3)
    pinned = pickle.loads(pickle.dumps(pin_endpoints(aws)))
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert endpoint_for("s3", aws) is None
    assert endpoint_for("s3", pinned) == endpoint_for("sqs", pinned) == "http://127.0.0.1:7000"
    client = sync_client(pinned, "s3")
    assert client.meta.endpoint_url == "http://127.0.0.1:7000"
    assert client.meta.config.s3 == {"addressing_style": "path"}
    assert client.meta.config.retries["total_max_attempts"] == 4
    assert pin_endpoints(AwsSettings()) == AwsSettings()  # nothing to pin: real AWS


@pytest.mark.parametrize(
    ("endpoint", "env", "config", "reason"),
    [
        ("https://s3.eu-west-1.amazonaws.com", {}, {}, None),
        ("http://127.0.0.1:9000", {}, {}, None),
        ("https://s3.eu-west-1.amazonaws.com", {"HTTPS_PROXY": "http://proxy:3128"}, {}, "proxy"),
        (
            "https://s3.eu-west-1.amazonaws.com",
            {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "amazonaws.com"},
            {},
            None,
        ),
        ("https://s3.eu-west-1.amazonaws.com", {}, {"proxies": {"https": "http://p"}}, "proxy"),
        ("https://s3.eu-west-1.amazonaws.com", {}, {"client_cert": "/c.pem"}, "certificate"),
        ("https://s3.eu-west-1.amazonaws.com", {"AWS_CA_BUNDLE": "/ca.pem"}, {}, "CA bundle"),
        ("http://127.0.0.1:9000", {"AWS_CA_BUNDLE": "/ca.pem"}, {}, None),
    ],
    ids=["aws", "local", "proxy-env", "no-proxy", "proxy-config", "client-cert", "ca", "ca-http"],
)
def test_what_leaves_a_client_to_the_sdk(
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    env: dict[str, str],
    config: dict[str, Any],
    reason: str | None,
) -> None:
    import boto3
    import botocore.session

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = boto3.client(
        "s3",
        region_name="eu-west-1",
        endpoint_url=endpoint,
        aws_access_key_id="a",
        aws_secret_access_key="b",
        config=Config(**config),
    )
    why = sdk_only_reason(client, botocore.session.get_session())
    if reason is None:
        assert why is None
    else:
        assert why is not None and reason in why


async def test_the_dynamodb_store_passes_a_profile_error_on_as_is(no_credentials: Path) -> None:
    """The store wrapped it as a StateError (retryable): the web app's start and the
    operator commands on a DynamoDB store then reported a backend error, not a setting."""
    from s3flow.state import DynamoStateStore

    with pytest.raises(ConfigError, match="AWS profile 'missing' not found"):
        async with DynamoStateStore("t", AwsSettings(profile="missing")):
            pass


async def test_an_endpoint_nothing_answers_at_fails_within_the_connect_timeout() -> None:
    """The SDK would retry a refused connection with back-off for 15-20 s first."""
    url = f"http://127.0.0.1:{free_port()}"
    aws = AwsSettings(endpoint_url=url, connect_timeout_s=0.5)
    with pytest.raises(AwsError) as info:
        await check_reachable(aws)
    text = str(info.value)
    assert text.startswith(f"cannot reach the S3 and SQS endpoint {url}: ")
    assert "(for 0.5 s, aws.connect_timeout_s)" in text
    assert "endpoint_url_sqs" in text and "AWS_ENDPOINT_URL_S3" in text
    with pytest.raises(AwsError, match="is the endpoint running"):
        async with open_clients(aws):
            pass


async def test_an_endpoint_that_starts_within_the_connect_timeout_passes() -> None:
    """`s3flow local &` then a command at once: the endpoint listens a moment later."""
    port = free_port()
    listening = asyncio.Event()

    async def start_late() -> asyncio.Server:
        await asyncio.sleep(0.6)
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        listening.set()
        return server

    late = asyncio.create_task(start_late())
    await check_reachable(AwsSettings(endpoint_url=f"http://127.0.0.1:{port}"))
    assert listening.is_set()
    server = await late
    server.close()
    await server.wait_closed()


async def test_an_endpoint_behind_an_http_proxy_is_not_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The proxy makes the connection, not s3flow (the SDK honours HTTP_PROXY)."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    await check_reachable(AwsSettings(endpoint_url="http://minio.internal:9000"))


async def test_a_listening_endpoint_and_aws_itself_pass_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS"):
        monkeypatch.delenv(var, raising=False)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        await check_reachable(AwsSettings(endpoint_url=f"http://127.0.0.1:{port}"))
        # Only the SQS endpoint is custom (and listening); S3 is AWS itself: not checked.
        await check_reachable(AwsSettings(endpoint_url_sqs=f"http://127.0.0.1:{port}"))


class _AttributesSqs:
    """GetQueueAttributes answering with the given attributes (strings, as SQS does)."""

    def __init__(self, attrs: dict[str, str]) -> None:
        self.attrs = attrs
        self.asked: list[dict[str, Any]] = []

    async def get_queue_attributes(self, **kwargs: Any) -> dict[str, Any]:
        self.asked.append(kwargs)
        return {"Attributes": self.attrs}


async def test_queue_depths_reads_the_three_counts_in_one_call() -> None:
    sqs = _AttributesSqs(
        {
            "ApproximateNumberOfMessages": "5",
            "ApproximateNumberOfMessagesNotVisible": "3",
            "ApproximateNumberOfMessagesDelayed": "2",
        }
    )
    depths = await queue_depths(sqs, "http://q")
    assert depths == QueueDepths(visible=5, in_flight=3, delayed=2)
    assert depths.total == 10
    (asked,) = sqs.asked
    assert asked["QueueUrl"] == "http://q"
    assert sorted(asked["AttributeNames"]) == [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesDelayed",
        "ApproximateNumberOfMessagesNotVisible",
    ]


async def test_queue_depths_counts_an_attribute_left_out_as_zero() -> None:
    depths = await queue_depths(_AttributesSqs({"ApproximateNumberOfMessages": "4"}), "u")
    assert depths == QueueDepths(visible=4, in_flight=0, delayed=0)


@pytest.mark.parametrize(
    ("endpoint", "proxy", "verify"),
    [
        ("http://127.0.0.1:4566", None, False),  # no TLS: nothing to verify
        ("HTTP://localhost:9000", None, False),
        ("https://s3.example.com", None, None),  # the SDK's default: verified
        (None, None, None),  # AWS itself
        ("http://127.0.0.1:4566", "https://proxy.example.com:3128", None),  # the proxy's TLS
    ],
)
def test_only_a_client_without_tls_skips_the_ca_bundle(
    endpoint: str | None, proxy: str | None, verify: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "http_proxy"):
        if proxy:
            monkeypatch.setenv(var, proxy)
        else:
            monkeypatch.delenv(var, raising=False)
    args = _create_args(AwsSettings(endpoint_url=endpoint), "s3", Config())
    assert args.get("verify") is verify
    if endpoint is not None and verify is False:
        client = sync_client(AwsSettings(endpoint_url=endpoint), "s3")
        assert client._endpoint.http_session._verify is False
