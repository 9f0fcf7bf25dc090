"""Spark match_traces throughput vs the kernel's raw-array rate on the same pieces (one simulated day).

    .venv/bin/python benchmarks/match_spark.py [--vehicles 300] [--interval-s 10] [--osm FILE] [--reuse]
        [--keep-output DIR] [--out FILE]

Builds the network (Porto by default; the scale benchmark's fleet is `--osm .../baltimore.osm.pbf --vehicles 2900
--interval-s 1`, about 5.3 M fixes), simulates `--vehicles` x 1 day, ingests it, then times `spark_apps/match_traces.main`
over all partitions of the day in one call (local[2], the repo's conf/spark-defaults.conf settings; JVM start-up
and ingest excluded), twice: cold (first run in the JVM, what one spark-submit pays) and warm (run again). The Spark
figure is owned fixes per CPU second of the whole Spark process tree (JVM + Python workers, from /proc), and per
wall second per core (inflated when the machine is shared). The baseline, in the same run, is `Matcher.match_points` on the
usable fixes of the same pieces, context fixes included (one process, the whole network, CPU seconds). Writes benchmarks/results/match_spark.json
(or --out).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

DATA = Path(os.environ.get("SPEEDPROFILE_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "benchmarks" / "results" / "match_spark.json"
WORK = Path(os.environ.get("SPEEDPROFILE_BENCH_WORK", REPO / "benchmarks" / "work")) / "match_spark"
PORTO = str(DATA / "osm_porto" / "porto.osm.pbf")
DAY = "2026-11-02"  # the simulator's default start date (a Monday)


def _tree_cpu_s(root_pid: int) -> float:
    """CPU seconds (user + system, including reaped children) of a process and all its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(d), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        stats[pid] = sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    total, todo = 0.0, [root_pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def _spark_session():
    from pyspark.sql import SparkSession

    from speedprofile import tables

    conf = {}
    for line in (REPO / "conf" / "spark-defaults.conf").read_text().splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and not parts[0].startswith("#"):
            conf[parts[0]] = parts[1].strip()
    b = (SparkSession.builder.master("local[2]").appName("bench-match-spark").config("spark.ui.enabled", "false")
         .config("spark.jars", tables.spark_jars()))
    for k, v in conf.items():
        b = b.config(k, v)
    return b.config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS").getOrCreate()


def network_name(osm: str) -> str:
    """`porto` for .../porto.osm.pbf: names the scratch folders and the input in the JSON."""
    return Path(osm).name.split(".")[0]


def prepare(vehicles: int, interval_s: float, reuse: bool, osm: str = PORTO) -> tuple[str, str]:
    """Network + simulated day + ingested probes under WORK (kept with --reuse)."""
    tag = f"{network_name(osm)}_v{vehicles}_i{int(interval_s)}"
    wh, sim = str(WORK / f"wh_{tag}"), str(WORK / f"sim_{tag}")
    if reuse and os.path.isdir(os.path.join(wh, "probes")):
        return wh, sim
    shutil.rmtree(wh, ignore_errors=True)
    shutil.rmtree(sim, ignore_errors=True)
    from speedprofile.ingest.pipeline import ingest
    from speedprofile.network.build import build
    from speedprofile.simulate.fleet import simulate

    build(wh, osm=osm)
    simulate(wh, sim, days=1, vehicles=vehicles, interval_s=interval_s, noise_m=5.0, seed=7)
    ingest(_spark_session(), wh, [os.path.join(sim, "probes")])
    return wh, sim


def kernel_rate(wh: str) -> dict:
    """Matcher.match_points over the pieces the Spark run matches (the day's pieces, context fixes included), in
    time order, CPU seconds; fixes counted as the Spark run counts them (owned fixes)."""
    import pyarrow.compute as pc

    from speedprofile import tables
    from speedprofile.matching.kernel import Matcher, warm_up
    from speedprofile.network.graph import load_road_segments_table

    warm_up()
    m = Matcher(load_road_segments_table(wh))
    t = tables.read_arrow(wh, "probes", columns=["dt", "trace_id", "piece", "timestamp_utc", "lon_deg", "lat_deg",
                                                 "is_context"])
    t = t.filter(pc.equal(t.column("dt").cast("string"), DAY))
    tid = np.asarray(t.column("trace_id").to_numpy(zero_copy_only=False), dtype=object)
    piece = t.column("piece").to_numpy()
    ts = t.column("timestamp_utc").cast("int64").to_numpy()
    lon, lat = t.column("lon_deg").to_numpy(), t.column("lat_deg").to_numpy()
    owned = ~t.column("is_context").to_numpy(zero_copy_only=False)
    codes = np.unique(tid, return_inverse=True)[1]
    order = np.lexsort((ts, piece, codes))
    key = codes[order] * 100_000 + piece[order]
    bounds = np.concatenate([[0], np.nonzero(np.diff(key))[0] + 1, [len(key)]])
    pieces = []
    n = 0
    for a, b in itertools.pairwise(bounds):
        idx = order[a:b]
        tt = ts[idx]
        ok = np.concatenate([[True], np.diff(tt) > 0])
        idx = idx[ok]
        if len(idx) >= 2:
            pieces.append((lon[idx], lat[idx], (ts[idx] - ts[idx[0]]) / 1e6))
            n += int(owned[idx].sum())
    c0 = time.process_time()
    for x, y, s in pieces:
        m.match_points(x, y, s)
    cpu = time.process_time() - c0
    return {"pieces": len(pieces), "fixes": n, "fixes_with_context": sum(len(p[0]) for p in pieces),
            "cpu_s": round(cpu, 3), "fixes_per_cpu_s": round(n / cpu, 1)}


def spark_rate(wh: str) -> dict:
    """match_traces over all partitions of the day in one call, twice in one JVM: `cold` is what a spark-submit
    pays after JVM start-up (class loading, JIT, Python worker imports, numba cache loads); `warm` is the same run
    again (the rate once those one-off costs are paid). CPU of the Spark process tree and wall time."""
    from spark_apps.match_traces import main
    from speedprofile.spark import read_metrics
    from speedprofile.warehouse import read_partitions

    spark = _spark_session()
    spark.range(1).count()  # JVM start-up outside the timed region
    jvm_pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    cells = sorted(p["cell"] for p in read_partitions(wh)["partitions"])
    argv = ["--warehouse", wh, "--date", DAY, "--partition", ",".join(cells)]
    cores = spark.sparkContext.defaultParallelism
    runs = {}
    for name in ("cold", "warm"):
        cpu0, w0 = _tree_cpu_s(jvm_pid) + time.process_time(), time.perf_counter()
        assert main(argv) == 0
        wall = time.perf_counter() - w0
        cpu = _tree_cpu_s(jvm_pid) + time.process_time() - cpu0
        metrics = [read_metrics(None, wh, "match_traces", DAY, c) for c in cells]
        fixes = sum(m["fixes_in"] for m in metrics)
        runs[name] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "fixes_per_cpu_s": round(fixes / cpu, 1),
                      "fixes_per_wall_s_per_core": round(fixes / wall / cores, 1)}
    return {
        "partitions": len(cells), "pieces": sum(m["pieces"] for m in metrics), "fixes_in": fixes,
        "fixes_matched": sum(m["fixes_matched"] for m in metrics),
        "traversals_written": sum(m["rows_out"] for m in metrics), "cores": cores, **runs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vehicles", type=int, default=300)
    ap.add_argument("--interval-s", type=float, default=10.0)
    ap.add_argument("--osm", default=PORTO, help="OSM extract of the network (default: central Porto)")
    ap.add_argument("--out", default=str(OUT), help="JSON result file (default %(default)s)")
    ap.add_argument("--reuse", action="store_true", help="keep the network, fleet and probes of an earlier run")
    ap.add_argument("--keep-output", help="copy the written segment_traversals table to this folder")
    ap.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if args.prepare_only:
        prepare(args.vehicles, args.interval_s, args.reuse, args.osm)
        return 0
    # ingest runs in its own JVM, so the timed runs start from a JVM that has not run Spark jobs yet
    subprocess.run([sys.executable, __file__, "--prepare-only", "--vehicles", str(args.vehicles),
                    "--interval-s", str(args.interval_s), "--osm", args.osm, *(["--reuse"] if args.reuse else [])],
                   check=True)
    wh, _ = prepare(args.vehicles, args.interval_s, reuse=True, osm=args.osm)
    sp = spark_rate(wh)
    if args.keep_output:
        shutil.rmtree(args.keep_output, ignore_errors=True)
        shutil.copytree(os.path.join(wh, "segment_traversals"), args.keep_output)
    kr = kernel_rate(wh)
    out = {
        "benchmark": "match_spark", "input": f"{network_name(args.osm)}, 1 day, {args.vehicles} vehicles, {args.interval_s:g} s fixes",
        "spark": sp, "kernel_raw_arrays": kr,
        **{f"spark_{run}_cpu_vs_kernel": round(sp[run]["fixes_per_cpu_s"] / kr["fixes_per_cpu_s"], 3)
           for run in ("cold", "warm")},
    }
    print(json.dumps(out, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
