"""Ingest throughput: rows/s of `speedprofile ingest` on a generated CSV (default 1.2 M fixes, Porto area).

Prints the figures and writes benchmarks/results/ingest_throughput.json. Baseline in the same run: the pure
pandas kernel (parse + validate + per-trace cleaning and border cutting) in one process on a sample, so the
ratio shows what the Spark job adds or saves on this machine.

    .venv/bin/python benchmarks/ingest_throughput.py [--rows N] [--master local[2]]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "work" / "ingest_throughput"
RESULTS = REPO / "benchmarks" / "results" / "ingest_throughput.json"
FIXES_PER_TRACE = 600  # 50 minutes at 5 s
H3_RES = 7


def generate_csv(path: Path, rows: int, seed: int = 7) -> int:
    """Random-walk traces around Porto, 5 s sampling, ~40 km/h; 0.5 % of rows damaged (each reject class)."""
    rng = np.random.default_rng(seed)
    n_traces = max(1, rows // FIXES_PER_TRACE)
    n = n_traces * FIXES_PER_TRACE
    trace = np.repeat(np.arange(n_traces), FIXES_PER_TRACE)
    step = np.tile(np.arange(FIXES_PER_TRACE), n_traces)
    start_t = 1709251200 + rng.integers(0, 7 * 86400, n_traces)
    t = start_t[trace] + 5 * step
    heading = np.cumsum(rng.normal(0, 0.2, n)).reshape(n_traces, FIXES_PER_TRACE)
    dist = 55.0  # metres per 5 s
    dlat = (dist * np.cos(heading) / 111_320).ravel()
    dlon = (dist * np.sin(heading) / (111_320 * np.cos(np.radians(41.15)))).ravel()
    lat = (41.10 + rng.uniform(0, 0.12, n_traces))[trace] + np.cumsum(dlat.reshape(n_traces, -1), axis=1).ravel()
    lon = (-8.68 + rng.uniform(0, 0.14, n_traces))[trace] + np.cumsum(dlon.reshape(n_traces, -1), axis=1).ravel()
    df = pd.DataFrame({
        "trace_id": [f"veh{i:05d}" for i in trace],
        "timestamp": t.astype("int64").astype(str),
        "lon": np.round(lon, 6).astype(str),
        "lat": np.round(lat, 6).astype(str),
        "speed_kph": np.round(rng.normal(40, 5, n), 1).astype(str),
    })
    iso = rng.random(n) < 0.3  # a third of the times as ISO-8601 with offset
    df.loc[iso, "timestamp"] = pd.to_datetime(t[iso], unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    bad = rng.random(n) < 0.005
    df.loc[bad & (rng.random(n) < 0.5), "lat"] = "NaN"
    df.loc[bad & (rng.random(n) < 0.3), "timestamp"] = "not-a-time"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return n


def kernel_baseline(path: Path, sample_rows: int) -> float:
    """Rows/s of the pandas kernel alone (one process, no Spark) on the first sample_rows rows."""
    from speedprofile.ingest import kernel

    lines = path.read_text().splitlines()[: sample_rows + 1]
    t0 = time.perf_counter()
    rec = kernel.parse_csv_lines(lines[1:], lines[0].split(","), str(path), list(range(2, len(lines) + 1)))
    parsed = kernel.validate_records(rec)
    good = parsed[parsed["reason"].isna()]
    for _, g in good.groupby("trace_id"):
        kernel.process_trace(g, H3_RES)
    return (len(lines) - 1) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_200_000)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--baseline-rows", type=int, default=120_000)
    args = p.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    sys.path.insert(0, str(REPO))

    shutil.rmtree(WORK, ignore_errors=True)
    csv = WORK / "input" / "probes.csv"
    t0 = time.perf_counter()
    rows = generate_csv(csv, args.rows)
    gen_s = time.perf_counter() - t0
    warehouse = WORK / "warehouse"
    (warehouse / "road_segments").mkdir(parents=True)
    (warehouse / "road_segments" / "_partitions.json").write_text(json.dumps({"h3_res": H3_RES, "partitions": []}))

    from pyspark.sql import SparkSession

    from speedprofile.ingest.pipeline import ingest

    spark = (
        SparkSession.builder.master(args.master).appName("bench-ingest")
        .config("spark.ui.enabled", "false").config("spark.driver.memory", "2g")
        .config("spark.sql.session.timeZone", "UTC").getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    result = ingest(spark, str(warehouse), [str(csv)])
    again = ingest(spark, str(warehouse), [str(csv)])  # re-ingest: same rows replaced, measures the warm path
    spark.stop()
    base = kernel_baseline(csv, args.baseline_rows)

    out = {
        "rows": rows,
        "csv_bytes": csv.stat().st_size,
        "master": args.master,
        "cores": os.cpu_count(),
        "generate_seconds": round(gen_s, 2),
        "ingest_seconds": round(result.seconds, 2),
        "rows_per_second": round(result.rows_per_second),
        "reingest_seconds": round(again.seconds, 2),
        "reingest_rows_per_second": round(again.rows_per_second),
        "rows_kept": result.rows_kept,
        "rows_rejected": result.rows_rejected,
        "context_rows": result.context_rows,
        "rejected": {k: v for k, v in result.rejected.items() if v},
        "kernel_baseline_rows_per_second": round(base),
        "spark_vs_kernel_ratio": round(result.rows_per_second / base, 2),
    }
    assert result.rows_in == rows == result.rows_kept + result.rows_rejected
    for line in result.summary_lines():
        print(line)
    print(json.dumps(out, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
