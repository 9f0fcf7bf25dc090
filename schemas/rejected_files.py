"""rejected_files: one input file that ingest refused as a whole (quarantined), with the reason."""

from schemas._base import Column, Table

# Every reason a whole input file can be refused for; the other files of the batch are still ingested.
FILE_REASONS = (
    "empty_file",           # no bytes (or no bytes after decompression)
    "unreadable_file",      # cannot be opened or read, corrupt gzip stream, not parseable as its format
    "wrong_format",         # format cannot be told, or the content does not match the format (e.g. no probe columns)
    "file_too_large",       # bytes on disk over the size limit (IngestLimits.max_file_bytes)
    "decompression_limit",  # decompressed size over the limit or the compression ratio over the limit
    "field_too_long",       # a CSV/JSONL line (and so a field) longer than IngestLimits.max_line_bytes
)

REJECTED_FILES = Table(
    name="rejected_files",
    grain="one input file refused as a whole (the latest refusal of that path)",
    partition_by=(),
    doc=(
        "Written by ingest, one Parquet file per refused path (`rf-<key>.parquet`, key = SHA-256 prefix of the "
        "path): refusing the same path again replaces its row, and ingesting that path successfully later "
        "removes it."
    ),
    columns=(
        Column("source_file", "string", "input file as named or listed"),
        Column("reason", "string", "one of FILE_REASONS"),
        Column("detail", "string", "one line: what was wrong (limit and measured value, parser message)"),
        Column("size_bytes", "int64", "bytes on disk", required=False),
        Column("rejected_at_utc", "timestamp", "when ingest refused the file, UTC"),
    ),
)
