"""What the command-line tests share: a one-pipeline config."""

from __future__ import annotations

#: A config's one pipeline "p" (line-count of bucket "b" from queue "q").
ONE_PIPELINE = """\
[[pipelines]]
name = "p"
processor = "line-count"
bucket = "b"
queue = "q"
output = "s3://o/r/"
"""
