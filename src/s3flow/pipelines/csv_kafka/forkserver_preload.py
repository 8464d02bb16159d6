"""Imported once by the range processes' forkserver (:mod:`.procs`), never by the parent.

Imports everything a range process runs (parsing, pyarrow, confluent-kafka, the S3
client) and loads the S3 service model and endpoint rules into a botocore session that
every range process forked from the server reuses: a range starts in milliseconds
instead of the second an interpreter needs to import and load all that.
"""

from __future__ import annotations

from s3flow.pipelines.csv_kafka import procs

procs.warm_session()
