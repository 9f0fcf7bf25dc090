"""Fixed cost of one partition-day: `airflow dags test speed_profile__<cell>` (every stage and gate, little data).

One Porto partition-day with a 60-vehicle fleet (10 s fixes), timed through Airflow twice in the same run:
- `submit`: the `spark_default` connection is a `spark` connection (local[2]): one spark-submit per stage;
- `connect`: it is a `spark_connect` connection to a Spark Connect server started once beforehand (its start is
  reported on its own: a head node starts it once, not per run); timed twice (first run after the server start,
  then again).
Also times `speedprofile run` for the same partition-day both ways (stages only, no Airflow). Figures go to stdout
and to --out (JSON, default /tmp/speedprofile-bench/partition_day.json).

    .venv/bin/python benchmarks/partition_day.py [--vehicles 60] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OSM = REPO.parent / "shared" / "data" / "osm_porto" / "porto.osm.pbf"
DAY, NEXT = "2026-11-02", "2026-11-03"  # `dags test` at NEXT 00:00 covers the finished day DAY
PORT = 15022


def sp(*args: str, env: dict) -> str:
    return subprocess.run([str(BIN / "speedprofile"), *args], env=env, check=True, capture_output=True,
                          text=True).stdout


def airflow_env(home: Path, warehouse: Path, conn: dict) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db?timeout=60",
        "AIRFLOW__API_AUTH__JWT_SECRET": (home / ".secret").read_text(),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(conn), "SPEEDPROFILE_WAREHOUSE": str(warehouse),
        "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "TZ": "UTC",
    })
    return env


def dags_test(home: Path, warehouse: Path, cell: str, conn: dict) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run([str(BIN / "airflow"), "dags", "test", f"speed_profile__{cell}", NEXT],
                          env=airflow_env(home, warehouse, conn), cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    ok = proc.returncode == 0 and "DagRun Finished" in out and "state=success" in out
    return {"ok": ok, "wall_s": round(wall, 1), "exit": proc.returncode,
            "tail": "" if ok else out.strip().splitlines()[-1][:300]}


def run_stages(warehouse: Path, cell: str, env: dict, remote: str | None) -> float:
    t0 = time.monotonic()
    sp("run", "--warehouse", str(warehouse), "--date", DAY, "--partition", cell,
       *(["--remote", remote] if remote else []), env=env)
    return round(time.monotonic() - t0, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vehicles", type=int, default=60)
    ap.add_argument("--work", default="/tmp/speedprofile-bench/partition_day")
    ap.add_argument("--out", default="/tmp/speedprofile-bench/partition_day.json")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the Spark Connect server is stopped on the way out
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable)
    wh = work / "warehouse"
    sp("network", "build", "--osm", str(OSM), "--warehouse", str(wh), env=env)
    sp("simulate", "--warehouse", str(wh), "--days", "1", "--vehicles", str(args.vehicles), "--start-date", DAY,
       "--out", str(work / "sim"), env=env)
    sp("ingest", str(work / "sim" / "probes"), "--warehouse", str(wh), env=env)
    from speedprofile import tables

    counts = tables.read_arrow(str(wh), "probes", columns=["partition"]).column("partition").value_counts().to_pylist()
    cell, fixes = max(((c["values"], c["counts"]) for c in counts), key=lambda x: x[1])
    home = work / "airflow"
    home.mkdir()
    (home / ".secret").write_text(secrets.token_hex(32))
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=airflow_env(home, wh, {"conn_type": "spark"}),
                   check=True, capture_output=True)
    res: dict = {"cell": cell, "fixes": fixes, "vehicles": args.vehicles, "date": DAY, "cpus": os.cpu_count()}
    local = {"conn_type": "spark", "host": "local[2]"}
    res["airflow_submit"] = dags_test(home, wh, cell, local)
    print("airflow, spark-submit per stage:", res["airflow_submit"], flush=True)

    from speedprofile import server

    state = work / "server"
    os.environ.update(SPARK_LOCAL_IP="127.0.0.1")
    t0 = time.monotonic()
    url = server.start(port=PORT, master="local[2]", state=str(state), timeout=600)
    res["server_start_s"] = round(time.monotonic() - t0, 1)
    try:
        conn = {"conn_type": "spark_connect", "host": "127.0.0.1", "port": PORT}
        res["airflow_connect_first"] = dags_test(home, wh, cell, conn)
        print("airflow, Spark Connect (first):", res["airflow_connect_first"], flush=True)
        res["airflow_connect"] = dags_test(home, wh, cell, conn)
        print("airflow, Spark Connect:", res["airflow_connect"], flush=True)
        res["run_connect_s"] = run_stages(wh, cell, env, url)
    finally:
        server.stop(PORT, str(state))
    res["run_submit_s"] = run_stages(wh, cell, env, None)
    a, b = res["airflow_submit"]["wall_s"], res["airflow_connect"]["wall_s"]
    res["airflow_ratio_submit_over_connect"] = round(a / b, 2) if b else None
    print(f"partition-day {cell} ({fixes} fixes): airflow {a} s (spark-submit) vs {b} s (Spark Connect, warm), "
          f"x{res['airflow_ratio_submit_over_connect']}; server start {res['server_start_s']} s; "
          f"speedprofile run {res['run_submit_s']} s vs {res['run_connect_s']} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"written {out}")
    return 0 if res["airflow_submit"]["ok"] and res["airflow_connect"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
