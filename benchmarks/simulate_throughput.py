"""Simulator throughput: GPS fixes per second of `speedprofile simulate` on the Porto network, end to end
(routing, driving, fixes, CSV + Parquet writing), vs the same kernels driven one trip at a time (baseline).

    .venv/bin/python benchmarks/simulate_throughput.py [--vehicles 3000] [--days 2] [--baseline-trips 400]

Prints fixes/s (wall and CPU; the machine may be shared, CPU time is the steadier figure) and writes
benchmarks/results/simulate_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from speedprofile.network.build import build  # noqa: E402
from speedprofile.network.graph import load_road_segments_table  # noqa: E402
from speedprofile.simulate.fleet import simulate  # noqa: E402
from speedprofile.simulate.network import SimNetwork, UtcOffsets  # noqa: E402
from speedprofile.simulate.trips import RouteTrees, drive, plan_routes, pool_size, sample_fixes  # noqa: E402

DATA = Path(os.environ.get("SPEEDPROFILE_DATA", REPO.parent / "shared" / "data"))


def _baseline(warehouse: str, trips: int) -> dict:
    """The same kernels, one trip per call (what a per-trip loop would cost)."""
    net = SimNetwork(load_road_segments_table(warehouse))
    rng = np.random.default_rng(0)
    start = 1793606400.0  # 2026-11-02 08:00 UTC
    offsets = UtcOffsets(net.zones, int(start), int(start) + 86400)
    trees = RouteTrees(net, np.sort(rng.choice(net.core_nodes, size=pool_size(net, trips), replace=False)))
    w0, c0 = time.perf_counter(), time.process_time()
    fixes = 0
    for i in range(trips):
        routes = plan_routes(net, trees, rng, 1)
        t = np.array([start + 60.0 * i])
        trav = drive(net, offsets, routes, t, np.ones(1))
        fixes += len(sample_fixes(net, trav, 1, t, 10.0, 5.0, rng).t_s)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"trips": trips, "fixes": fixes, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "fixes_per_s_wall": round(fixes / wall), "fixes_per_s_cpu": round(fixes / cpu)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vehicles", type=int, default=3000)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--baseline-trips", type=int, default=400)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wh = os.path.join(tmp, "wh")
        net = build(wh, osm=str(DATA / "osm_porto" / "porto.osm.pbf"))
        w0, c0 = time.perf_counter(), time.process_time()
        s = simulate(wh, os.path.join(tmp, "out"), days=args.days, vehicles=args.vehicles, seed=1)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        csv_bytes = sum(p.stat().st_size for p in Path(tmp, "out", "probes").glob("*.csv"))
        base = _baseline(wh, args.baseline_trips)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run = {"network": "porto", "segments": net["segments"], "vehicles": args.vehicles, "days": args.days,
           "fixes": s["fixes"], "trips": s["trips"], "truth_rows": s["truth_rows"], "csv_mb": round(csv_bytes / 2**20, 1),
           "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "fixes_per_s_wall": round(s["fixes"] / wall),
           "fixes_per_s_cpu": round(s["fixes"] / cpu), "peak_rss_mb": round(peak_mb)}
    result = {"benchmark": "simulate_throughput", "cores": os.cpu_count(), "python": platform.python_version(),
              "batched": run, "baseline_one_trip_per_call": base,
              "speedup_vs_baseline_cpu": round(run["fixes_per_s_cpu"] / base["fixes_per_s_cpu"], 1)}
    print(f"simulate (batched):   {run['fixes']} fixes, {run['trips']} trips in {run['wall_s']:.1f} s wall / "
          f"{run['cpu_s']:.1f} s cpu -> {run['fixes_per_s_wall']} fixes/s wall, {run['fixes_per_s_cpu']} fixes/s cpu "
          f"(CSV {run['csv_mb']} MB, peak RSS {run['peak_rss_mb']} MB)")
    print(f"baseline (1 trip/call): {base['fixes']} fixes in {base['cpu_s']:.1f} s cpu -> {base['fixes_per_s_cpu']} fixes/s cpu")
    print(f"speed-up vs baseline (cpu): {result['speedup_vs_baseline_cpu']}x")
    out = REPO / "benchmarks" / "results" / "simulate_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
