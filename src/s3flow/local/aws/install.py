"""The jars of ElasticMQ and S3Proxy, copied once from Maven Central through Maven.

One classpath serves both (``scripts/aws/pom.xml``, or a generated pom outside a
checkout): ``<cache>/aws-elasticmq-<v>-s3proxy-<v>/libs`` (``.complete`` marks a
full copy). Java and the cache directory are found as for the Kafka broker.
"""

from __future__ import annotations

import sys
from pathlib import Path

from s3flow.local.kafka.install import copy_jars, default_cache_dir, maven_pom

#: Keep equal to the properties in scripts/aws/pom.xml.
ELASTICMQ_VERSION = "1.7.1"
S3PROXY_VERSION = "2.6.0"


def log(msg: str) -> None:
    """An ``aws endpoints: ...`` progress line on stderr."""
    print(f"aws endpoints: {msg}", file=sys.stderr, flush=True)


def repo_pom() -> Path | None:
    """``scripts/aws/pom.xml`` of the source checkout, when there is one."""
    pom = Path(__file__).resolve().parents[4] / "scripts" / "aws" / "pom.xml"
    return pom if pom.is_file() else None


def libs_dir(cache_dir: Path | None = None) -> Path:
    """Where the jars live (whether installed or not)."""
    cache = (cache_dir or default_cache_dir()).resolve()
    return cache / f"aws-elasticmq-{ELASTICMQ_VERSION}-s3proxy-{S3PROXY_VERSION}" / "libs"


def install(cache_dir: Path | None = None, *, quiet: bool = False) -> Path:
    """Copy both servers' jars into :func:`libs_dir` (once; safe concurrently); return it."""
    return copy_jars(
        libs_dir(cache_dir),
        label=f"ElasticMQ {ELASTICMQ_VERSION} + S3Proxy {S3PROXY_VERSION}",
        pom=repo_pom(),
        pom_text=maven_pom(
            "s3flow-aws-endpoints",
            [
                ("org.elasticmq", "elasticmq-server_2.13", ELASTICMQ_VERSION),
                ("org.gaul", "s3proxy", S3PROXY_VERSION),
            ],
            replaces="scripts/aws/pom.xml",
        ),
        wanted=[f"elasticmq-server_2.13-{ELASTICMQ_VERSION}", f"s3proxy-{S3PROXY_VERSION}"],
        progress=log,
        quiet=quiet,
    )
