"""DAG parse time against the partition count: each file in dags/ imported the way Airflow's DAG processor does
(one fresh interpreter per file, Airflow already imported), with a synthetic `_partitions.json` of N cells in a
temporary warehouse, plus the parse a task run does (one DAG id requested through the parsing context).

    .venv/bin/python benchmarks/dag_parse.py [--partitions 700,3000] [--repeat 3] [--dags DIR] [--out FILE.json]

Prints, per N (wall and CPU seconds; on a shared box compare CPU): the slowest file's import time (what meets `dagbag_import_timeout`, 30 s by default), the sum over
files, DAGs found, and the task-run parse; writes JSON to --out (default benchmarks/results/dag_parse.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"

# Runs in a child: import Airflow, then time the import of one DAG file (as the DAG processor does per file).
CHILD = r"""
import importlib.util, json, os, sys, time
import airflow.sdk
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator  # noqa: F401
path = sys.argv[1]
w0, c0 = time.perf_counter(), time.process_time()
if os.environ.get("_DAG_ID"):
    from airflow.sdk.definitions.context import _AIRFLOW_PARSING_CONTEXT_DAG_ID  # env var name
    os.environ[_AIRFLOW_PARSING_CONTEXT_DAG_ID] = os.environ["_DAG_ID"]
spec = importlib.util.spec_from_file_location("bench_dag_module", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
wall, cpu = time.perf_counter() - w0, time.process_time() - c0
from airflow.sdk import DAG
dags = [v for v in vars(mod).values() if isinstance(v, DAG)]
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "dags": len(dags), "tasks": sum(len(d.tasks) for d in dags)}))
"""


def synthetic_cells(n: int) -> list[str]:
    """n distinct H3 resolution-7 cells around Porto (grid disks until there are enough)."""
    import h3

    center = h3.latlng_to_cell(41.15, -8.61, 7)
    k = 1
    while 3 * k * (k + 1) + 1 < n:
        k += 1
    return sorted(h3.grid_disk(center, k))[:n]


def write_partitions(warehouse: Path, cells: list[str]) -> None:
    """A partition list shaped like network build's (a few numbers per cell, not only the id)."""
    p = warehouse / "road_segments" / "_partitions.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"h3_res": 7, "partitions": [
        {"cell": c, "segments": 350, "length_m": 41_000.0} for c in cells]}))


def parse_file(path: Path, warehouse: Path, dag_id: str | None = None) -> dict:
    env = dict(os.environ, SPEEDPROFILE_WAREHOUSE=str(warehouse), AIRFLOW_HOME=str(warehouse.parent / "airflow"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__UNIT_TEST_MODE="False")
    env.pop("SPEEDPROFILE_PARTITIONS_FILE", None)
    if dag_id:
        env["_DAG_ID"] = dag_id
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True,
                         timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"parsing {path.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(n: int, repeat: int, dags: Path = DAGS) -> dict:
    files = sorted(p for p in dags.glob("*.py") if not p.name.startswith("_"))
    with tempfile.TemporaryDirectory(prefix="dag_parse_") as tmp:
        wh = Path(tmp) / "warehouse"
        cells = synthetic_cells(n)
        write_partitions(wh, cells)
        per_file = {}
        for f in files:
            runs = [parse_file(f, wh) for _ in range(repeat)]
            per_file[f.name] = {"wall_s": statistics.median(r["wall_s"] for r in runs),
                                "cpu_s": statistics.median(r["cpu_s"] for r in runs),
                                "dags": runs[0]["dags"], "tasks": runs[0]["tasks"]}
        target = f"speed_profile__{cells[len(cells) // 2]}"
        task_run = []
        for f in files:
            runs = [parse_file(f, wh, target) for _ in range(repeat)]
            task_run.append({"file": f.name, "wall_s": statistics.median(r["wall_s"] for r in runs),
                             "dags": runs[0]["dags"]})
    slowest = max(per_file.values(), key=lambda r: r["wall_s"])
    return {
        "partitions": n,
        "files": per_file,
        "dags": sum(r["dags"] for r in per_file.values()),
        "slowest_file_wall_s": slowest["wall_s"],
        "slowest_file_cpu_s": max(r["cpu_s"] for r in per_file.values()),
        "sum_wall_s": sum(r["wall_s"] for r in per_file.values()),
        "sum_cpu_s": sum(r["cpu_s"] for r in per_file.values()),
        "task_run_parse_wall_s": max(r["wall_s"] for r in task_run if r["dags"]),
        "task_run_dags_built": sum(r["dags"] for r in task_run),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--partitions", default="700,3000", help="comma-separated partition counts")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    ap.add_argument("--dags", default=str(DAGS), help="DAG folder to measure (default: this repository's dags/)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dag_parse.json"))
    args = ap.parse_args(argv)
    rows = []
    for n in [int(x) for x in args.partitions.split(",")]:
        r = measure(n, args.repeat, Path(args.dags))
        rows.append(r)
        print(f"{n:>6} partitions: {r['dags']:>5} DAGs in {len(r['files'])} file(s); slowest file "
              f"{r['slowest_file_wall_s']:6.2f} s wall / {r['slowest_file_cpu_s']:6.2f} s CPU, all files "
              f"{r['sum_wall_s']:6.2f} s wall / {r['sum_cpu_s']:6.2f} s CPU; task-run parse "
              f"{r['task_run_parse_wall_s']:5.2f} s ({r['task_run_dags_built']} DAG built)", flush=True)
    result = {"benchmark": "dag_parse", "python": platform.python_version(), "cpus": os.cpu_count(),
              "load_avg_1m": os.getloadavg()[0], "dags_folder": args.dags, "import_timeout_s": 30, "results": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
