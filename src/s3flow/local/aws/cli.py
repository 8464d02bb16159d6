"""``python -m s3flow.local.aws.cli elasticmq|s3proxy install|start|stop|restart|status|env``.

The shared servers of ``scripts/services`` live in ``<cache>/<name>-run`` and outlive
the command; ``status``/``env`` exit 3 when the server is not running.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from s3flow.local.aws.install import install
from s3flow.local.aws.server import ElasticMQ, JvmServer, S3Proxy, client_env
from s3flow.local.kafka.host import ServiceError
from s3flow.local.kafka.install import default_cache_dir

_NOT_RUNNING = 3
_ENV = {"elasticmq": "AWS_ENDPOINT_URL_SQS", "s3proxy": "AWS_ENDPOINT_URL_S3"}
_URL_ARG = {"elasticmq": "sqs_url", "s3proxy": "s3_url"}


def shared_server(name: str, cache_dir: Path | None = None, port: int = 0) -> JvmServer:
    """The server of ``scripts/services``: ``<cache>/<name>-run``, detached."""
    cache = (cache_dir or default_cache_dir()).resolve()
    cls = ElasticMQ if name == "elasticmq" else S3Proxy
    return cls(cache, port, run_dir=cache / f"{name}-run", detach=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the command."""
    parser = argparse.ArgumentParser(prog="scripts/services elasticmq|s3proxy")
    parser.add_argument("service", choices=sorted(_ENV))
    parser.add_argument("command", choices=["install", "start", "stop", "restart", "status", "env"])
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    var = _ENV[args.service]
    try:
        if args.command == "install":
            libs = install(args.cache_dir)
            print(f"{args.service} jars: {libs}")
            return 0
        server = shared_server(args.service, args.cache_dir, args.port)
        if args.command in ("start", "restart"):
            if args.command == "restart":
                server.stop()
            server.start()
            how = "reusing running" if server.reused else "started"
            print(
                f"{args.service}: {how} pid {server.pid} on {server.url} "
                f"in {server.start_seconds:.1f}s (log {server.log_path})",
                file=sys.stderr,
            )
            print(f"{var}={server.url}")
            return 0
        if args.command == "stop":
            pid = server.pid
            server.stop()
            print(
                f"{args.service}: " + (f"stopped pid {pid}" if pid else "not running"),
                file=sys.stderr,
            )
            return 0
        if not server.running():
            print(f"{args.service}: not running", file=sys.stderr)
            return _NOT_RUNNING
        if args.command == "status":
            print(f"{var}={server.url}")
            return 0
        # env: all a client needs, not only the endpoint: the server's fixed credentials
        # and the checksum settings it requires (``eval "$(scripts/services s3proxy env)"``).
        for name, value in client_env(**{_URL_ARG[args.service]: server.url}).items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    except ServiceError as exc:
        print(f"{args.service}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
