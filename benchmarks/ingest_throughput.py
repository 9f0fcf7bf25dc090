"""Ingest throughput: rows/s of `speedprofile ingest` on a generated CSV (default 1.2 M fixes, Porto area).

Prints the figures and writes benchmarks/results/ingest_throughput.json. Baselines in the same run:
- before/after: the ingest code of commit BEFORE_COMMIT (extracted with `git archive`) and the current code
  ingest the same sample (the first `--before-rows` rows, whole traces) in the same way (fresh process,
  local Spark, warm-up job first); the ratio is quoted both per wall second and per CPU second of the whole
  process tree (driver + JVM + Python workers), which stays comparable on a shared machine;
- the current code on the full CSV, then a re-ingest of the same file (replaces the rows: the warm path);
- the Python kernel alone (one process, no Spark) on a sample, for what Spark adds or saves.

    .venv/bin/python benchmarks/ingest_throughput.py [--rows N] [--before-rows N] [--master local[2]]
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
BEFORE_COMMIT = "73fac52"  # ingest before the Spark SQL parsing / vectorised trace step

# Runs one ingest (or two: --again) in a fresh process with the code under sys.argv[1]; prints one JSON line.
_RUNNER = r"""
import json, os, sys, time
code, master, warehouse, again, csv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", sys.argv[5:]
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
for _ in range(2 if again else 1):
    c0, w0 = tree_cpu_s(os.getpid()), time.perf_counter()
    r = ingest(spark, warehouse, csv)
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


def head_csv(src: Path, dest: Path, rows: int) -> int:
    """The header and the first `rows` rows (rounded down to whole traces) of a generated CSV."""
    rows = max(FIXES_PER_TRACE, rows // FIXES_PER_TRACE * FIXES_PER_TRACE)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(src) as fin, open(dest, "w") as fout:
        for i, line in enumerate(fin):
            if i > rows:
                break
            fout.write(line)
    return min(rows, sum(1 for _ in open(dest)) - 1)


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


def run_ingest(code: Path, master: str, warehouse: Path, csv: Path, again: bool = False) -> list[dict]:
    """Ingest csv into a fresh warehouse with the code under `code`, in a fresh Python + Spark process."""
    shutil.rmtree(warehouse, ignore_errors=True)
    (warehouse / "road_segments").mkdir(parents=True)
    (warehouse / "road_segments" / "_partitions.json").write_text(json.dumps({"h3_res": H3_RES, "partitions": []}))
    env = dict(os.environ, PYTHONPATH=str(code), SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(code), master, str(warehouse), "1" if again else "0", str(csv)],
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_200_000)
    p.add_argument("--before-rows", type=int, default=100_000,
                   help="rows of the sample both code versions ingest (the old code is slow)")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--baseline-rows", type=int, default=120_000)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))

    shutil.rmtree(WORK, ignore_errors=True)
    csv = WORK / "input" / "probes.csv"
    t0 = time.perf_counter()
    rows = generate_csv(csv, args.rows)
    gen_s = time.perf_counter() - t0
    sample = WORK / "sample" / "probes.csv"
    sample_rows = head_csv(csv, sample, args.before_rows)

    old = run_ingest(before_code(BEFORE_COMMIT), args.master, WORK / "wh_before", sample)[0]
    new_sample = run_ingest(REPO, args.master, WORK / "wh_after_sample", sample)[0]
    first, again = run_ingest(REPO, args.master, WORK / "warehouse", csv, again=True)
    base = kernel_baseline(csv, args.baseline_rows)
    assert old["rows_in"] == new_sample["rows_in"] == sample_rows
    for k in ("rows_kept", "rows_rejected", "context_rows", "rejected"):
        assert old[k] == new_sample[k], (k, old[k], new_sample[k])  # same accounting before and after
    assert first["rows_in"] == rows == first["rows_kept"] + first["rows_rejected"]

    out = {
        "rows": rows,
        "csv_bytes": csv.stat().st_size,
        "master": args.master,
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 1),
        "generate_seconds": round(gen_s, 2),
        "ingest_seconds": first["seconds"],
        "rows_per_second": first["rows_per_second"],
        "cpu_seconds": first["cpu_seconds"],
        "rows_per_cpu_second": first["rows_per_cpu_second"],
        "reingest_seconds": again["seconds"],
        "reingest_rows_per_second": again["rows_per_second"],
        "rows_kept": first["rows_kept"],
        "rows_rejected": first["rows_rejected"],
        "context_rows": first["context_rows"],
        "rejected": first["rejected"],
        "kernel_baseline_rows_per_second": round(base),
        "spark_vs_kernel_ratio": round(first["rows_per_second"] / base, 2),
        "before_after": {
            "before_commit": BEFORE_COMMIT,
            "rows": sample_rows,
            "before": {k: old[k] for k in ("seconds", "cpu_seconds", "rows_per_second", "rows_per_cpu_second")},
            "after": {k: new_sample[k] for k in ("seconds", "cpu_seconds", "rows_per_second", "rows_per_cpu_second")},
            "speedup_wall": round(old["seconds"] / new_sample["seconds"], 2),
            "speedup_cpu": round(old["cpu_seconds"] / new_sample["cpu_seconds"], 2),
        },
    }
    print(f"ingested {rows} rows: {first['seconds']} s, {first['rows_per_second']:,} rows/s "
          f"({first['rows_per_cpu_second']:,} rows per CPU second); re-ingest {again['rows_per_second']:,} rows/s")
    ba = out["before_after"]
    print(f"same {sample_rows} rows, before ({BEFORE_COMMIT}) vs now: {old['rows_per_second']:,} -> "
          f"{new_sample['rows_per_second']:,} rows/s (x{ba['speedup_wall']} wall, x{ba['speedup_cpu']} CPU)")
    print(json.dumps(out, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
