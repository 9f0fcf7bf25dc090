"""Seed-scale benchmark: a 1 Hz fleet of N fixes on a real network through ingest and every stage.

For each size N (default 1 M, 5 M, 20 M; `--sizes 85e6` opt-in) it builds the network (Baltimore OSM by default;
`--kubicka ID` builds the Kubicka 2015 track graph from its node and arc lists, e.g. 00000032 with 259 k arcs, the
seed's scale), simulates one day of a 1 Hz fleet sized to N fixes, ingests the CSV files and runs every stage over
all partitions (`speedprofile run --all`). Per step it reports:

- wall and CPU seconds (the whole process tree: client, JVM, Python workers; with a Spark Connect server, the
  server's tree too), rows in and rows per second (ingest: raw rows; stages: fixes of the run);
- peak resident memory of the JVM (in local mode the driver and the executor are one JVM) and of the Python
  workers (summed over the workers alive at the same time), sampled every 0.5 s;
- shuffle spill (memory and disk bytes) from Spark's event log;
- per step, the fixed cost and the per-fix cost from a least-squares fit of wall = fixed + per_fix * N over the
  sizes, and the largest N that completed.

Ingest and the stages run through a Spark Connect server (`--mode connect`, the default: one JVM for all steps) or
each in its own JVM (`--mode submit`: ingest on a local session, one spark-submit per stage). A Connect server is
long-lived: its first run pays the JVM's warm-up (class loading, JIT compilation), so with `--mode connect` a
`--warmup` run (200 k fixes by default) goes first and is reported apart as the cold figure; the sizes then measure
the server's steady state (`--warmup 0`: the first size carries the warm-up). Memory is capped at `--memory` (JVM heap; default 2g, what a 4 GB
Raspberry Pi worker gives an executor: docs/deploy.md). Figures go to stdout and to `--out` (JSON; default
/tmp/speedprofile-bench/scale.json); scratch data to `--work`.

    .venv/bin/python benchmarks/scale.py [--sizes 1e6,5e6,20e6] [--mode connect|submit] [--kubicka 00000032]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SP = [sys.executable, "-m", "speedprofile.cli"]
DATE = "2026-11-03"  # a Tuesday
STAGES = ("match_traces", "bucket_traversals", "build_histograms", "estimate_speeds")
PORT = 15012
SPLIT_BYTES = 1 << 30  # the simulated day goes to ingest in files of at most about 1 GiB


def split_files(folder: Path, max_bytes: int) -> int:
    """Cut every CSV over max_bytes into parts of about max_bytes (whole lines, header repeated), as a fleet
    delivers a large day in several files (ingest refuses files over its max_file_bytes). Returns the file count."""
    for path in sorted(folder.glob("*.csv")):
        if path.stat().st_size <= max_bytes:
            continue
        with open(path, "rb") as src:
            header = src.readline()
            part, out, size = 0, None, 0
            for line in src:
                if out is None or size >= max_bytes:
                    if out:
                        out.close()
                    out = open(path.with_name(f"{path.stem}-part{part:03d}.csv"), "wb")
                    out.write(header)
                    part, size = part + 1, len(header)
                out.write(line)
                size += len(line)
            if out:
                out.close()
        path.unlink()
    return len(list(folder.glob("*.csv")))


class TreeSampler:
    """CPU seconds and peak RSS of process trees (roots given by pid), sampled every `interval` seconds."""

    def __init__(self, roots: list[int], interval: float = 0.5):
        import psutil

        self.psutil, self.roots, self.interval = psutil, roots, interval
        self.cpu: dict[int, float] = {}
        self.peak_jvm = 0
        self.peak_python = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _procs(self):
        out = []
        for r in self.roots:
            try:
                p = self.psutil.Process(r)
                out += [p, *p.children(recursive=True)]
            except self.psutil.NoSuchProcess:
                continue
        return out

    def sample(self) -> None:
        jvm = python = 0
        for p in self._procs():
            try:
                t = p.cpu_times()
                self.cpu[p.pid] = t.user + t.system + getattr(t, "children_user", 0) + getattr(t, "children_system", 0)
                rss = p.memory_info().rss
                name = " ".join(p.cmdline()[:3])
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
            if "java" in name:
                jvm = max(jvm, rss)
            elif "pyspark" in name or "daemon" in name or "worker" in name:
                python += rss
        self.peak_jvm = max(self.peak_jvm, jvm)
        self.peak_python = max(self.peak_python, python)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self.cpu0 = dict(self.cpu)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def cpu_seconds(self) -> float:
        return sum(v - self.cpu0.get(pid, 0.0) for pid, v in self.cpu.items())


def spill_between(event_dir: Path, t0: float, t1: float) -> dict[str, int]:
    """Shuffle spill of the tasks that finished in [t0, t1] (epoch seconds), from Spark's event logs."""
    mem = disk = tasks = 0
    for f in glob.glob(str(event_dir / "**" / "*"), recursive=True):
        if not os.path.isfile(f):
            continue
        with open(f, errors="replace") as fh:
            for line in fh:
                if '"SparkListenerTaskEnd"' not in line:
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                fin = ev.get("Task Info", {}).get("Finish Time", 0) / 1000
                if not t0 <= fin <= t1:
                    continue
                m = ev.get("Task Metrics") or {}
                mem += int(m.get("Memory Bytes Spilled", 0))
                disk += int(m.get("Disk Bytes Spilled", 0))
                tasks += 1
    return {"memory_bytes_spilled": mem, "disk_bytes_spilled": disk, "tasks": tasks}


def run_step(cmd: list[str], env: dict, log: Path, extra_roots: list[int], event_dir: Path) -> dict:
    t0 = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        with TreeSampler([proc.pid, *extra_roots]) as s:
            rc = proc.wait()
            s.sample()
    t1 = time.time()
    out = {"ok": rc == 0, "wall_s": round(t1 - t0, 2), "cpu_s": round(s.cpu_seconds(), 2),
           "peak_jvm_rss_mb": round(s.peak_jvm / 2**20), "peak_python_workers_rss_mb": round(s.peak_python / 2**20),
           **spill_between(event_dir, t0, t1 + 1)}
    if rc != 0:
        out["error"] = ([ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] or [""])[-1][:300]
    return out


def fixes_per_vehicle(env: dict, work: Path, warehouse: str) -> float:
    """1 Hz fixes one simulated vehicle produces in a day on this network (from a 20-vehicle probe)."""
    probe = work / "sim_probe"
    shutil.rmtree(probe, ignore_errors=True)
    subprocess.run([*SP, "simulate", "--warehouse", warehouse, "--days", "1", "--vehicles", "20", "--interval-s", "1",
                    "--start-date", DATE, "--seed", "11", "--out", str(probe)], env=env, check=True,
                   capture_output=True)
    n = 0
    for f in glob.glob(str(probe / "probes" / "**" / "*.csv*"), recursive=True):
        with open(f, "rb") as fh:
            n += sum(1 for _ in fh) - 1
    shutil.rmtree(probe, ignore_errors=True)
    return n / 20


def fit(sizes: list[float], walls: list[float]) -> dict | None:
    """Least-squares wall = fixed + per_fix * N."""
    if len(sizes) < 2:
        return None
    import numpy as np

    a = np.vstack([np.ones(len(sizes)), np.asarray(sizes, float)]).T
    (fixed, per), *_ = np.linalg.lstsq(a, np.asarray(walls, float), rcond=None)
    return {"fixed_s": round(float(fixed), 2), "per_fix_us": round(float(per) * 1e6, 3),
            "marginal_fixes_per_s": round(1 / per) if per > 0 else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e6,5e6,20e6", help="fixes per run, comma-separated (85e6: the seed)")
    ap.add_argument("--mode", choices=("connect", "submit"), default="connect")
    ap.add_argument("--osm", default=str(DATA / "osm_baltimore" / "baltimore.osm.pbf"))
    ap.add_argument("--kubicka", default=None, help="Kubicka 2015 track id whose graph is the network (e.g. 00000032)")
    ap.add_argument("--memory", default="2g", help="JVM heap (driver = executor in local mode)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--work", default="/tmp/speedprofile-bench/scale")
    ap.add_argument("--out", default="/tmp/speedprofile-bench/scale.json")
    ap.add_argument("--keep", action="store_true", help="keep each size's warehouse and probes")
    ap.add_argument("--warmup", default="2e5", metavar="N",
                    help="with --mode connect, first run N fixes through every step on the fresh server and report "
                         "them apart (`warmup`, not in the fit), so the sizes measure the long-lived server's steady "
                         "state; 0: the first size carries the server's warm-up (default 2e5)")
    ap.add_argument("--resume", default=None, metavar="JSON",
                    help="a previous run's JSON: sizes whose ingest completed there, and whose warehouse is still in "
                         "--work, keep that ingest (figures copied, marked resumed) and run only the stages")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the Spark Connect server is stopped on the way out
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    event_dir = work / "events"
    shutil.rmtree(event_dir, ignore_errors=True)
    event_dir.mkdir()
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable)
    conf_dir = work / "conf"
    conf_dir.mkdir(exist_ok=True)
    defaults = (REPO / "conf" / "spark-defaults.conf").read_text().replace("spark.driver.memory", "#")
    (conf_dir / "spark-defaults.conf").write_text(
        defaults + f"\nspark.driver.memory {args.memory}\nspark.master {args.master}\n"
        f"spark.eventLog.enabled true\nspark.eventLog.compress false\nspark.eventLog.dir file://{event_dir}\n")
    shutil.copy(REPO / "conf" / "log4j2.properties", conf_dir / "log4j2.properties")
    env["SPARK_CONF_DIR"] = str(conf_dir)

    server_pid: list[int] = []
    remote: list[str] = []
    if args.mode == "connect":
        from speedprofile import server

        state = work / "server"
        server.stop(PORT, str(state))
        t0 = time.time()
        os.environ.update(SPARK_CONF_DIR=str(conf_dir), SPARK_LOCAL_IP="127.0.0.1")
        url = server.start(port=PORT, master=args.master, state=str(state), timeout=600)
        server_start_s = time.time() - t0
        server_pid = [int(p.read_text()) for p in state.glob("*.pid")]
        remote = ["--remote", url]
    results: dict = {"mode": args.mode, "master": args.master, "memory": args.memory, "date": DATE,
                     "network": f"kubicka:{args.kubicka}" if args.kubicka else Path(args.osm).name,
                     "cpus": os.cpu_count(), "runs": []}
    if args.mode == "connect":
        results["server_start_s"] = round(server_start_s, 2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        warmup = int(float(args.warmup)) if args.mode == "connect" else 0
        if warmup:
            res = one_size(warmup, args, env, work, event_dir, server_pid, remote, keep=False)
            results["warmup"] = res
            print(json.dumps({"warmup_fixes": warmup, **{k: v.get("wall_s") for k, v in res["steps"].items()}}),
                  flush=True)
        for n in sizes:
            res = one_size(n, args, env, work, event_dir, server_pid, remote)
            results["runs"].append(res)
            print(json.dumps({"fixes": n, **{k: v.get("wall_s") for k, v in res["steps"].items()}}), flush=True)
            out.write_text(json.dumps(results, indent=2))  # each size as soon as it is done
            if not res["ok"]:
                break
    finally:
        if args.mode == "connect":
            from speedprofile import server

            server.stop(PORT, str(work / "server"))
    done = [r for r in results["runs"] if r["ok"]]
    results["largest_completed_fixes"] = max((r["fixes"] for r in done), default=0)
    results["fit"] = {}
    for step in ("ingest", *STAGES, "total"):
        pts = [(r["fixes"], r["steps"][step]["wall_s"]) for r in done if step in r["steps"]]
        results["fit"][step] = fit([p[0] for p in pts], [p[1] for p in pts])
    report(results)
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")
    return 0 if done and len(done) == len(results["runs"]) else 1


def one_size(n: int, args, env: dict, work: Path, event_dir: Path, server_pid: list[int], remote: list[str],
             keep: bool | None = None) -> dict:
    wh = work / f"wh_{n}"
    sim = work / f"sim_{n}"
    before = resumable(args.resume, n, wh)
    if before is not None:
        res = {k: before[k] for k in ("fixes", "segments", "partitions", "vehicles", "simulate_s", "raw_rows")
               if k in before}
        res.update(ok=False, resumed_from=args.resume, steps={"ingest": {**before["steps"]["ingest"], "resumed": True}})
        logs = work / f"logs_{n}"
        logs.mkdir(exist_ok=True)
        return run_stages(n, res, env, logs, wh, server_pid, event_dir, remote)
    shutil.rmtree(wh, ignore_errors=True)
    shutil.rmtree(sim, ignore_errors=True)
    res: dict = {"fixes": n, "steps": {}, "ok": False}
    if args.kubicka:
        k = DATA / "kubicka2015" / args.kubicka
        build = ["network", "build", "--nodes", str(k / f"{args.kubicka}.nodes.gz"),
                 "--arcs", str(k / f"{args.kubicka}.arcs.gz")]
    else:
        build = ["network", "build", "--osm", args.osm]
    subprocess.run([*SP, *build, "--warehouse", str(wh)], env=env, check=True, capture_output=True)
    parts = json.loads((wh / "road_segments" / "_partitions.json").read_text())
    res["segments"] = sum(p.get("segments", 0) for p in parts["partitions"])
    res["partitions"] = len(parts["partitions"])
    per_vehicle = fixes_per_vehicle(env, work, str(wh))
    vehicles = max(1, round(n / per_vehicle))
    t0 = time.time()
    subprocess.run([*SP, "simulate", "--warehouse", str(wh), "--days", "1", "--vehicles", str(vehicles),
                    "--interval-s", "1", "--start-date", DATE, "--seed", "5", "--out", str(sim)], env=env, check=True,
                   capture_output=True)
    res["simulate_s"] = round(time.time() - t0, 1)
    res["vehicles"] = vehicles
    res["input_files"] = split_files(sim / "probes", SPLIT_BYTES)
    logs = work / f"logs_{n}"
    logs.mkdir(exist_ok=True)
    step = run_step([*SP, "ingest", str(sim / "probes"), "--warehouse", str(wh), *remote], env, logs / "ingest.log",
                    server_pid, event_dir)
    text = (logs / "ingest.log").read_text(errors="replace")
    found = re.search(r"(\d+) rows in", text)
    rows_in = int(found.group(1)) if found else None
    res["raw_rows"] = rows_in or n
    step["rows_per_s"] = round((rows_in or n) / step["wall_s"]) if step["wall_s"] else None
    res["steps"]["ingest"] = step
    if not step["ok"]:
        return res
    res = run_stages(n, res, env, logs, wh, server_pid, event_dir, remote)
    if res["ok"] and not (args.keep if keep is None else keep):
        shutil.rmtree(sim, ignore_errors=True)
        shutil.rmtree(wh, ignore_errors=True)
    return res


def resumable(path: str | None, n: int, wh: Path) -> dict | None:
    """The run of size n in a previous JSON whose ingest completed, when its warehouse is still there."""
    if not path or not (wh / "probes").exists():
        return None
    for run in json.loads(Path(path).read_text()).get("runs", []):
        if run.get("fixes") == n and run.get("steps", {}).get("ingest", {}).get("ok"):
            return run
    return None


def run_stages(n: int, res: dict, env: dict, logs: Path, wh: Path, server_pid: list[int], event_dir: Path,
               remote: list[str]) -> dict:
    """Every stage over all partitions, one `speedprofile run --all` each, after an ingest that completed."""
    for stage in STAGES:
        st = run_step([*SP, "run", "--all", "--date", DATE, "--stages", stage, "--warehouse", str(wh),
                       "--log-dir", str(logs), *remote], env, logs / f"run_{stage}.log", server_pid, event_dir)
        st["fixes_per_s"] = round(res["raw_rows"] / st["wall_s"]) if st["wall_s"] else None
        res["steps"][stage] = st
        if not st["ok"]:
            return res
    total = sum(s["wall_s"] for s in res["steps"].values())
    res["steps"]["total"] = {"ok": True, "wall_s": round(total, 2),
                             "cpu_s": round(sum(s["cpu_s"] for s in res["steps"].values()), 2),
                             "fixes_per_s": round(res["raw_rows"] / total)}
    res["table_rows"] = table_rows(wh)
    res["ok"] = True
    return res


def table_rows(wh: Path) -> dict[str, int]:
    from speedprofile import tables

    out = {}
    for t in ("probes", "segment_traversals", "bucketed_traversals", "speed_histograms", "speed_estimates"):
        snaps = tables.snapshots(str(wh), t)  # committed rows of the newest snapshot; a never-written table is left out
        if snaps:
            out[t] = snaps[-1]["total_rows"]
    return out


def report(results: dict) -> None:
    print(f"\nscale benchmark ({results['mode']}, {results['master']}, heap {results['memory']}, "
          f"network {results['network']})")
    print(f"{'fixes':>10} {'step':<18} {'wall s':>8} {'cpu s':>8} {'rows/s':>9} {'jvm MB':>7} {'py MB':>6} {'spill MB':>8}")
    for r in ([results["warmup"]] if "warmup" in results else []) + results["runs"]:
        if r is results.get("warmup"):
            print("(warm-up run on the fresh server, not in the fit)")
        elif "warmup" in results and r is results["runs"][0]:
            print("(on the warm server)")
        for name, s in r["steps"].items():
            rate = s.get("rows_per_s") or s.get("fixes_per_s") or 0
            spill = (s.get("memory_bytes_spilled", 0) + s.get("disk_bytes_spilled", 0)) / 2**20
            print(f"{r['fixes']:>10,} {name:<18} {s['wall_s']:>8.1f} {s['cpu_s']:>8.1f} {rate:>9,} "
                  f"{s.get('peak_jvm_rss_mb', 0):>7} {s.get('peak_python_workers_rss_mb', 0):>6} {spill:>8.1f}")
    for name, f in results["fit"].items():
        if f:
            print(f"fit {name:<18} fixed {f['fixed_s']:7.1f} s  per fix {f['per_fix_us']:7.2f} us  "
                  f"marginal {f['marginal_fixes_per_s'] or 0:>9,} fixes/s")
    print(f"largest completed: {results['largest_completed_fixes']:,} fixes")


if __name__ == "__main__":
    sys.exit(main())
