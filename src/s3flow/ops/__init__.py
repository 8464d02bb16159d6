"""Operator tools, one module per task: status, files, dlq, backfill."""
