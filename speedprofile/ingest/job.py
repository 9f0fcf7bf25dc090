"""`speedprofile ingest PATH... [--format ...]`: raw probe files -> `probes`; bad rows -> `rejected_probes`; files
refused as a whole -> `rejected_files`.

Prints one summary line (rows in / kept / rejected, rows per second), one line per rejection reason and one per
refused file. Exit code 0 when at least one file was ingested.
"""

from __future__ import annotations

import argparse
import os

FORMAT_CHOICES = ("auto", "csv", "jsonl", "parquet", "gpx", "trips-json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="input files or directories (searched recursively)")
    parser.add_argument("--format", default="auto", choices=FORMAT_CHOICES,
                        help="input format (default: by extension, then by content)")
    parser.add_argument("--remote", default=os.environ.get("SPEEDPROFILE_SPARK_REMOTE"),
                        help="Spark Connect server URL sc://HOST:PORT (default $SPEEDPROFILE_SPARK_REMOTE; none: a "
                             "local session in this process)")
    add_limit_arguments(parser)


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """Per-file limits and the clock check, shared by the CLI verb and the Spark app."""
    from schemas.rejected_probes import FUTURE_SKEW_S
    from speedprofile.ingest.formats import IngestLimits

    d = IngestLimits()
    parser.add_argument("--max-file-bytes", type=int, default=d.max_file_bytes,
                        help="refuse files larger than this on disk")
    parser.add_argument("--max-decompressed-bytes", type=int, default=d.max_decompressed_bytes,
                        help="refuse gzip files that decompress to more than this")
    parser.add_argument("--max-compression-ratio", type=float, default=d.max_compression_ratio,
                        help="refuse gzip files whose decompressed/compressed ratio exceeds this (past 64 MiB)")
    parser.add_argument("--max-line-bytes", type=int, default=d.max_line_bytes,
                        help="refuse CSV/JSONL files with a longer line (so a longer field)")
    parser.add_argument("--future-skew-s", type=float, default=FUTURE_SKEW_S,
                        help="reject fixes later than the run's clock plus this many seconds (future_time)")
    parser.add_argument("--now", default=None, metavar="ISO-8601",
                        help="the run's clock for the future_time check (default: the wall clock), e.g. the end "
                             "of the data interval for a reproducible re-run")


def limits_from(args: argparse.Namespace):
    from speedprofile.ingest.formats import IngestLimits

    return IngestLimits(max_file_bytes=args.max_file_bytes, max_decompressed_bytes=args.max_decompressed_bytes,
                        max_compression_ratio=args.max_compression_ratio, max_line_bytes=args.max_line_bytes)


def clock_from(args: argparse.Namespace):
    """--now as a UTC timestamp (None = wall clock); UserError when it is not a time with a UTC offset."""
    import pandas as pd

    from speedprofile.errors import UserError

    if args.now is None:
        return None
    try:
        t = pd.Timestamp(args.now)
    except ValueError as exc:
        raise UserError(f"bad --now {args.now!r}: {exc}") from None
    if t.tzinfo is None:
        raise UserError(f"bad --now {args.now!r}: give a UTC offset (e.g. 2026-11-02T00:00:00Z)")
    return t.tz_convert("UTC")


def cli(args: argparse.Namespace) -> int:
    import sys

    import pandas as pd

    from speedprofile.ingest.pipeline import ingest, prepare, record_refused, refused_error
    from speedprofile.spark import get_session
    from speedprofile.warehouse import is_remote

    paths = list(args.paths)
    limits = limits_from(args)
    now = clock_from(args)
    prepared = None
    if not any(is_remote(p) for p in [args.warehouse, *paths]):
        prepared = prepare(None, args.warehouse, paths, args.format, limits)  # bad input fails before Spark starts
        if not prepared.files:
            record_refused(None, args.warehouse, prepared.refused, [], now or pd.Timestamp.now(tz="UTC"))
            raise refused_error(prepared.refused)
    if args.remote:
        os.environ["SPARK_REMOTE"] = args.remote  # a Spark Connect client: no JVM starts here
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python workers use this interpreter's packages
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # the driver and its UI bind to loopback unless told
    spark = get_session("ingest_probes")
    result = ingest(spark, args.warehouse, paths, args.format, prepared=prepared, limits=limits, now=now,
                    future_skew_s=args.future_skew_s)
    for line in result.summary_lines():
        print(line)
    return 0
