"""The ``ndjson-to-parquet`` pipeline: two processors on one state store.

* :mod:`.manifest_processor` (``ndjson-manifest``) validates and tracks NDJSON
  files; :mod:`.manifests` seals them into manifests by count / bytes / age
  under a fenced lock (its background sealer runs with the worker);
* :mod:`.compact_processor` (``parquet-compact``) turns each manifest into
  Parquet parts partitioned by date; :mod:`.compaction` holds the work itself;
* :mod:`.cli` attaches ``s3flow manifests ...`` and ``s3flow run compact``.
"""
