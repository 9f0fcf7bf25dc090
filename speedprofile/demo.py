"""`speedprofile demo`: a real OSM network + a simulated fleet week through every stage, then a summary and a map.

Default network: the central-Porto extract beside the checkout (../shared/data/osm_porto/porto.osm.pbf), or
--osm FILE / $OSM. Sized so it ends in minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from datetime import date, timedelta
from pathlib import Path

from speedprofile import stages
from speedprofile.errors import UserError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OSM = REPO.parent / "shared" / "data" / "osm_porto" / "porto.osm.pbf"
TABLES = tuple(stages.tables())  # every warehouse table a registered stage writes, in dependency order


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--osm", default=os.environ.get("OSM") or None, help=f"OSM PBF (default {DEFAULT_OSM})")
    p.add_argument("--out", default="demo_out", help="demo folder: warehouse, simulated probes, maps")
    p.add_argument("--vehicles", type=int, default=250, help="simulated vehicles (default 250)")
    p.add_argument("--days", type=int, default=7, help="simulated days (default 7: one week)")
    p.add_argument("--start-date", default="2026-11-02", help="first simulated day (a Monday by default)")
    p.add_argument("--interval-s", type=float, default=10.0, help="GPS sampling interval (default 10 s)")
    p.add_argument("--seed", type=int, default=7)


def resolve_osm(osm: str | None) -> Path:
    path = Path(osm) if osm else DEFAULT_OSM
    if not path.is_file():
        raise UserError(
            f"no OSM extract at {path}: pass OSM=FILE.osm.pbf (make demo) or --osm FILE "
            f"(the default is {DEFAULT_OSM})"
        )
    return path


def count_rows(warehouse: str, table: str) -> int:
    """Committed rows of a table (0 before its first commit), from the catalog's snapshot summary."""
    from speedprofile import tables

    snaps = tables.snapshots(warehouse, table)
    return snaps[-1]["total_rows"] if snaps else 0


def metrics_totals(warehouse: str, stage: str) -> dict[str, float]:
    """Sum of the numeric top-level counters over every metrics file of a stage."""
    totals: dict[str, float] = {}
    for f in glob.glob(os.path.join(warehouse, "_metrics", stage, "*", "*.json")):
        with open(f) as fh:
            for k, v in json.load(fh).items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    totals[k] = totals.get(k, 0) + v
    return totals


def cli(args: argparse.Namespace) -> int:
    from speedprofile.cli import main as sp

    osm = resolve_osm(args.osm)
    out = Path(args.out)
    warehouse = str(out / "warehouse") if args.warehouse in ("warehouse", "./warehouse") else args.warehouse
    sim = out / "simulated"
    t_start = time.monotonic()
    steps: list[tuple[str, float]] = []

    def step(name: str, argv: list[str]) -> None:
        t0 = time.monotonic()
        print(f"== {name}", flush=True)
        rc = sp(argv)
        if rc != 0:
            raise UserError(f"demo step '{name}' failed (exit {rc})")
        steps.append((name, time.monotonic() - t0))

    step("network build", ["network", "build", "--osm", str(osm), "--warehouse", warehouse])
    step("simulate", ["simulate", "--warehouse", warehouse, "--days", str(args.days), "--vehicles", str(args.vehicles),
                      "--interval-s", str(args.interval_s), "--seed", str(args.seed),
                      "--start-date", args.start_date, "--out", str(sim)])
    step("ingest", ["ingest", "--warehouse", warehouse, str(sim / "probes")])
    last = str(date.fromisoformat(args.start_date) + timedelta(days=args.days - 1))
    step("run", ["run", "--warehouse", warehouse, "--date", args.start_date, "--to-date", last, "--all",
                 "--window-weeks", "1", "--in-process"])
    maps = out / "speeds_fri_0800_vs_0300.png"
    step("map", ["map", "--warehouse", warehouse, "--out", str(maps), "--at", "Fri 08:00", "--at", "Fri 03:00"])

    print("\n== summary")
    for table in TABLES:
        print(f"  {table:<20} {count_rows(warehouse, table):>10,} rows")
    from speedprofile.warehouse import read_partitions

    print(f"  partitions           {len(read_partitions(warehouse)['partitions']):>10}")
    m = metrics_totals(warehouse, "match_traces")
    if m.get("fixes_in"):
        print(f"  match rate           {m.get('fixes_matched', 0) / m['fixes_in']:>10.1%} of owned fixes matched")
    est = published_share(warehouse, f"w1-{last}")
    if est:
        print(f"  estimates            {est['buckets']:>10,} buckets in {est['rows']:,} rows (runs); {est['observed']:,} of "
              f"{est['with_data']:,} buckets with "
              f"observations ({est['observed_share']:.1%}) published from their own data (>= k traces), "
              f"the rest backed off")
    mae = truth_error(warehouse, sim / "truth")
    if mae:
        print(f"  error vs truth       MAE {mae['mae_kph']:.2f} km/h over {mae['buckets']:,} observed buckets")
    for name, secs in steps:
        print(f"  {name:<20} {secs:>9.1f} s")
    print(f"  total                {time.monotonic() - t_start:>9.1f} s")
    print(f"\nmap: {maps.resolve()}")
    return 0


def published_share(warehouse: str, window: str) -> dict | None:
    """Estimate rows (runs) and buckets, and how many of the buckets that had observations in the window were
    published as observed."""
    from speedprofile import tables
    from speedprofile.serve.data import load_estimates

    if not tables.snapshots(warehouse, "speed_estimates") or not tables.snapshots(warehouse, "speed_histograms"):
        return None
    rows = tables.count_rows(warehouse, "speed_estimates")
    source = load_estimates(warehouse, columns=["source"])["source"]
    observed = int((source == "observed").sum())
    with_data = tables.read_arrow(warehouse, "speed_histograms", extra_keys={"window": [window]},
                                  columns=["segment_id"]).num_rows
    return {"rows": rows, "buckets": len(source), "observed": observed, "with_data": with_data,
            "observed_share": observed / with_data if with_data else 0.0}


def truth_error(warehouse: str, truth_dir: Path) -> dict | None:
    """MAE of observed estimates against the simulator's truth, on buckets published from own data."""
    import pandas as pd

    from speedprofile import tables
    from speedprofile.serve.data import load_estimates

    if not tables.snapshots(warehouse, "speed_estimates") or not truth_dir.exists():
        return None
    est = load_estimates(warehouse, columns=["segment_id", "tow_bucket", "speed_kph", "source"])
    truth = pd.read_parquet(truth_dir)  # the simulator's truth: a plain file, not a warehouse table
    est = est[est["source"] == "observed"]
    j = est.merge(truth, on=["segment_id", "tow_bucket"], suffixes=("", "_true"))
    if j.empty:
        return None
    return {"mae_kph": float((j["speed_kph"] - j["speed_kph_true"]).abs().mean()), "buckets": len(j)}
