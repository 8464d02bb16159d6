"""The built-in pipelines, one folder (or module) each, found by name through the registry.

* :mod:`.line_count` - count lines and bytes of each object;
* :mod:`.csv_kafka` - CSV rows into a Kafka topic, exactly once;
* :mod:`.ndjson_parquet` - NDJSON files tracked into manifests, compacted to Parquet.
* :mod:`.text_to_pdf` - text objects to paginated PDFs, streamed page by page.

A pipeline imports the core, never another pipeline; the core never imports a
pipeline (``s3flow.processors.registry`` names them by import path).
"""
