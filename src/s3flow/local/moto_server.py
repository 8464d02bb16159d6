"""Entry point of the embedded local AWS endpoint: moto server plus a speed patch.

Run as ``python -m s3flow.local.moto_server --host 127.0.0.1 --port N``. This is a
separate process (never imported by the worker) so the emulator does not share
the worker's GIL. It never outlives the process that started it (``$S3FLOW_OWNER_PID``).

The patch (see shared EMULATORS.md): moto recomputes every queue attribute,
including the three ``ApproximateNumberOf*`` counts that scan the whole queue,
on every SendMessage and once per *received message* (retention check). That
makes receive O(depth^2) and a 2,000-message backlog crawl at ~3 msg/s. We
compute the counts only where they are asked for (GetQueueAttributes) and read
the retention period directly. All SQS semantics stay as moto implements them.
A second patch makes DynamoDB conditional writes atomic (see
:func:`patch_moto_dynamodb`); a third remembers which backend serves a host rather
than listing moto's package directory on every request (:func:`patch_moto_dispatch`).
``S3FLOW_MOTO_UNPATCHED=1`` runs moto as shipped (benchmarks use it to measure
the difference).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import threading
from typing import Any

_COUNT_ATTRIBUTES = frozenset(
    {
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesDelayed",
        "ApproximateNumberOfMessagesNotVisible",
    }
)
_local = threading.local()


def patch_moto_sqs() -> bool:
    """Apply the queue-depth patch to moto's SQS backend. Returns True if applied."""
    try:
        from moto.core.utils import camelcase_to_underscores, unix_time
        from moto.sqs import models
    except ImportError:  # pragma: no cover - moto missing or reorganised
        return False
    queue_cls: Any = models.Queue
    backend_cls: Any = models.SQSBackend
    if getattr(queue_cls, "_s3flow_patched", False):
        return True
    attributes_prop = queue_cls.__dict__.get("attributes")
    if not isinstance(attributes_prop, property) or attributes_prop.fget is None:
        return False
    original_attributes = attributes_prop.fget
    cheap_base = [a for a in queue_cls.BASE_ATTRIBUTES if a not in _COUNT_ATTRIBUTES]

    def attributes(self: Any) -> dict[str, Any]:
        # moto's own body, except that the three full-queue scans are skipped
        # inside the calls wrapped by _cheap below.
        if not getattr(_local, "cheap", False):
            return dict(original_attributes(self))
        result: dict[str, Any] = {}
        names = list(cheap_base)
        if self.fifo_queue:
            names += list(queue_cls.FIFO_ATTRIBUTES)
        if self.kms_master_key_id:
            names += list(queue_cls.KMS_ATTRIBUTES)
        for name in names:
            result[name] = getattr(self, camelcase_to_underscores(name))
        if self.policy:
            result["Policy"] = self.policy
        if self.redrive_policy:
            result["RedrivePolicy"] = json.dumps(self.redrive_policy)
        for key, value in result.items():
            if isinstance(value, bool):
                result[key] = str(value).lower()
        return result

    queue_cls.attributes = property(attributes)

    def _cheap(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _local.cheap = True
            try:
                return fn(*args, **kwargs)
            finally:
                _local.cheap = False

        wrapper.__name__ = fn.__name__
        return wrapper

    # SendMessage only needs ContentBasedDeduplication from the attributes.
    backend_cls.send_message = _cheap(backend_cls.send_message)

    def is_message_valid_based_on_retention_period(
        self: Any, queue_name: str, message: Any
    ) -> bool:
        queue = self.get_queue(queue_name)
        retain_until = float(queue.message_retention_period) + message.sent_timestamp / 1000
        return bool(retain_until > unix_time())

    backend_cls.is_message_valid_based_on_retention_period = (
        is_message_valid_based_on_retention_period
    )
    queue_cls._s3flow_patched = True
    return True


def patch_moto_dynamodb() -> bool:
    """Serialise moto's DynamoDB writes so conditional writes are atomic.

    moto's threaded server checks a ConditionExpression and then writes without
    a lock, so two concurrent conditional writes can both win (measured: about
    1 in 600 contended rounds); a failed TransactWriteItems restores a copy
    of whole tables, undoing other requests' writes; and UpdateItem's ReturnValues
    are read from the live item after the lock, so a racing write shows through
    (two concurrent ADDs both answered with the second's value). Real DynamoDB has
    none of these problems; one lock around the write operations, and a copy of
    the updated item taken under it, restore its semantics.
    """
    try:
        from moto.dynamodb.models import DynamoDBBackend
    except ImportError:  # pragma: no cover
        return False
    backend: Any = DynamoDBBackend
    if getattr(backend, "_s3flow_patched", False):
        return True
    lock = threading.RLock()

    def locked(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with lock:
                result = fn(*args, **kwargs)
                # update_item returns the stored item itself, and moto's response reads
                # it (ReturnValues) after the lock: a racing update would show through
                # (two ADDs both answered 5). A copy taken under the lock is this write's.
                return copy.deepcopy(result) if fn.__name__ == "update_item" else result

        wrapper.__name__ = fn.__name__
        return wrapper

    for name in (
        "put_item",
        "update_item",
        "delete_item",
        "transact_write_items",
        "batch_write_item",
    ):
        if hasattr(backend, name):
            setattr(backend, name, locked(getattr(backend, name)))
    backend._s3flow_patched = True
    return True


#: At most this many distinct hosts have their backend remembered (the inferred hosts
#: are ``<service>.<region>.amazonaws.com``: a handful in practice).
_HOST_CACHE_MAX = 1024


def patch_moto_dispatch() -> bool:
    """Remember which backend serves a host instead of finding it again per request.

    moto's server picks each request's backend under one global lock, and on every
    request lists its own package directory and stats each entry
    (``list_of_moto_modules``: some 200 ``isdir`` calls), then tries its URL regexes
    in turn. A py-spy profile of the integration tests put about 30 % of the
    server's CPU there. Both answers depend only on the host string and on the
    installed package, so they are computed once. Returns True if applied.
    """
    try:
        from moto import backends
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication
    except ImportError:  # pragma: no cover - moto missing or reorganised
        return False
    app_cls: Any = DomainDispatcherApplication
    if getattr(app_cls, "_s3flow_patched", False):
        return True
    if not callable(getattr(backends, "list_of_moto_modules", None)):
        return False
    modules = frozenset(backends.list_of_moto_modules())

    def list_of_moto_modules() -> frozenset[str]:
        return modules

    backends_mod: Any = backends
    backends_mod.list_of_moto_modules = list_of_moto_modules
    original = app_cls.get_backend_for_host
    found: dict[str | None, Any] = {}

    def get_backend_for_host(self: Any, host: str | None) -> Any:
        try:
            return found[host]
        except KeyError:
            backend = original(self, host)
            if len(found) < _HOST_CACHE_MAX:
                found[host] = backend
            return backend

    app_cls.get_backend_for_host = get_backend_for_host
    app_cls._s3flow_patched = True
    return True


def main(argv: list[str] | None = None) -> None:
    """Start moto server (patched unless S3FLOW_MOTO_UNPATCHED=1).

    Started by :class:`s3flow.local.LocalEndpoint`, it exits by itself as soon as that
    owner process is gone, even when the owner was SIGKILLed (see
    :func:`s3flow.local.die_with_parent`).
    """
    from s3flow.local.endpoint import die_with_parent

    die_with_parent()
    if os.environ.get("S3FLOW_MOTO_UNPATCHED") != "1":
        patch_moto_sqs()
        patch_moto_dynamodb()
        patch_moto_dispatch()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
