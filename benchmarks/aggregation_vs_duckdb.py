"""Aggregation vs DuckDB: the same bucketing + daily histograms on the same Parquet, by our Spark apps
(bucket_traversals + build_histograms, in-process, local[2]) and by DuckDB SQL (2 threads), in the same run.

Input: a synthetic day of segment_traversals (default 3 million rows over 20 000 segments, 3 time zones) and its
road_segments, written once as warehouse Parquet. Both engines read it, bucket by the midpoint's local time,
drop the same rejects, build per segment x bucket histograms and write Parquet. Reports wall times and the ratio
Spark / DuckDB (target <= 2x, goal 1.5x) for a cold run (first run in the JVM) and a warm run, and checks that the
histograms agree. Run: .venv/bin/python benchmarks/aggregation_vs_duckdb.py [--rows N]
-> benchmarks/results/aggregation_vs_duckdb.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

RESULTS = Path(__file__).resolve().parent / "results"
PART = "8739220f0ffffff"
DAY = "2026-03-29"  # a DST day in Europe
ZONES = ("Europe/Lisbon", "America/New_York", "Asia/Kolkata")


def make_input(spark, warehouse: str, rows: int, segments: int) -> None:
    from pyspark.sql import functions as F

    from schemas import ROAD_SEGMENTS, SEGMENT_TRAVERSALS
    from speedprofile.spark import write_table

    seg = spark.range(segments).select(
        F.col("id").alias("segment_id"), F.col("id").alias("osm_way_id"), (F.col("id") * 2).alias("from_node_id"),
        (F.col("id") * 2 + 1).alias("to_node_id"), F.lit(None).cast("long").alias("reverse_segment_id"),
        (50 + F.rand(1) * 300).alias("length_m"), F.lit("residential").alias("road_class"),
        F.lit(50.0).alias("maxspeed_kph"), F.lit(None).cast("string").alias("name"), F.lit(True).alias("is_oneway"),
        F.array(F.lit(-8.6), F.lit(-8.61)).alias("geom_lon_deg"), F.array(F.lit(41.1), F.lit(41.11)).alias("geom_lat_deg"),
        F.element_at(F.array(*[F.lit(z) for z in ZONES]), (F.col("id") % len(ZONES) + 1).cast("int")).alias("timezone"),
        F.lit(PART).alias("partition"))
    write_table(seg.select(*[F.col(c).cast(ROAD_SEGMENTS.spark_schema()[c].dataType) for c in ROAD_SEGMENTS.names]),
                warehouse, "road_segments", replace=[{"partition": PART}])
    start = F.lit(f"{DAY} 00:00:00").cast("timestamp")
    enter = (F.unix_micros(start) + (F.rand(2) * 86_000e6).cast("long"))
    dur = 5 + F.rand(3) * 120
    tr = spark.range(rows).select(
        F.concat(F.lit("t"), (F.col("id") / 20).cast("long").cast("string")).alias("trace_id"), F.lit(0).alias("piece"),
        (F.col("id") % 20).cast("int").alias("seq"), (F.rand(4) * segments).cast("long").alias("segment_id"),
        F.timestamp_micros(enter).alias("enter_time_utc"),
        F.timestamp_micros(enter + (dur * 1e6).cast("long")).alias("exit_time_utc"),
        dur.alias("duration_s"), F.lit(150.0).alias("traversed_m"),
        (F.lit(150.0) / dur * 3.6).alias("speed_kph"), (F.rand(5) > 0.05).alias("is_complete"),
        F.lit(3).alias("n_fixes"), F.lit("hmm").alias("match_source"), F.lit(DAY).cast("date").alias("dt"),
        F.lit(PART).alias("partition"))
    write_table(tr.select(*[F.col(c).cast(SEGMENT_TRAVERSALS.spark_schema()[c].dataType)
                            for c in SEGMENT_TRAVERSALS.names]),
                warehouse, "segment_traversals", replace=[{"dt": DAY, "partition": PART}])


DUCK_SQL = """
CREATE OR REPLACE TEMP VIEW bucketed AS
WITH t AS (
  SELECT tr.*, s.timezone,
         to_timestamp((epoch_us(tr.enter_time_utc) + epoch_us(tr.exit_time_utc)) // 2 / 1e6) AS midpoint_time_utc
  FROM read_parquet('{w}/segment_traversals/*/*/*.parquet', hive_partitioning = true) tr
  JOIN read_parquet('{w}/road_segments/*/*.parquet', hive_partitioning = true) s USING (segment_id)
  WHERE tr.is_complete AND tr.duration_s > 0 AND tr.exit_time_utc > tr.enter_time_utc
    AND tr.speed_kph BETWEEN {vmin} AND {vmax}
), l AS (SELECT *, (midpoint_time_utc AT TIME ZONE timezone) AS local_ts FROM t),
o AS (SELECT *, CAST(epoch(local_ts) - epoch(midpoint_time_utc) AS INTEGER) AS off FROM l)
SELECT trace_id, piece, segment_id, midpoint_time_utc,
       printf('%s%s%02d:%02d', strftime(local_ts, '%Y-%m-%dT%H:%M:%S'), CASE WHEN off < 0 THEN '-' ELSE '+' END,
              abs(off) // 3600, (abs(off) % 3600) // 60) AS local_time,
       timezone, CAST(dayofweek(local_ts) * 288 + hour(local_ts) * 12 + minute(local_ts) // 5 AS SMALLINT) AS tow_bucket,
       CASE dayofweek(local_ts) WHEN 0 THEN 'sunday' WHEN 6 THEN 'saturday' ELSE 'weekday' END AS day_type,
       duration_s, traversed_m, speed_kph, dt, partition
FROM o;
COPY bucketed TO '{out}/bucketed' (FORMAT parquet, PARTITION_BY (dt, partition), OVERWRITE_OR_IGNORE);
COPY (
  SELECT partition, segment_id, tow_bucket,
         [{bins}] AS bin_counts,
         count(*) AS n_obs, count(DISTINCT trace_id) AS n_traces, sum(speed_kph) AS sum_speed_kph,
         sum(duration_s) AS sum_duration_s, sum(traversed_m) AS sum_traversed_m
  FROM read_parquet('{out}/bucketed/*/*/*.parquet', hive_partitioning = true)
  GROUP BY ALL
) TO '{out}/hist.parquet' (FORMAT parquet);
"""


def duck_sql(warehouse: str, out: str) -> list[str]:
    from schemas.segment_traversals import MAX_PLAUSIBLE_KPH, MIN_PLAUSIBLE_KPH
    from schemas.speed_histograms import BIN_WIDTH_KPH, N_SPEED_BINS

    bins = ", ".join(f"count_if(LEAST(GREATEST(floor(speed_kph / {BIN_WIDTH_KPH}), 0), {N_SPEED_BINS - 1}) = {i})"
                     for i in range(N_SPEED_BINS))
    sql = DUCK_SQL.format(w=warehouse, out=out, vmin=MIN_PLAUSIBLE_KPH, vmax=MAX_PLAUSIBLE_KPH, bins=bins)
    return [s for s in sql.split(";") if s.strip()]


def run_duckdb(warehouse: str, out: str) -> float:
    import duckdb

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    con = duckdb.connect()
    con.execute("SET threads = 2")
    t0 = time.perf_counter()
    for stmt in duck_sql(warehouse, out):
        con.execute(stmt)
    return time.perf_counter() - t0


def run_spark(warehouse: str) -> dict:
    from spark_apps import bucket_traversals, build_histograms

    common = ["--warehouse", warehouse, "--date", DAY, "--partition", PART]
    t0 = time.perf_counter()
    bucket_traversals.main(common)
    t1 = time.perf_counter()
    build_histograms.main([*common, "--window-weeks", "1"])
    t2 = time.perf_counter()
    return {"bucket_s": round(t1 - t0, 3), "histograms_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3_000_000)
    ap.add_argument("--segments", type=int, default=20_000)
    args = ap.parse_args()

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    t_session = time.perf_counter()
    spark = (SparkSession.builder.master("local[2]").appName("bench-aggregation")
             .config("spark.ui.enabled", "false").config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.shuffle.partitions", "8").config("spark.driver.memory", "3g")
             .config("spark.sql.sources.partitionOverwriteMode", "dynamic").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    session_s = time.perf_counter() - t_session
    tmp = tempfile.mkdtemp(prefix="bench-agg-")
    wh = f"{tmp}/warehouse"
    make_input(spark, wh, args.rows, args.segments)
    print(f"input: {args.rows} traversals, {args.segments} segments, 1 day, warehouse {wh}")

    spark_cold = run_spark(wh)
    duck_cold = run_duckdb(wh, f"{tmp}/duck")
    spark_warm = run_spark(wh)
    duck_warm = run_duckdb(wh, f"{tmp}/duck")

    from speedprofile.spark import read_table

    ours = read_table(spark, wh, "speed_histograms", extra_keys={"window": [f"d{DAY}"]})
    theirs = spark.read.parquet(f"{tmp}/duck/hist.parquet")
    a = ours.agg(F.count(F.lit(1)), F.sum("n_obs"), F.sum("n_traces"), F.round(F.sum("sum_speed_kph"), 3)).first()
    b = theirs.agg(F.count(F.lit(1)), F.sum("n_obs"), F.sum("n_traces"), F.round(F.sum("sum_speed_kph"), 3)).first()
    diff = ours.select("segment_id", "tow_bucket", "bin_counts", "n_traces").exceptAll(
        theirs.select("segment_id", "tow_bucket", "bin_counts", "n_traces")).count()
    report = {
        "rows": args.rows, "segments": args.segments, "cores": os.cpu_count(),
        "spark_cold": spark_cold, "spark_warm": spark_warm,
        "duckdb_cold_s": round(duck_cold, 3), "duckdb_warm_s": round(duck_warm, 3),
        "ratio_cold": round(spark_cold["total_s"] / duck_cold, 3),
        "ratio_warm": round(spark_warm["total_s"] / duck_warm, 3),
        "spark_session_start_s": round(session_s, 3),
        "ratio_cold_incl_session_start": round((spark_cold["total_s"] + session_s) / duck_cold, 3),
        "note": "ratio_cold/ratio_warm exclude the SparkSession start-up (spark_session_start_s); "
                "warm = second run in the same JVM",
        "histogram_rows": a[0], "totals_equal": tuple(a) == tuple(b), "rows_differing": diff,
    }
    print(f"spark  cold {spark_cold['total_s']:.2f} s (bucket {spark_cold['bucket_s']:.2f} + histograms "
          f"{spark_cold['histograms_s']:.2f}), warm {spark_warm['total_s']:.2f} s")
    print(f"duckdb cold {duck_cold:.2f} s, warm {duck_warm:.2f} s")
    print(f"ratio spark/duckdb: cold {report['ratio_cold']:.2f}x, warm {report['ratio_warm']:.2f}x "
          f"(target <= 2x); histograms agree: {report['totals_equal'] and diff == 0}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "aggregation_vs_duckdb.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    spark.stop()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
