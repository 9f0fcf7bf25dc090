"""Salting benchmark: histogram aggregation on a deliberately skewed input (one segment holds >= 30 % of the rows,
in a handful of buckets), with and without two-phase salting, in the same run.

Reports, per variant, wall time and the largest-task / median-task ratio of the shuffle stages (task run time and
shuffle records read, from Spark's task metrics via the status REST API), and checks that both give equal results.
The plan is the `build_histograms` one (rows shuffled by segment x bucket, every row of a key handed to one Arrow
kernel call): unsalted, the hot key is one task's work; salted, it is spread over n_salts tasks by
pmod(xxhash64(trace_id), n_salts) and the salted partials are merged in a second phase.
Run: .venv/bin/python benchmarks/salting.py [--rows 1000000]  -> benchmarks/results/salting.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

RESULTS = Path(__file__).resolve().parent / "results"


def make_input(spark, path: str, rows: int, hot_share: float, segments: int, buckets: int) -> None:
    """Bucketed traversals: one segment with hot_share of the rows in 6 buckets, the rest spread uniformly."""
    from pyspark.sql import functions as F

    r = F.rand(11)
    hot = F.rand(12) < hot_share
    df = spark.range(rows).select(
        F.concat(F.lit("t"), (F.col("id") / 3).cast("long").cast("string")).alias("trace_id"),
        F.lit(0).alias("piece"),
        F.when(hot, F.lit(1)).otherwise((F.rand(13) * segments).cast("long") + 2).alias("segment_id"),
        F.when(hot, (F.rand(14) * 6).cast("short") + 600)
        .otherwise((F.rand(15) * buckets).cast("short")).alias("tow_bucket"),
        (5 + r * 100).alias("speed_kph"),
        F.lit("2026-03-31").cast("date").alias("dt"),
        F.lit("p").alias("partition"),
    ).withColumn("traversed_m", F.lit(100.0)).withColumn("duration_s", F.lit(360.0) / F.col("speed_kph"))
    df.write.mode("overwrite").parquet(path)


def stage_metrics(spark, job_group: str) -> dict:
    """Largest/median task of the shuffle-reading stages of a job group (run time and records read)."""
    sc = spark.sparkContext
    ui = sc.uiWebUrl
    app = sc.applicationId
    stage_ids = [s for j in sc.statusTracker().getJobIdsForGroup(job_group)
                 for s in sc.statusTracker().getJobInfo(j).stageIds]
    worst = None
    for sid in stage_ids:
        try:
            with urllib.request.urlopen(f"{ui}/api/v1/applications/{app}/stages/{sid}/0/taskList?length=100000") as fh:
                tasks = json.load(fh)
        except Exception:
            continue
        recs = [t["taskMetrics"]["shuffleReadMetrics"]["recordsRead"] for t in tasks if "taskMetrics" in t]
        times = [t["taskMetrics"]["executorRunTime"] for t in tasks if "taskMetrics" in t]
        if not recs or sum(recs) == 0 or len(recs) < 2:
            continue
        m = {"stage": sid, "tasks": len(recs),
             "records_max": max(recs), "records_median": statistics.median(recs),
             "records_ratio": max(recs) / max(statistics.median(recs), 1),
             "time_ms_max": max(times), "time_ms_median": statistics.median(times),
             "time_ratio": max(times) / max(statistics.median(times), 1)}
        if worst is None or m["time_ms_max"] > worst["time_ms_max"]:
            worst = m
    return worst or {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--hot-share", type=float, default=0.35)
    ap.add_argument("--warmups", type=int, choices=(0, 1), default=1, help="run each variant once before measuring")
    args = ap.parse_args()

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from speedprofile.aggregate import transforms as T

    spark = (SparkSession.builder.master("local[2]").appName("bench-salting")
             .config("spark.ui.enabled", "true").config("spark.ui.port", "4099")
             .config("spark.sql.shuffle.partitions", "16")
             .config("spark.sql.adaptive.coalescePartitions.enabled", "false")
             .config("spark.sql.session.timeZone", "UTC").config("spark.driver.memory", "3g")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    tmp = tempfile.mkdtemp(prefix="bench-salting-")
    path = f"{tmp}/bucketed"
    make_input(spark, path, args.rows, args.hot_share, 20_000, 2016)
    df = spark.read.parquet(path)
    total = df.count()
    top = df.groupBy("segment_id").count().orderBy(F.desc("count")).first()
    report = {"rows": total, "hot_segment_share": top["count"] / total, "shuffle_partitions": 16, "plans": {}}
    print(f"input: {total} rows, hottest segment holds {report['hot_segment_share']:.1%}")

    plans = {"build_histograms": (lambda d, h: T.histogram_partials(d, h, keys=("segment_id", "tow_bucket")), df)}
    for plan, (fn, data) in plans.items():
        try:
            data.count()
            results: dict = {}
            outputs = {}
            for variant in ("unsalted", "salted", "unsalted", "salted")[2 - args.warmups * 2:]:
                group = f"{plan}-{variant}-{time.monotonic_ns()}"
                spark.sparkContext.setJobGroup(group, group)
                t0 = time.perf_counter()
                hot = None
                if variant == "salted":
                    hot = T.hot_keys(data, 0.01, None, 16, keys=("segment_id", "tow_bucket"), total_rows=data.count())
                    n_hot = hot.count()
                out = fn(data, hot)
                rows = out.agg(F.sum("n_obs"), F.sum("n_traces"), F.count(F.lit(1))).first()
                wall = time.perf_counter() - t0
                results[variant] = {"wall_s": round(wall, 3), **stage_metrics(spark, group)}
                if variant == "salted":
                    results[variant]["hot_keys"] = n_hot
                outputs[variant] = tuple(rows)
            assert outputs["salted"] == outputs["unsalted"], outputs
            results["salted_equals_unsalted"] = True
            results["wall_speedup"] = round(results["unsalted"]["wall_s"] / results["salted"]["wall_s"], 3)
            report["plans"][plan] = results
            for v in ("unsalted", "salted"):
                r = results[v]
                print(f"{plan:15s} {v:9s} wall {r['wall_s']:7.2f} s  largest/median task time "
                      f"{r.get('time_ratio', float('nan')):6.2f} ({r.get('time_ms_max')} / {r.get('time_ms_median')} ms)"
                      f"  records {r.get('records_ratio', float('nan')):8.2f}")
        except Exception as exc:  # keep the figures of the plans that completed
            report["plans"][plan] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            print(f"{plan}: failed: {report['plans'][plan]['error']}")

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "salting.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    spark.stop()


if __name__ == "__main__":
    main()
