"""ingest_probes: raw probe files -> `probes` (dt, partition), `rejected_probes` (dt) and `rejected_files`.

`spark-submit spark_apps/ingest_probes.py --warehouse W (--input PATH... | --date D) [--format F] [limits]`
`--date D` reads the landing folder `<W>/landing/dt=<D>/` (what the Airflow ingest task passes). A bad file is
refused into `rejected_files` and the others are ingested; the app fails only when no file could be ingested.
"""

from __future__ import annotations

import argparse

from speedprofile.errors import UserError
from speedprofile.ingest.job import FORMAT_CHOICES, add_limit_arguments, clock_from, limits_from
from speedprofile.warehouse import default_warehouse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warehouse", default=default_warehouse(), help="warehouse root (local path or s3a://)")
    p.add_argument("--input", nargs="+", default=[], metavar="PATH", help="input files or directories")
    p.add_argument("--date", default=None, help="also read the landing folder <warehouse>/landing/dt=<date>/")
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES)
    add_limit_arguments(p)
    args = p.parse_args(argv)
    if not args.input and not args.date:
        raise UserError("give --input PATH... or --date YYYY-MM-DD (landing folder)")
    return args


def main(argv: list[str] | None = None) -> int:
    from datetime import date

    from speedprofile.ingest.pipeline import ingest, landing_path
    from speedprofile.spark import exists, get_session

    args = parse_args(argv)
    paths = list(args.input)
    if args.date:
        try:
            day = date.fromisoformat(args.date)
        except ValueError as exc:
            raise UserError(f"bad --date {args.date!r}: {exc}") from exc
        paths.append(landing_path(args.warehouse, str(day)))
    spark = get_session("ingest_probes")
    if args.date and not exists(spark, paths[-1]):
        raise UserError(f"no landing folder {paths[-1]} (no raw files delivered for {args.date})")
    result = ingest(spark, args.warehouse, paths, args.format, limits=limits_from(args), now=clock_from(args),
                    future_skew_s=args.future_skew_s)
    for line in result.summary_lines():
        print(line)
    return 0


if __name__ == "__main__":
    from speedprofile.jobargs import run_app

    run_app(main)
