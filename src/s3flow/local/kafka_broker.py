"""A real single-node Apache Kafka broker on 127.0.0.1, for tests, the demo and benchmarks.

No Docker and no tarball download: the broker jars (``org.apache.kafka:kafka_2.13`` and
its runtime dependencies) come from Maven Central through Maven
(``scripts/kafka/pom.xml``), are copied once into a cache directory and run with the
machine's Java 17+ as a combined KRaft broker + controller::

    with KafkaBroker() as kafka:          # a private broker in a temporary log dir
        produce_to(kafka.bootstrap)        # "127.0.0.1:<port>"
        kafka.restart()                    # same port, same data

From a shell (``scripts/services kafka ...`` calls this)::

    python -m s3flow.local.kafka_broker install  # fetch the jars (idempotent)
    python -m s3flow.local.kafka_broker start    # start/reuse the shared broker
    python -m s3flow.local.kafka_broker status   # exit 0 + bootstrap when it runs, 3 when not
    python -m s3flow.local.kafka_broker env      # export KAFKA_BOOTSTRAP=... (for eval)
    python -m s3flow.local.kafka_broker stop     # SIGTERM, SIGKILL after 30 s

Layout of the cache directory (``S3FLOW_SERVICES_CACHE``, default ``<repo>/.cache/services``)::

    kafka-<version>/libs/*.jar     the broker's classpath (+ .complete when fully copied)
    kafka-run/                     the shared broker of ``start``: server.properties, data/,
                                   broker.log, broker.pid, broker.json
    kafka-tmp/<random>/            private run dirs of KafkaBroker() objects, removed on close

Everything listens on 127.0.0.1 only. This module is the stable import path and the command
line; the work is done in :mod:`s3flow.local.kafka` (host, install, config, broker).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from s3flow.local.kafka.broker import KafkaBroker
from s3flow.local.kafka.host import ServiceError, log, port_free
from s3flow.local.kafka.install import (
    KAFKA_VERSION,
    default_cache_dir,
    install,
    java_available,
    java_version,
    maven_available,
    pom_kafka_version,
    repo_pom,
)

__all__ = [
    "KAFKA_VERSION",
    "KafkaBroker",
    "ServiceError",
    "java_available",
    "java_version",
    "main",
    "maven_available",
    "pom_kafka_version",
    "port_free",
    "repo_pom",
    "shared_broker",
]

_NOT_RUNNING = 3  # exit code of `status` / `env` when no broker runs


def shared_broker(cache_dir: Path | None = None, port: int = 0) -> KafkaBroker:
    """The broker of ``scripts/services``: ``<cache>/kafka-run``, outliving the caller."""
    cache = (cache_dir or default_cache_dir()).resolve()
    return KafkaBroker(cache, port, run_dir=cache / "kafka-run", detach=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m s3flow.local.kafka_broker install|start|stop|restart|status|env``."""
    parser = argparse.ArgumentParser(
        prog="python -m s3flow.local.kafka_broker",
        description="A local single-node Apache Kafka broker (KRaft) on 127.0.0.1.",
    )
    parser.add_argument("command", choices=["install", "start", "stop", "restart", "status", "env"])
    parser.add_argument(
        "--cache-dir", type=Path, help="default: $S3FLOW_SERVICES_CACHE or <repo>/.cache/services"
    )
    parser.add_argument(
        "--port", type=int, default=0, help="default: $S3FLOW_KAFKA_PORT, the last one, or free"
    )
    parser.add_argument("--timeout", type=float, default=90.0, help="start timeout in seconds")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            started = time.monotonic()
            libs = install(args.cache_dir)
            size = sum(p.stat().st_size for p in libs.glob("*.jar"))
            print(f"kafka jars: {libs} ({size / 1e6:.0f} MB, {time.monotonic() - started:.1f}s)")
            return 0
        broker = shared_broker(args.cache_dir, args.port)
        broker._load_state()
        if args.command in ("start", "restart"):
            if args.command == "restart":
                broker.stop()
            broker.start(timeout_s=args.timeout)
            how = "reusing running" if broker.reused else "started"
            log(
                f"{how} Apache Kafka broker pid {broker.pid} on {broker.bootstrap} "
                f"in {broker.start_seconds:.1f}s (log {broker.log_path})"
            )
            print(f"KAFKA_BOOTSTRAP={broker.bootstrap}")
            return 0
        if args.command == "stop":
            pid = broker.pid or broker._find_pid()
            broker.stop()
            log(f"stopped broker pid {pid}" if pid else "no broker running")
            return 0
        if not broker.running():
            log(f"no broker running (run dir {broker.run_dir})")
            return _NOT_RUNNING
        if args.command == "status":
            print(f"KAFKA_BOOTSTRAP={broker.bootstrap}")
            log(f"running: pid {broker._find_pid()}, log {broker.log_path}")
        else:
            print(f"export KAFKA_BOOTSTRAP={broker.bootstrap}")
        return 0
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
