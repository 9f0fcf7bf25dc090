"""Ingest: raw probe files (CSV, JSONL, Parquet, GPX, trips-json) -> `probes`; bad rows -> `rejected_probes`.

Rings: `kernel` (pure pandas: record parsing, validation, per-trace cleaning and border cutting), `formats`
(file listing, format detection, per-file parsers), `transforms` (Spark DataFrame -> DataFrame), `pipeline`
(the job: read -> transform -> write with per-source-file idempotency and row accounting), `job` (CLI verb).
"""
