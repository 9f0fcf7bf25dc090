"""Side-by-side map matching: our HMM matcher vs Valhalla's matcher vs fastmm on identical simulated traces.

For each OSM extract (Liechtenstein, Porto) the network is built with `speedprofile network build`; for each
sampling interval (1, 10, 30 s) x GPS noise (5, 20 m) a fleet is simulated with `speedprofile simulate`, and
every engine matches the same traces. Scores are length-weighted over our directed segments against the
simulator's true path: recall = |matched ∩ true| / |true|, precision = |matched ∩ true| / |matched|. Speed is
GPS points per CPU-second of the matching calls alone (network/tile loading is reported separately).

    .venv/bin/python benchmarks/match_side_by_side.py [--quick] [--extracts porto] [--engines valhalla,fastmm]

Prints a table and writes benchmarks/results/match_side_by_side.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks._engines.common import (  # noqa: E402
    LocalProjection,
    Trace,
    output_to,
    score_trace,
    summarize,
)

DATA = Path(os.environ.get("SPEEDPROFILE_DATA", REPO.parent / "shared" / "data"))
EXTRACTS = {
    "liechtenstein": DATA / "osm_liechtenstein" / "liechtenstein-latest.osm.pbf",
    "porto": DATA / "osm_porto" / "porto.osm.pbf",
}
INTERVALS_S = (1, 10, 30)
NOISES_M = (5, 20)
ENGINES = ("ours", "valhalla", "fastmm")
FASTMM_DELTA_M = 3000.0  # UBODT bound: > 2x the longest road distance between two fixes 30 s apart
SEED = 20151
MAX_VEHICLES = 2000


def _cli(args: list[str], log: Path) -> None:
    exe = Path(sys.executable).parent / "speedprofile"
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "speedprofile.cli", *args]
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False, cwd=REPO)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"match_side_by_side: `speedprofile {' '.join(args)}` failed: {tail[0]} (log: {log})")


def build_network(name: str, pbf: Path, work: Path, reuse: bool) -> str:
    """Warehouse with road_segments for the extract (with reuse: kept from an earlier run on the same pbf)."""
    warehouse = work / name / "warehouse"
    stamp = warehouse / f".built-from-{pbf.stat().st_size}-{int(pbf.stat().st_mtime)}"
    if not (reuse and stamp.exists()):
        warehouse.mkdir(parents=True, exist_ok=True)
        _cli(["network", "build", "--osm", str(pbf), "--warehouse", str(warehouse)], work / name / "network_build.log")
        stamp.touch()
    return str(warehouse)


def simulate(warehouse: str, out: Path, vehicles: int, interval_s: int, noise_m: int, seed: int,
             reuse: bool) -> Path:
    """Simulated fleet (raw probe CSV + true paths) for one cell of the sweep (with reuse: kept if there)."""
    done = out / ".done"
    if not (reuse and done.exists()):
        out.mkdir(parents=True, exist_ok=True)
        _cli(["simulate", "--warehouse", warehouse, "--days", "1", "--vehicles", str(vehicles),
              "--interval-s", str(interval_s), "--noise-m", str(noise_m), "--seed", str(seed), "--out", str(out)],
             out.parent / f"{out.name}.log")
        done.touch()
    return out


def _read_any(folder: Path) -> pd.DataFrame:
    files = sorted(glob.glob(str(folder / "**" / "*.parquet"), recursive=True))
    if files:
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    files = sorted(glob.glob(str(folder / "**" / "*.csv*"), recursive=True))
    if not files:
        raise SystemExit(f"match_side_by_side: no Parquet or CSV files under {folder}")
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def _epoch_s(ts: pd.Series) -> np.ndarray:
    """Epoch seconds from epoch numbers (s or ms), ISO-8601 strings or datetimes, whatever the time unit."""
    if pd.api.types.is_numeric_dtype(ts):
        v = ts.to_numpy(np.float64)
        return v / 1000.0 if np.nanmedian(v) > 1e11 else v
    if not pd.api.types.is_datetime64_any_dtype(ts):
        ts = pd.to_datetime(ts, utc=True, format="ISO8601")
    elif ts.dt.tz is None:
        ts = ts.dt.tz_localize("UTC")
    return (ts - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy()


def load_cell(sim_dir: Path, max_points: int) -> tuple[list[Trace], dict[str, list[int]], dict[str, list[int]]]:
    """Traces (whole, in trace_id order) up to max_points fixes in total, the true segment path of each, and its
    observable part (segments driven at some time between the trace's first and last fix)."""
    probes = _read_any(sim_dir / "probes")
    truth = _read_any(sim_dir / "truth_paths")
    probes["t_s"] = _epoch_s(probes["timestamp"])
    probes["trace_id"] = probes["trace_id"].astype(str)
    truth["trace_id"] = truth["trace_id"].astype(str)
    order = ["trace_id", "seq"] if "seq" in truth.columns else ["trace_id"]
    truth = truth.sort_values(order, kind="stable")
    true_paths = {k: g["segment_id"].astype("int64").tolist() for k, g in truth.groupby("trace_id", sort=False)}
    observable: dict[str, list[int]] = {}
    has_times = {"enter_time_utc", "exit_time_utc"} <= set(truth.columns)
    if has_times:
        truth["enter_s"] = _epoch_s(truth["enter_time_utc"])
        truth["exit_s"] = _epoch_s(truth["exit_time_utc"])
    truth_by = dict(tuple(truth.groupby("trace_id", sort=False)))
    traces: list[Trace] = []
    total = 0
    for tid, g in probes.sort_values(["trace_id", "t_s"], kind="stable").groupby("trace_id", sort=True):
        if tid not in true_paths or len(g) < 2:
            continue
        if total + len(g) > max_points and traces:
            break
        tr = Trace(tid, g["t_s"].to_numpy(), g["lon"].to_numpy(np.float64), g["lat"].to_numpy(np.float64))
        traces.append(tr)
        total += len(g)
        if has_times:
            p = truth_by[tid]
            seen = (p["exit_s"].to_numpy() >= tr.t_s[0]) & (p["enter_s"].to_numpy() <= tr.t_s[-1])
            observable[tid] = p["segment_id"].to_numpy()[seen].astype("int64").tolist()
        else:
            observable[tid] = true_paths[tid]
    return traces, true_paths, observable


def make_engines(names: list[str], pbf: Path, work: Path, warehouse: str, segments: pd.DataFrame,
                 proj: LocalProjection) -> dict:
    engines = {}
    for name in names:
        if name == "valhalla":
            from benchmarks._engines.valhalla_engine import ValhallaEngine

            engines[name] = ValhallaEngine(str(pbf), work / "valhalla", segments, proj)
        elif name == "fastmm":
            from benchmarks._engines.fastmm_engine import FastmmEngine

            engines[name] = FastmmEngine(segments, proj, work / "fastmm_ubodt", FASTMM_DELTA_M)
        elif name == "ours":
            from benchmarks._engines.ours import OursEngine

            engines[name] = OursEngine(warehouse, segments)
        else:
            raise SystemExit(f"match_side_by_side: unknown engine {name!r} (choose from {', '.join(ENGINES)})")
    return engines


def run_engine(engine, traces: list[Trace], true_paths: dict, length_m: dict, reverse_of: dict,
               observable: dict) -> dict:
    """Match every trace (timed: CPU and wall), then map to our segments and score (untimed)."""
    raws = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for tr in traces:
        raws.append(engine.match(tr))
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    rows = [score_trace(true_paths[tr.trace_id], engine.to_segments(raw), length_m, reverse_of,
                        observable[tr.trace_id])
            for tr, raw in zip(traces, raws, strict=True)]
    points = sum(len(t) for t in traces)
    out = summarize(rows)
    out.update({
        "points": points,
        "cpu_s": round(cpu_s, 3),
        "wall_s": round(wall_s, 3),
        "points_per_cpu_s": round(points / cpu_s, 1) if cpu_s > 0 else None,
    })
    return out


def print_table(results: list[dict]) -> None:
    head = f"{'extract':<14}{'int_s':>6}{'noise':>6}  {'engine':<9}{'traces':>7}{'points':>8}{'recall':>8}{'rec_obs':>8}" \
           f"{'prec':>8}{'prec*':>8}{'fail':>5}{'pts/cpu-s':>11}"
    print(head)
    print("-" * len(head))
    for r in results:
        rec = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        pre = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        rob = "-" if r["recall_observable"] is None else f"{r['recall_observable']:.3f}"
        pnu = "-" if r["precision_no_uturn"] is None else f"{r['precision_no_uturn']:.3f}"
        pps = "-" if r["points_per_cpu_s"] is None else f"{r['points_per_cpu_s']:.0f}"
        print(f"{r['extract']:<14}{r['interval_s']:>6}{r['noise_m']:>6}  {r['engine']:<9}{r['traces']:>7}"
              f"{r['points']:>8}{rec:>8}{rob:>8}{pre:>8}{pnu:>8}{r['failed_traces']:>5}{pps:>11}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extracts", default=",".join(EXTRACTS), help="comma list of %(default)s")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma list of %(default)s")
    ap.add_argument("--intervals", default=",".join(map(str, INTERVALS_S)), help="sampling intervals, seconds")
    ap.add_argument("--noises", default=",".join(map(str, NOISES_M)), help="GPS noise sigma, metres")
    ap.add_argument("--points", type=int, default=10000, help="fixes per cell at 10 s and slower (1 Hz gets 4x)")
    ap.add_argument("--vehicles", type=int, default=0, help="vehicles simulated per cell (default: sized from --points)")
    ap.add_argument("--quick", action="store_true", help="small cells (a smoke run)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep networks and simulated fleets from an earlier run (default: rebuild them)")
    ap.add_argument("--work", default=str(REPO / "benchmarks" / "work"), help="scratch folder (tiles, warehouses)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "match_side_by_side.json"))
    args = ap.parse_args(argv)

    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    extracts = [e.strip() for e in args.extracts.split(",") if e.strip()]
    intervals = [int(x) for x in args.intervals.split(",")]
    noises = [int(x) for x in args.noises.split(",")]
    budget = 600 if args.quick else args.points
    work = Path(args.work)
    results: list[dict] = []
    setup: list[dict] = []
    for name in extracts:
        if name not in EXTRACTS:
            raise SystemExit(f"match_side_by_side: unknown extract {name!r} (choose from {', '.join(EXTRACTS)})")
        pbf = EXTRACTS[name]
        if not pbf.is_file():
            raise SystemExit(f"match_side_by_side: OSM extract not found: {pbf} (set SPEEDPROFILE_DATA)")
        (work / name).mkdir(parents=True, exist_ok=True)
        warehouse = build_network(name, pbf, work, args.reuse)
        from speedprofile.network.graph import load_road_segments

        segments = load_road_segments(warehouse)
        length_m = dict(zip(segments["segment_id"].astype("int64"), segments["length_m"].astype(float), strict=True))
        rev = segments["reverse_segment_id"]
        reverse_of = {int(a): int(b) for a, b in zip(segments["segment_id"][rev.notna()], rev[rev.notna()],
                                                      strict=True)}
        lon_mid = float(np.mean([a.mean() for a in segments["geom_lon_deg"]]))
        lat_mid = float(np.mean([a.mean() for a in segments["geom_lat_deg"]]))
        proj = LocalProjection(lon_mid, lat_mid)
        engines = make_engines(names, pbf, work / name, warehouse, segments, proj)
        for ename, engine in engines.items():
            cpu0, wall0 = time.process_time(), time.perf_counter()
            with output_to(work / name / f"{ename}_setup.log"):
                engine.prepare()
            setup.append({"extract": name, "engine": ename, "segments": len(segments),
                          "setup_cpu_s": round(time.process_time() - cpu0, 2),
                          "setup_wall_s": round(time.perf_counter() - wall0, 2)})
            print(f"[{name}] {ename}: ready in {setup[-1]['setup_wall_s']} s", file=sys.stderr)
        for interval in intervals:
            for noise in noises:
                max_points = budget * (4 if interval == 1 else 1)
                vehicles = args.vehicles or max(4, min(200, max_points // max(1, 3600 // interval)))
                seed = SEED + interval * 100 + noise
                for _ in range(3):  # size the fleet so the cell holds about max_points fixes
                    sim = simulate(warehouse, work / name / f"sim_i{interval}_n{noise}_v{vehicles}_s{seed}",
                                   vehicles, interval, noise, seed, args.reuse)
                    fixes = json.loads((sim / "simulation.json").read_text())["fixes"]
                    if fixes >= 0.9 * max_points or vehicles >= MAX_VEHICLES:
                        break
                    vehicles = min(MAX_VEHICLES, int(np.ceil(vehicles * 1.1 * max_points / max(fixes, 1))))
                traces, true_paths, observable = load_cell(sim, max_points)
                for ename, engine in engines.items():
                    engine.configure(noise_m=noise, interval_s=interval)
                    row = {"extract": name, "interval_s": interval, "noise_m": noise, "engine": ename,
                           "simulation": sim.name}
                    row.update(run_engine(engine, traces, true_paths, length_m, reverse_of, observable))
                    results.append(row)
                    print(f"[{name} {interval}s {noise}m] {ename}: recall {row['recall']} precision "
                          f"{row['precision']} {row['points_per_cpu_s']} pts/cpu-s", file=sys.stderr)
    print_table(results)
    print("rec_obs = recall on the part of the true path driven between a trace's first and last fix")
    print("prec* = precision ignoring wrong segments that are the reverse twin of a true one (U-turn artefacts)")
    report = {
        "benchmark": "match_side_by_side",
        "scoring": "length-weighted over our directed segments; recall = correct/true, precision = correct/matched "
                   "(matched includes engine length on roads absent from our network); points_per_cpu_s = GPS "
                   "fixes / process CPU seconds of the matching calls",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "engines": _engine_versions(names),
        "setup": setup,
        "results": results,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"wrote {args.out}")
    return 0


def _engine_versions(names: list[str]) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name, pkg in (("valhalla", "pyvalhalla-weekly"), ("fastmm", "fastmm"), ("ours", "speedprofile")):
        if name in names:
            try:
                out[name] = version(pkg)
            except PackageNotFoundError:
                out[name] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
