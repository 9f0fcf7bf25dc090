"""estimate_speeds: speed_histograms (window 'w<N>-<end>') + road_segments -> speed_estimates, all 2016 buckets of
every segment with any observation in the window, stored as run-length rows (one per run of buckets with one
estimate); buckets with fewer than --min-traces distinct traces fall back along neighbour_buckets -> hour_daytype ->
segment_week -> road_class_prior (see docs/estimation.md).

The window ends at --to-date when given, else at --date. The partition's estimates are replaced.
Run: spark-submit spark_apps/estimate_speeds.py --warehouse W --date D --partition A,B [--window-weeks 4]
[--min-traces 3]
"""

from __future__ import annotations

import argparse

from schemas.speed_estimates import MIN_TRACES, SOURCES
from speedprofile.errors import UserError
from speedprofile.jobargs import parse_job_args, run_app

STAGE = "estimate_speeds"


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window-weeks", type=int, default=4, help="histogram window length in weeks (default 4)")
    p.add_argument("--min-traces", type=int, default=MIN_TRACES,
                   help=f"distinct traces a bucket needs to be published from its own data (default {MIN_TRACES})")


def main(argv: list[str] | None = None) -> int:
    from pyspark.sql import functions as F

    from speedprofile.aggregate import transforms as T
    from speedprofile.spark import get_session, read_table, write_metrics, write_table

    args = parse_job_args(argv, __doc__.splitlines()[0], add_flags)
    if args.min_traces < 1:
        raise UserError("--min-traces must be >= 1")
    if args.window_weeks < 1:
        raise UserError("--window-weeks must be >= 1")
    spark = get_session(STAGE)
    end = args.dates[-1]
    window = f"w{args.window_weeks}-{end}"
    hist = read_table(spark, args.warehouse, "speed_histograms", partitions=args.partitions,
                      extra_keys={"window": [window]})
    segments = read_table(spark, args.warehouse, "road_segments", partitions=args.partitions)
    priors = T.class_priors(hist, segments, args.min_traces)
    est = T.estimate(hist, segments, priors, window, args.min_traces)
    write_table(est, args.warehouse, "speed_estimates", replace=[{"partition": p} for p in args.partitions])

    written = read_table(spark, args.warehouse, "speed_estimates", partitions=args.partitions)
    covered = T.run_end() - F.col("tow_bucket").cast("int")
    by_source = {(r["partition"], r["source"]): (r["rows"], r["buckets"]) for r in written.groupBy(
        "partition", "source").agg(F.count(F.lit(1)).alias("rows"), F.sum(covered).alias("buckets")).collect()}
    hist_stats = {r["partition"]: (r["segments"], r["rows"], r["n_obs"] or 0) for r in hist.groupBy("partition").agg(
        F.countDistinct("segment_id").alias("segments"), F.count(F.lit(1)).alias("rows"),
        F.sum("n_obs").alias("n_obs")).collect()}
    for p in args.partitions:
        segs, rows, n_obs = hist_stats.get(p, (0, 0, 0))
        write_metrics(spark, args.warehouse, STAGE, end, p, {
            "window": window, "histogram_rows_in": rows, "n_obs_in": n_obs, "segments": segs,
            "rows_out": sum(by_source.get((p, s), (0, 0))[0] for s in SOURCES),
            "buckets_out": sum(by_source.get((p, s), (0, 0))[1] for s in SOURCES), "expected_buckets_out": segs * 2016,
            "by_source": {s: by_source.get((p, s), (0, 0))[1] for s in SOURCES}, "min_traces": args.min_traces,
        })
    return 0


if __name__ == "__main__":
    run_app(main)
