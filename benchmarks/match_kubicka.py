"""Map-matching benchmark: accuracy and throughput on Kubicka 2015 (1 Hz) and on simulated 30 s Porto traces.

    .venv/bin/python benchmarks/match_kubicka.py [--tracks ID,...] [--vehicles 150] [--interval-s 30]

Kubicka: route overlap (correct length / union length, directed arcs) and matched points per CPU second of
matching, graph loading excluded. Simulator: the same on `speedprofile simulate` traces against the simulator's
truth paths, through the per-trace pandas API (`Matcher.match`, what the Spark app calls). Baselines in the same run:
every fix kept (no 2-sigma thinning) on Kubicka, and the raw-array API on the simulated traces.
Writes benchmarks/results/match_kubicka.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from speedprofile.matching import bench  # noqa: E402
from speedprofile.matching.kernel import Matcher, MatchParams, warm_up  # noqa: E402

DATA = Path(os.environ.get("SPEEDPROFILE_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "benchmarks" / "results" / "match_kubicka.json"


def kubicka(tracks: list[str] | None) -> dict:
    root = str(DATA / "kubicka2015")
    ids = bench.list_tracks(root, tracks)
    default = bench.run(root, ids)
    quiet = bench.run(root, ids, MatchParams(thin_m=0.0), out=lambda *_: None)
    return {
        "tracks": default["tracks"], "points": default["points"], "accuracy": default["accuracy"],
        "points_per_second": default["points_per_second"], "load_s": default["load_s"],
        "worst": default["worst"],
        "baseline_every_fix": {"accuracy": quiet["accuracy"], "points_per_second": quiet["points_per_second"]},
        "speedup_vs_every_fix": round(default["points_per_second"] / max(quiet["points_per_second"], 1e-9), 2),
    }


def simulated(vehicles: int, interval_s: float) -> dict:
    from speedprofile.network.build import build
    from speedprofile.network.graph import load_road_segments_table
    from speedprofile.simulate.fleet import simulate

    with tempfile.TemporaryDirectory() as tmp:
        wh, out = os.path.join(tmp, "wh"), os.path.join(tmp, "sim")
        build(wh, osm=str(DATA / "osm_porto" / "porto.osm.pbf"))
        simulate(wh, out, days=1, vehicles=vehicles, interval_s=interval_s, noise_m=5.0, seed=7)
        t0 = time.perf_counter()
        table = load_road_segments_table(wh)
        matcher = Matcher(table)
        load_s = time.perf_counter() - t0
        probes = pd.concat([pd.read_csv(os.path.join(out, "probes", f)) for f in sorted(os.listdir(os.path.join(out, "probes")))])
        paths = pd.concat([pd.read_parquet(os.path.join(out, "truth_paths", f))
                           for f in sorted(os.listdir(os.path.join(out, "truth_paths")))])
    probes["timestamp_utc"] = pd.to_datetime(probes["timestamp"], utc=True)
    probes = probes.rename(columns={"lon": "lon_deg", "lat": "lat_deg"})
    traces = [g for _, g in probes.groupby("trace_id", sort=False)]
    truth = {k: g for k, g in paths.groupby("trace_id", sort=False)}
    net = matcher.net
    c0 = time.process_time()
    results = [matcher.match(g) for g in traces]
    cpu = time.process_time() - c0
    c0 = time.process_time()
    for g in traces:
        t = (g["timestamp_utc"] - g["timestamp_utc"].iloc[0]).dt.total_seconds().to_numpy()
        matcher.match_points(g["lon_deg"].to_numpy(), g["lat_deg"].to_numpy(), t)
    cpu_raw = time.process_time() - c0
    correct = union = correct_cov = union_cov = 0.0
    speed_err = []
    for g, res in zip(traces, results, strict=True):
        tp = truth.get(g["trace_id"].iloc[0])
        if tp is None:
            continue
        lo, hi = g["timestamp_utc"].min(), g["timestamp_utc"].max()
        tp = tp[(tp["exit_time_utc"] > lo) & (tp["enter_time_utc"] < hi)]
        # the part of the truth driven between fixes at most max_gap_s apart (a longer gap is not bridged)
        ft = np.sort(g["timestamp_utc"].to_numpy())
        short = np.diff(ft) <= np.timedelta64(int(MatchParams().max_gap_s * 1e6), "us")
        k = np.searchsorted(ft, tp["enter_time_utc"].to_numpy().astype(ft.dtype), side="right") - 1
        k2 = np.searchsorted(ft, tp["exit_time_utc"].to_numpy().astype(ft.dtype), side="left") - 1
        covered = np.array([short[max(a, 0):max(b, a) + 1].any() if len(short) else False for a, b in zip(k, k2, strict=True)])
        tpc = tp[covered] if len(tp) else tp
        m = net.index_of(res.traversals["segment_id"].to_numpy())
        t = net.index_of(tp["segment_id"].to_numpy())
        c, u, _ = bench.route_overlap(m[m >= 0], t[t >= 0], net.seg_len)
        correct += c
        union += u
        tc = net.index_of(tpc["segment_id"].to_numpy())
        c, u, _ = bench.route_overlap(m[m >= 0], tc[tc >= 0], net.seg_len)
        correct_cov += c
        union_cov += u
        full = res.traversals[res.traversals["is_complete"] & res.traversals["reject_reason"].isna()]
        tv = tp.assign(true_kph=net.seg_len[np.maximum(t, 0)] / (tp["exit_time_utc"] - tp["enter_time_utc"]).dt.total_seconds() * 3.6)
        j = full.merge(tv[["segment_id", "true_kph"]].drop_duplicates("segment_id"), on="segment_id")
        speed_err.extend((j["speed_kph"] - j["true_kph"]).abs().tolist())
    n = len(probes)
    return {
        "interval_s": interval_s, "vehicles": vehicles, "traces": len(traces), "points": n,
        "network_segments": net.n_segments, "load_s": round(load_s, 3),
        "accuracy": round(correct / union, 5) if union else 0.0,
        "accuracy_excluding_long_gaps": round(correct_cov / union_cov, 5) if union_cov else 0.0,
        "points_per_second": round(n / max(cpu, 1e-9), 1),
        "points_per_second_raw_arrays": round(n / max(cpu_raw, 1e-9), 1),
        "complete_traversals_compared": len(speed_err),
        "speed_abs_error_kph_median": round(float(np.median(speed_err)), 2) if speed_err else None,
        "speed_abs_error_kph_p90": round(float(np.percentile(speed_err, 90)), 2) if speed_err else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", default=None, help="Kubicka track ids (default: all in the data folder)")
    ap.add_argument("--vehicles", type=int, default=150)
    ap.add_argument("--interval-s", type=float, default=30.0)
    args = ap.parse_args(argv)
    warm_up()
    result = {"benchmark": "match_kubicka", "cores": 1, "params": MatchParams().to_dict(),
              "kubicka": kubicka(args.tracks.split(",") if args.tracks else None),
              "simulated": simulated(args.vehicles, args.interval_s)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result["simulated"].items()}))
    k = result["kubicka"]
    print(json.dumps({"tracks": k["tracks"], "points": k["points"], "accuracy": k["accuracy"],
                      "points_per_second": k["points_per_second"], "cores": 1}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
