"""errors.translate_aws_error: botocore / network errors -> the s3flow hierarchy."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from s3flow.errors import (
    AwsError,
    AwsPermanentError,
    Disposition,
    InvalidInputError,
    ObjectChangedError,
    ObjectMissingError,
    OutputUnavailableError,
    PermanentError,
    RetryableError,
    S3flowError,
    aws_errors,
    translate_aws_error,
)


def client_error(code: str, status: int, message: str = "boom") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "GetObject",
    )


@pytest.mark.parametrize(("code", "status"), [("NoSuchKey", 404), ("404", 404), ("NotFound", 404)])
def test_missing_object(code: str, status: int) -> None:
    err = translate_aws_error(client_error(code, status, "gone"), "GetObject s3://b/k")
    assert type(err) is ObjectMissingError
    assert err.disposition is Disposition.SKIP
    assert "GetObject s3://b/k" in str(err)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("SlowDown", 503),
        ("SlowDown", 0),
        ("", 503),
        ("ServiceUnavailable", 503),
        ("InternalError", 500),
        ("ThrottlingException", 400),
        ("RequestTimeout", 400),
        ("SomethingNew", 502),
        ("", 429),
    ],
)
def test_retryable(code: str, status: int) -> None:
    err = translate_aws_error(client_error(code, status), "GetObject")
    assert type(err) is AwsError
    assert isinstance(err, RetryableError)
    assert err.disposition is Disposition.RETRYABLE
    assert err.code == code
    assert err.operation == "GetObject"


@pytest.mark.parametrize(("code", "status"), [("AccessDenied", 403), ("InvalidRequest", 400)])
def test_permanent(code: str, status: int) -> None:
    err = translate_aws_error(client_error(code, status, "nope"), "PutObject")
    assert type(err) is AwsPermanentError
    assert err.disposition is Disposition.PERMANENT
    assert err.code == code
    assert err.operation == "PutObject"
    assert code in str(err) and "nope" in str(err)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionError("connection refused"),
        TimeoutError("timed out"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_network_errors_are_retryable(exc: BaseException) -> None:
    err = translate_aws_error(exc, "ReceiveMessage")
    assert type(err) is AwsError
    assert err.disposition is Disposition.RETRYABLE
    assert err.operation == "ReceiveMessage"
    assert type(exc).__name__ in str(err)


def test_every_error_is_an_s3flow_error() -> None:
    for exc in (client_error("NoSuchKey", 404), client_error("X", 403), OSError("x")):
        assert isinstance(translate_aws_error(exc, "Op"), S3flowError)


def test_error_class_is_short_name() -> None:
    assert translate_aws_error(client_error("AccessDenied", 403), "Op").error_class == (
        "AwsPermanentError"
    )


def test_invalid_input_is_permanent_and_always_quarantined() -> None:
    err = InvalidInputError("first record is a JSON list, not an object")
    assert isinstance(err, PermanentError)
    assert err.disposition is Disposition.QUARANTINE


def test_missing_bucket_is_retryable_output_unavailable() -> None:
    err = translate_aws_error(client_error("NoSuchBucket", 404, "nope"), "PutObject")
    assert isinstance(err, OutputUnavailableError) and err.disposition is Disposition.RETRYABLE
    assert "s3flow provision" in str(err)


def test_aws_errors_translates_what_the_block_raises() -> None:
    denied = pytest.raises(AwsPermanentError, match="HeadObject s3://b/k failed")
    with denied as info, aws_errors("HeadObject s3://b/k"):
        raise client_error("AccessDenied", 403)
    assert isinstance(info.value.__cause__, ClientError)
    classified = InvalidInputError("bad first line")
    # Classified already: it passes unchanged.
    with pytest.raises(InvalidInputError) as passed, aws_errors("GetObject"):
        raise classified
    assert passed.value is classified
    with aws_errors("GetObject"):
        pass  # nothing raised, nothing to translate


def test_a_connection_refused_says_what_to_check() -> None:
    """ "Could not connect to the endpoint URL" alone left a new user guessing."""
    from botocore.exceptions import EndpointConnectionError

    from s3flow.errors import AwsError, Disposition, translate_aws_error

    err = translate_aws_error(
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1/"), "GetQueueUrl q"
    )
    assert isinstance(err, AwsError) and err.disposition is Disposition.RETRYABLE
    assert str(err).startswith("GetQueueUrl q failed: EndpointConnectionError: Could not connect")
    assert "is the endpoint running, e.g. `s3flow local`" in str(err)
    assert "AWS_ENDPOINT_URL" in str(err)
    timeout = translate_aws_error(TimeoutError("read timed out"), "GetObject s3://b/k")
    assert "endpoint running" not in str(timeout)  # it answered once: not this hint


@pytest.mark.parametrize(("code", "status"), [("PreconditionFailed", 412), ("412", 412)])
def test_a_refused_conditional_read_is_the_object_changed(code: str, status: int) -> None:
    """A read conditional on the event's eTag answered 412: the object was overwritten
    since the event; the event is superseded (skip), never retried nor dead-lettered."""
    err = translate_aws_error(client_error(code, status), "GetObject s3://b/k", if_match='"e1"')
    assert type(err) is ObjectChangedError and err.disposition is Disposition.SKIP
    assert str(err) == (
        "superseded: the object was overwritten since this event "
        "(upload eTag e1 is not the object now)"
    )
    with pytest.raises(ObjectChangedError), aws_errors("GetObject", if_match="e1"):
        raise client_error(code, status)


def test_a_412_of_an_unconditional_call_is_no_object_change() -> None:
    # Another call's precondition (a conditional write) says nothing about the event.
    err = translate_aws_error(client_error("PreconditionFailed", 412), "PutObject s3://b/k")
    assert type(err) is AwsPermanentError and err.code == "PreconditionFailed"
