"""librdkafka errors translated into the s3flow hierarchy (``raise translate(exc) from exc``).

* broker down, timeouts, a transaction the broker aborted, any error librdkafka marks
  retriable -> :class:`KafkaUnavailableError` (retryable: resume from the checkpoint);
* a newer producer with the same ``transactional.id`` took over -> :class:`ProducerFencedError`
  (retryable for the engine, but never retried in-process: someone else owns the object);
* authorization, invalid configuration, a record too large -> :class:`KafkaPermanentError`.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from s3flow.errors import PermanentError, RetryableError, S3flowError


class KafkaUnavailableError(RetryableError):
    """Kafka could not be reached or a transaction failed transiently."""


class ProducerFencedError(RetryableError):
    """Another producer with this object's transactional.id fenced this one (a zombie)."""


class KafkaPermanentError(PermanentError):
    """Kafka refused the work in a way retries will not fix."""


class BadRowError(PermanentError):
    """A bad CSV row under ``bad_rows = 'fail'``."""


_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
_PERMANENT = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_CONFIG,
    KafkaError._INVALID_ARG,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_REPLICATION_FACTOR,
    KafkaError.POLICY_VIOLATION,
    KafkaError.TOPIC_EXCEPTION,
}


def translate_kafka_error(exc: BaseException, operation: str) -> S3flowError:
    """The s3flow error for a confluent-kafka exception raised by ``operation``."""
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if not isinstance(err, KafkaError):
        return KafkaUnavailableError(f"Kafka {operation} failed: {type(exc).__name__}: {exc}")
    text = f"Kafka {operation} failed: {err.name()}: {err.str()}"
    code = err.code()
    if code in _FENCED:
        return ProducerFencedError(text)
    if code in _PERMANENT:
        return KafkaPermanentError(text)
    # Retriable, abortable (txn_requires_abort), transport, timeouts, unknown: try again
    # from the last committed checkpoint.
    return KafkaUnavailableError(text)


def is_too_large(exc: BaseException) -> bool:
    """Whether ``exc`` is librdkafka refusing one message over ``message.max.bytes``."""
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE


def is_fenced(err: KafkaError) -> bool:
    """Whether ``err`` says a newer producer of the same ``transactional.id`` took over."""
    return err.code() in _FENCED
