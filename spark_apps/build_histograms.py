"""build_histograms: bucketed_traversals -> speed_histograms. For every date D..D2 the daily partial
(window='d<date>') per segment x tow_bucket, then the rolling window ending at D2 (window='w<N>-<D2>') as the
monoid merge of the N*7 daily partials D2-7N+1..D2 already in the table (old traversals are never re-read).

With --salt-buckets auto|N, hot keys (>= --hot-key-share of the input rows, found by a count pass) are aggregated
in two phases with a salt. Default off: a segment x bucket key is small next to a task's share of a partition-day,
and the detection pass plus the second phase cost more than the skew they remove (benchmarks/salting.py).
Run: spark-submit spark_apps/build_histograms.py --warehouse W --date D [--to-date D2] --partition A,B
[--window-weeks 4] [--salt-buckets auto|off|N] [--hot-key-share 0.01]
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from speedprofile.errors import UserError
from speedprofile.jobargs import parse_job_args, run_app

STAGE = "build_histograms"


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window-weeks", type=int, default=4, help="rolling window length in weeks (default 4)")
    p.add_argument("--salt-buckets", default="off",
                   help="salts per hot key: off, auto (sized from its row count) or a number (default off: on "
                        "measured skew the extra passes cost more than they save, see docs/estimation.md)")
    p.add_argument("--hot-key-share", type=float, default=0.01,
                   help="a segment x bucket key holding at least this share of the day's rows is hot (default 0.01)")


def window_name(weeks: int, end) -> str:
    return f"w{weeks}-{end}"


def daily_name(d) -> str:
    return f"d{d}"


def parse_salt(value: str) -> int | bool | None:
    """None = auto, False = off, int = fixed number of salts."""
    v = str(value).strip().lower()
    if v == "auto":
        return None
    if v in ("off", "0", "1", "none"):
        return False
    try:
        n = int(v)
    except ValueError as exc:
        raise UserError(f"--salt-buckets must be auto, off or an integer, got {value!r}") from exc
    if n < 0:
        raise UserError("--salt-buckets must be >= 0")
    return n


def main(argv: list[str] | None = None) -> int:
    from pyspark.sql import functions as F

    from speedprofile.aggregate import transforms as T
    from speedprofile.spark import counted, get_session, read_table, write_metrics, write_table

    args = parse_job_args(argv, __doc__.splitlines()[0], add_flags)
    if args.window_weeks < 1:
        raise UserError("--window-weeks must be >= 1")
    if not 0 < args.hot_key_share <= 1:
        raise UserError("--hot-key-share must be in (0, 1]")
    salt = parse_salt(args.salt_buckets)
    spark = get_session(STAGE)
    wh = args.warehouse

    bucketed = read_table(spark, wh, "bucketed_traversals", dates=args.dates, partitions=args.partitions)
    valid = (F.col("segment_id").isNotNull() & F.col("trace_id").isNotNull() & F.col("tow_bucket").between(0, 2015)
             & F.col("speed_kph").isNotNull() & ~F.isnan("speed_kph") & F.col("duration_s").isNotNull()
             & F.col("traversed_m").isNotNull())
    # rows per (dt, partition, valid) are counted while the daily partials are written (one pass over the input)
    observed, get_counts = counted(bucketed.withColumn("_ok", F.coalesce(valid, F.lit(False))),
                                   {"dt": args.dates, "partition": args.partitions, "_ok": [True, False]}, STAGE)
    good = observed.where(F.col("_ok")).drop("_ok")

    hot = None
    n_hot = 0
    if salt is not False:
        shuffle = int(spark.conf.get("spark.sql.shuffle.partitions"))
        hot_df = T.hot_keys(bucketed.where(valid), args.hot_key_share, salt, shuffle, total_rows=bucketed.count())
        n_hot = hot_df.count()  # a local frame collected on the driver
        hot = hot_df if n_hot else None
    partials = (T.histogram_partials(good, hot)
                .withColumn("window", F.concat(F.lit("d"), F.col("dt").cast("string"))).drop("dt"))
    write_table(partials, wh, "speed_histograms",
                replace=[{"partition": p, "window": daily_name(d)} for d in args.dates for p in args.partitions])
    rows_in = {(str(d), p, ok): n for (d, p, ok), n in get_counts().items()}

    end = args.dates[-1]
    days = [end - timedelta(days=i) for i in range(args.window_weeks * 7)]
    dailies = read_table(spark, wh, "speed_histograms", partitions=args.partitions,
                         extra_keys={"window": [daily_name(d) for d in days]})
    wname = window_name(args.window_weeks, end)
    merged = T.merge_histograms(dailies).withColumn("window", F.lit(wname))
    write_table(merged, wh, "speed_histograms", replace=[{"partition": p, "window": wname} for p in args.partitions])

    out = read_table(spark, wh, "speed_histograms", partitions=args.partitions,
                     extra_keys={"window": [daily_name(d) for d in days] + [wname]})
    stats = {(r["partition"], r["window"]): (r["keys"], r["n_obs"] or 0)
             for r in out.groupBy("partition", "window").agg(F.count(F.lit(1)).alias("keys"),
                                                             F.sum("n_obs").alias("n_obs")).collect()}
    for d in args.dates:
        for p in args.partitions:
            ok, bad = rows_in.get((str(d), p, True), 0), rows_in.get((str(d), p, False), 0)
            keys, n_obs = stats.get((p, daily_name(d)), (0, 0))
            m = {"rows_in": ok + bad, "rejected": {"invalid_row": bad}, "n_obs_out": n_obs, "histogram_rows": keys,
                 "hot_keys": n_hot, "salt_buckets": str(args.salt_buckets)}
            if d == end:
                present = [x for x in days if (p, daily_name(x)) in stats]
                wkeys, wobs = stats.get((p, wname), (0, 0))
                m["window"] = {"name": wname, "daily_partials": len(present),
                               "daily_n_obs": sum(stats[(p, daily_name(x))][1] for x in present),
                               "n_obs": wobs, "histogram_rows": wkeys}
            write_metrics(spark, wh, STAGE, d, p, m)
    return 0


if __name__ == "__main__":
    run_app(main)
