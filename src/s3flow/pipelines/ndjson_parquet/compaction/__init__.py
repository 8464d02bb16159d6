"""NDJSON -> Parquet compaction of sealed manifests (the ``parquet-compact`` processor).

Modules: :mod:`.manifest` (the manifest format), :mod:`.options` (processor
options), :mod:`.schema` (unification and widening rules), :mod:`.convert`
(the work done in worker processes), :mod:`.executors` (process pool / Spark),
:mod:`.job` (one compaction, end to end). See docs/pipelines/compaction.md.

Importing this package is cheap: pyarrow is loaded by the modules that use it.
"""
