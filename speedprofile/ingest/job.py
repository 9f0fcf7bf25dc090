"""`speedprofile ingest PATH... [--format ...]`: raw probe files -> `probes`; bad rows -> `rejected_probes`.

Prints one summary line (rows in / kept / rejected, rows per second) and one line per rejection reason.
"""

from __future__ import annotations

import argparse

FORMAT_CHOICES = ("auto", "csv", "jsonl", "parquet", "gpx", "trips-json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="input files or directories (searched recursively)")
    parser.add_argument("--format", default="auto", choices=FORMAT_CHOICES,
                        help="input format (default: by extension, then by content)")


def cli(args: argparse.Namespace) -> int:
    import os
    import sys

    from speedprofile.ingest.pipeline import ingest, prepare
    from speedprofile.spark import get_session
    from speedprofile.warehouse import is_remote

    paths = list(args.paths)
    prepared = None
    if not any(is_remote(p) for p in [args.warehouse, *paths]):
        prepared = prepare(None, args.warehouse, paths, args.format)  # bad input fails before Spark starts
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers use this interpreter's packages
    spark = get_session("ingest_probes")
    result = ingest(spark, args.warehouse, paths, args.format, prepared=prepared)
    for line in result.summary_lines():
        print(line)
    return 0
