"""NDJSON -> Parquet compaction of sealed manifests (the ``parquet-compact`` processor).

Modules: :mod:`.manifest` (the manifest format), :mod:`.options` (processor
options), :mod:`.schema` (unification and widening rules), :mod:`.tasks` (what
the parent and the worker processes exchange), :mod:`.scan` and :mod:`.write`
(the work done in worker processes: reading NDJSON, writing Parquet),
:mod:`.executors` (process pool / Spark), :mod:`.job` (one compaction, end to
end). See docs/pipelines/compaction.md.

Importing this package is cheap: pyarrow is loaded by the modules that use it.
"""
