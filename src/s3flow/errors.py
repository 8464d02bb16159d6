"""The one exception hierarchy of s3flow.

Every error s3flow raises derives from :class:`S3flowError` and carries a
:class:`Disposition` that tells the engine what to do with the message that
caused it:

* ``RETRYABLE`` - transient (throttling, 5xx, timeouts, a processor bug that may
  go away): leave the message on the queue with a backoff; after
  ``max_receive_count`` receives the queue's redrive policy dead-letters it.
* ``PERMANENT`` - permanent for this object (corrupt compressed data,
  undecodable content): send it to the DLQ at once with the reason, no retries.
* ``POISON`` - the SQS message itself is unusable (not a known envelope): DLQ.
* ``SKIP`` - nothing to do for this object (it was deleted before we read it, or
  overwritten since the event that named it): log and acknowledge.
* ``QUARANTINE`` - the object fails the pipeline's validation: tag it, record
  it as quarantined with the reason, acknowledge (whatever
  ``on_permanent_error`` says: validation is meant to quarantine).

Library errors (botocore, zlib, ...) are translated at the boundary with
``raise X from exc`` so the engine only ever sees this hierarchy.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Disposition(enum.Enum):
    """How the engine settles a message whose processing raised an error."""

    RETRYABLE = "retryable"
    PERMANENT = "permanent"
    POISON = "poison"
    SKIP = "skip"
    QUARANTINE = "quarantine"


class S3flowError(Exception):
    """Root of every s3flow error."""

    disposition: Disposition = Disposition.RETRYABLE

    @property
    def error_class(self) -> str:
        """Short class name, as written to DLQ message attributes and logs."""
        return type(self).__name__


class ConfigError(S3flowError):
    """A setting is missing, unknown or invalid. Raised before any work starts."""

    disposition = Disposition.PERMANENT


class EnvelopeError(S3flowError):
    """An SQS message body is not a known S3 notification envelope (poison)."""

    disposition = Disposition.POISON


class RetryableError(S3flowError):
    """A transient failure: try again later."""

    disposition = Disposition.RETRYABLE


class AwsCallError(S3flowError):
    """An AWS call failed: AWS's error ``code`` and the ``operation``, when known.

    Raised as one of its two kinds, :class:`AwsError` or :class:`AwsPermanentError`.
    """

    def __init__(self, message: str, *, code: str | None = None, operation: str | None = None):
        super().__init__(message)
        self.code = code
        self.operation = operation


class AwsError(AwsCallError, RetryableError):
    """An AWS call failed in a way that is worth retrying (throttling, 5xx, network)."""


class AwsPermanentError(AwsCallError):
    """An AWS call failed in a way retries will not fix (access denied, bad request)."""

    disposition = Disposition.PERMANENT


class PermanentError(S3flowError):
    """Permanent for this object: retrying will give the same result."""

    disposition = Disposition.PERMANENT


class CorruptDataError(PermanentError):
    """Compressed data could not be decompressed (truncated or corrupt)."""


class UndecodableContentError(PermanentError):
    """Content could not be decoded (wrong text encoding, unparseable format)."""


class InvalidInputError(PermanentError):
    """The object fails the pipeline's validation (size, format, first record...).

    Always quarantined with the reason, never retried or dead-lettered.
    """

    disposition = Disposition.QUARANTINE


class OutputPathError(PermanentError):
    """An output location derived from the input key is not acceptable."""


class TooLargeError(PermanentError):
    """An object decompresses to more than the pipeline's ``max_uncompressed_bytes``."""


class OutputUnavailableError(RetryableError):
    """An output location (bucket, directory) is missing or not writable right now.

    Retried with an error log, never dead-lettered per object: the fix is the
    operator's (re-create the bucket), not the file's.
    """


class ExecutorUnavailableError(RetryableError):
    """The executor cannot take work (an ECS cluster, task definition or Batch queue that
    does not exist, access denied): retried with an error log without counting a failure
    of the object; the fix is the operator's, not the file's."""


class LookupRefusedError(RetryableError):
    """What routing needs to know of an object was refused (GetObjectTagging access
    denied: the worker's role lacks the grant): retried with an error log without
    counting a failure of the object; the fix is the operator's, not the file's."""


class HoldLostError(RetryableError):
    """The key lock or claim a worker held for an object expired and another worker took
    it over while this one processed the object (it stalled longer than the claim's TTL,
    or the state store was out of reach): the run is stopped before it writes another
    output, and its message released without counting a failure."""


class OutputVerificationError(RetryableError):
    """A declared output is missing or wrong after the processor returned (checked before
    the ack): retried with the reason, never acknowledged; after ``max_receive_count``
    failures the message is dead-lettered."""


class JobTimeoutError(RetryableError):
    """A run went on past the pipeline's ``job_timeout_s``: it was stopped where it ran
    (task cancelled, process killed, container stopped) and counts as a failure, so an
    object that always hangs ends in the dead-letter queue with this reason."""


class ObjectMissingError(S3flowError):
    """The object named by the event no longer exists (deleted or overwritten)."""

    disposition = Disposition.SKIP


class ObjectChangedError(S3flowError):
    """The object was overwritten since the event that named its upload by eTag: a read
    conditional on that eTag (``If-Match``) was refused with 412 Precondition Failed.

    The event is superseded: the newer upload's own event processes the object, so this
    one is acknowledged without output (never retried nor dead-lettered). The message is
    what the event's record keeps (:func:`superseded_text`).
    """

    disposition = Disposition.SKIP


def superseded_text(etag: str) -> str:
    """What an :class:`ObjectChangedError` says for the upload of eTag ``etag``."""
    return (
        "superseded: the object was overwritten since this event "
        f"(upload eTag {etag.strip(chr(34))} is not the object now)"
    )


class ReceiveFailedError(S3flowError):
    """A queue could not be read, again and again (burst mode gives up: nothing to drain)."""


class ProcessorError(RetryableError):
    """A processor raised an unexpected exception; treated as retryable."""


# --- botocore translation ----------------------------------------------------

#: Error codes worth another try (botocore's standard retry mode retries these too).
RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "EC2ThrottledException",
        "PriorBatchNotFinished",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "InternalFailure",
        "PriorRequestNotComplete",
    }
)
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}


def aws_error_code(exc: BaseException) -> str:
    """The error code an SDK error carries (``NoSuchBucket``, ``404``...); "" for others."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str((response.get("Error") or {}).get("Code") or "")


def translate_aws_error(
    exc: BaseException, operation: str, *, if_match: str | None = None
) -> S3flowError:
    """Translate a botocore/aiohttp exception into the s3flow hierarchy.

    Use as ``raise translate_aws_error(exc, "GetObject") from exc``. ``if_match``: the
    eTag the call was conditional on; its 412 Precondition Failed then becomes an
    :class:`ObjectChangedError` (without it a 412 is permanent, like any other 4xx).
    """
    response: dict[str, Any] | None = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error") or {}
        code = str(err.get("Code") or "")
        msg = str(err.get("Message") or exc)
        status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        text = f"{operation} failed: {code or status}: {msg}"
        if code in _MISSING:
            return ObjectMissingError(text)
        if if_match and (code == "PreconditionFailed" or status == 412):
            return ObjectChangedError(superseded_text(if_match))
        if code == "NoSuchBucket":
            return OutputUnavailableError(
                f"{text} (the bucket does not exist: create it or run `s3flow provision`)"
            )
        if code in RETRYABLE_CODES or status >= 500 or status == 429:
            return AwsError(text, code=code, operation=operation)
        return AwsPermanentError(text, code=code, operation=operation)
    name = type(exc).__name__
    text = f"{operation} failed: {name}: {exc}"
    # Connection errors, read timeouts, endpoint unreachable: transient. So are missing
    # credentials: a role's may be a moment away (the instance metadata service).
    hint = ""
    if name in _NO_CREDENTIALS:
        hint = f" ({_CREDENTIALS_HINT})"
    elif name in _CONNECT_ERRORS:
        hint = f" ({_UNREACHABLE_HINT})"
    elif "WRONG_VERSION_NUMBER" in str(exc):
        hint = f" ({_PLAIN_HTTP_HINT})"
    return AwsError(f"{text}{hint}", operation=operation)


#: What to check when nothing answers at an endpoint's address.
_UNREACHABLE_HINT = (
    "nothing answers at that address: is the endpoint running, e.g. `s3flow local`, and "
    "are AWS_ENDPOINT_URL / [aws] endpoint_url and the region right?"
)

#: What to do when no credentials were found.
_CREDENTIALS_HINT = (
    "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
    "or run where a role provides them; a local endpoint (`s3flow local`) takes any value"
)
_NO_CREDENTIALS = frozenset({"NoCredentialsError", "PartialCredentialsError"})

#: A TLS handshake answered in plain HTTP.
_PLAIN_HTTP_HINT = (
    "the endpoint answers plain HTTP, not TLS: write its URL with http://, not https://"
)

#: Errors that mean no connection could be made (botocore's, s3flow's own HTTP client's).
_CONNECT_ERRORS = frozenset(
    {"EndpointConnectionError", "ConnectTimeoutError", "HttpConnectError", "HttpConnectTimeout"}
)


@contextmanager
def aws_errors(operation: str, *, if_match: str | None = None) -> Iterator[None]:
    """Translate what an AWS call in the block raises (:func:`translate_aws_error`;
    ``if_match``: the eTag the call is conditional on).

    ``with aws_errors(f"GetObject {uri}"): resp = await s3.get_object(...)``. An
    s3flow error passes unchanged (it is classified already), as does cancellation.
    """
    try:
        yield
    except S3flowError:
        raise
    except Exception as exc:
        raise translate_aws_error(exc, operation, if_match=if_match) from exc
