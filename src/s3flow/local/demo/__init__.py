"""``s3flow demo``: zero-setup end to end on the embedded local endpoint.

:mod:`.run` drives it (the pipelines' stages); :mod:`.jobs` adds one upload
job through the HTTP API with its live event stream.
"""

from s3flow.local.demo.run import run_demo

__all__ = ["run_demo"]
