"""Ingest throughput: rows/s of `speedprofile ingest` on generated CSVs (default 1 M and 5 M fixes, Porto area).

Prints the figures and writes benchmarks/results/ingest_throughput.json. For every size, in the same run and the
same way (fresh process, local Spark, a warm-up job first):
- before: the ingest code of commit BEFORE_COMMIT (extracted with `git archive`), up to `--before-max-rows`;
- after: the current code on the same CSV, then a re-ingest of the same rows gzipped (another file: every row is
  checked against probes and rejected as already_ingested: the content-level idempotency path);
ratios are quoted per wall second and per CPU second of the whole process tree (driver + JVM + Python workers),
which stays comparable on a shared machine. Also: the Python kernel alone (one process, no Spark) on a sample.

    .venv/bin/python benchmarks/ingest_throughput.py [--rows 1000000,5000000] [--before-max-rows N] [--master local[2]]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
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
BEFORE_COMMIT = "f361ed5"  # ingest before per-file scanning, content-level idempotency and the single-shuffle write
# The warehouse's partitions: every res-7 cell of a box around the generated traces (random walks from Porto).
AREA = ((-9.2, 40.7), (-8.0, 41.6))

# Runs one ingest (or two: --again) in a fresh process with the code under sys.argv[1]; prints one JSON line.
_RUNNER = r"""
import json, os, sys, time
code, master, warehouse, again, csv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
sys.path.insert(0, code)
from pyspark.sql import SparkSession
from speedprofile.ingest.pipeline import ingest

def tree_cpu_s(root):
    tick = os.sysconf("SC_CLK_TCK"); kids = {}; cpu = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            kids.setdefault(int(f[1]), []).append(int(d)); cpu[int(d)] = sum(int(x) for x in f[11:15]) / tick
    total, todo = 0.0, [root]
    while todo:
        p = todo.pop(); total += cpu.get(p, 0.0); todo += kids.get(p, [])
    return total

spark = (SparkSession.builder.master(master).appName("bench-ingest").config("spark.ui.enabled", "false")
         .config("spark.driver.memory", "2g").config("spark.sql.session.timeZone", "UTC").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
spark.range(10).selectExpr("id % 2 AS k").groupBy("k").count().collect()  # JVM + Python workers up, untimed
runs = []
for paths in [csv] + ([again] if again != "-" else []):
    c0, w0 = tree_cpu_s(os.getpid()), time.perf_counter()
    r = ingest(spark, warehouse, paths if isinstance(paths, list) else [paths])
    wall, cpu = time.perf_counter() - w0, tree_cpu_s(os.getpid()) - c0
    runs.append({"rows_in": r.rows_in, "rows_kept": r.rows_kept, "rows_rejected": r.rows_rejected,
                 "context_rows": r.context_rows, "rejected": {k: v for k, v in r.rejected.items() if v},
                 "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                 "rows_per_second": round(r.rows_in / wall), "rows_per_cpu_second": round(r.rows_in / cpu)})
print("RESULT " + json.dumps(runs))
"""


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
    """Rows/s of the Python kernel alone (one process, no Spark): pandas parse + validate, sort, trace step."""
    import pyarrow as pa

    from speedprofile.ingest import kernel

    lines = path.read_text().splitlines()[: sample_rows + 1]
    t0 = time.perf_counter()
    rec = kernel.parse_csv_lines(lines[1:], lines[0].split(","), str(path), list(range(2, len(lines) + 1)))
    parsed = kernel.validate_records(rec)
    parsed = parsed.sort_values(["trace_id", "timestamp_utc", "source_file", "source_row"], na_position="last")
    table = pa.Table.from_pandas(parsed.reset_index(drop=True), schema=kernel.parsed_arrow_schema(),
                                 preserve_index=False)
    kernel.trace_rows_arrow(table, H3_RES)
    return (len(lines) - 1) / (time.perf_counter() - t0)


def area_cells() -> list[str]:
    import h3

    (lon0, lat0), (lon1, lat1) = AREA
    return sorted(h3.polygon_to_cells(h3.LatLngPoly([(lat0, lon0), (lat0, lon1), (lat1, lon1), (lat1, lon0)]), H3_RES))


def run_ingest(code: Path, master: str, warehouse: Path, csv: Path, again: Path | None = None) -> list[dict]:
    """Ingest csv (then `again`) into a fresh warehouse with the code under `code`, in a fresh Python + Spark
    process."""
    shutil.rmtree(warehouse, ignore_errors=True)
    (warehouse / "road_segments").mkdir(parents=True)
    (warehouse / "road_segments" / "_partitions.json").write_text(json.dumps(
        {"h3_res": H3_RES, "partitions": [{"cell": c} for c in area_cells()]}))
    env = dict(os.environ, PYTHONPATH=str(code), SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(code), master, str(warehouse), str(again) if again else "-", str(csv)],
        capture_output=True, text=True, env=env, cwd=str(code),
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"ingest run with {code} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(line[len("RESULT "):])


def before_code(commit: str) -> Path:
    """The repository's speedprofile/ and schemas/ packages at `commit`, extracted under WORK/before."""
    dest = WORK / "before"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "speedprofile", "schemas"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def gzip_copy(src: Path, dest: Path) -> Path:
    import gzip

    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, gzip.open(dest, "wb", compresslevel=1) as fout:
        shutil.copyfileobj(fin, fout, 4 << 20)
    return dest


def _figures(run: dict) -> dict:
    return {k: run[k] for k in ("seconds", "cpu_seconds", "rows_per_second", "rows_per_cpu_second")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1000000,5000000", help="comma-separated sizes")
    p.add_argument("--before-max-rows", type=int, default=5_000_000,
                   help="run the code of BEFORE_COMMIT only on sizes up to this (it is slow)")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--baseline-rows", type=int, default=120_000)
    p.add_argument("--no-again", action="store_true", help="skip the gzipped re-delivery run")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))

    shutil.rmtree(WORK, ignore_errors=True)
    old_code = before_code(BEFORE_COMMIT)
    sizes = []
    for n in [int(x) for x in args.rows.split(",")]:
        csv = WORK / f"input_{n}" / "probes.csv"
        t0 = time.perf_counter()
        rows = generate_csv(csv, n)
        gen_s = time.perf_counter() - t0
        entry: dict = {"rows": rows, "csv_bytes": csv.stat().st_size, "generate_seconds": round(gen_s, 2),
                       "load_average_1m_before": round(os.getloadavg()[0], 1)}
        again = None if args.no_again else gzip_copy(csv, WORK / f"again_{n}" / "probes.csv.gz")
        runs = run_ingest(REPO, args.master, WORK / "warehouse", csv, again)
        after = runs[0]
        assert after["rows_in"] == rows == after["rows_kept"] + after["rows_rejected"]
        entry["after"] = after
        if again is not None:
            entry["after_gzipped_redelivery"] = runs[1]
            assert runs[1]["rows_in"] == rows and runs[1]["rows_kept"] == 0
        if rows <= args.before_max_rows:
            before = run_ingest(old_code, args.master, WORK / "wh_before", csv)[0]
            assert before["rows_in"] == rows
            entry["before"] = before
            entry["speedup_wall"] = round(before["seconds"] / after["seconds"], 2)
            entry["speedup_cpu"] = round(before["cpu_seconds"] / after["cpu_seconds"], 2)
        entry["load_average_1m_after"] = round(os.getloadavg()[0], 1)
        sizes.append(entry)
        line = (f"{rows:,} rows: now {after['seconds']} s, {after['rows_per_second']:,} rows/s, "
                f"{after['rows_per_cpu_second']:,} rows per CPU second")
        if "before" in entry:
            b = entry["before"]
            line += (f"; before ({BEFORE_COMMIT}) {b['seconds']} s, {b['rows_per_second']:,} rows/s, "
                     f"{b['rows_per_cpu_second']:,} rows per CPU second (x{entry['speedup_wall']} wall, "
                     f"x{entry['speedup_cpu']} CPU)")
        if again is not None:
            line += f"; gzipped re-delivery {runs[1]['rows_per_second']:,} rows/s"
        print(line, flush=True)
        shutil.rmtree(WORK / f"again_{n}", ignore_errors=True)
        shutil.rmtree(WORK / "warehouse", ignore_errors=True)
        shutil.rmtree(WORK / "wh_before", ignore_errors=True)
    first = int(args.rows.split(",")[0])
    base = kernel_baseline(WORK / f"input_{first}" / "probes.csv", args.baseline_rows)
    out = {
        "master": args.master,
        "cores": os.cpu_count(),
        "before_commit": BEFORE_COMMIT,
        "sizes": sizes,
        "kernel_baseline_rows_per_second": round(base),
    }
    print(json.dumps(out, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
