"""Command-line flags every stage app takes: warehouse, a date or date range, and the partitions to process.

`spark-submit spark_apps/<app>.py --warehouse W --date D [--to-date D2] --partition CELL[,CELL...]`
One submit can cover many partition-days; the app processes exactly those and nothing else.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import date

from speedprofile.errors import UserError
from speedprofile.validate import cells
from speedprofile.warehouse import date_range, default_warehouse


def job_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--warehouse", default=default_warehouse(), help="warehouse root (local path or s3a://)")
    p.add_argument("--date", required=True, help="first UTC date (dt) to process, YYYY-MM-DD")
    p.add_argument("--to-date", default=None, help="last UTC date, inclusive (default: --date)")
    p.add_argument("--partition", required=True, help="H3 cell(s) to process, comma-separated")
    return p


def parse_job_args(
    argv: list[str] | None, description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """Parse app flags; adds `.dates` (list[date]) and `.partitions` (list[str] of validated H3 cells)."""
    p = job_parser(description)
    if extra:
        extra(p)
    args = p.parse_args(argv)
    try:
        args.dates = date_range(args.date, args.to_date)
    except ValueError as exc:
        raise UserError(f"bad date: {exc}") from exc
    args.partitions = cells(args.partition, what="--partition")
    return args


def run_app(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Entry point for spark_apps/*.py: one-line error and exit code 2 on UserError, no traceback."""
    import sys

    try:
        sys.exit(main(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


__all__ = ["date", "job_parser", "parse_job_args", "run_app"]
