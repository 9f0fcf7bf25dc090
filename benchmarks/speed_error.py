"""Speed error of observed estimates against the simulator's truth, by road class and sampling interval, with the
error attributed to matching, partial traversals and estimation.

    .venv/bin/python benchmarks/speed_error.py [--intervals 1,5,10,30] [--vehicles 60] [--days 1] [--out FILE]

For each sampling interval a Porto fleet is simulated (`speedprofile simulate`, 5 m GPS noise, same seed), every
trace is matched with the kernel the `match_traces` app runs (`Matcher.match`), and the traversals go through the
same rules and kernels as the pipeline: complete, plausible, confident traversals are bucketed by their local
midpoint (`aggregate.kernels.bucket_instant`) and each segment x bucket estimate is the median of its histogram
(`aggregate.kernels.histogram_stats`; no minimum trace count, no back-off, so every observed bucket is scored).
Truth: the simulator's per segment x bucket model speed (`truth/`), and per trace the time it really entered and
left each segment (`truth_paths/`).

Attribution (mean absolute errors, km/h):
- `end_to_end`: estimates from the matched traversals vs the truth speed of the bucket;
- `estimation`: estimates from the *true* traversals of the same traces (perfect matching and timing) vs the
  truth: what the medians of a few noisy drivers cost on their own;
- `matching`: kept traversals on a segment the trace never drove (error vs the truth speed of that bucket), with
  their share of all kept traversals;
- `timing`: kept traversals on a driven segment vs the true speed of that same traversal (interpolation of
  enter/exit times between fixes);
- `partial`: partial traversals on driven segments vs their true traversal speed: what using them would cost
  (the pipeline does not bucket them), with their share of all traversals on driven segments.

Writes JSON to --out (default: a scratch folder under the system temp dir, never the repository).
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

DATA = Path(os.environ.get("SPEEDPROFILE_DATA", REPO.parent / "shared" / "data"))
DEFAULT_OUT = Path(tempfile.gettempdir()) / "speedprofile-bench" / "speed_error.json"


def _mae(a, b) -> float | None:
    d = np.abs(np.asarray(a, float) - np.asarray(b, float))
    d = d[np.isfinite(d)]
    return round(float(d.mean()), 3) if len(d) else None


def _bucket(trav: pd.DataFrame, tz: dict[int, str]) -> pd.DataFrame:
    """The rows bucket_traversals keeps (complete, positive duration, plausible, confident, known zone), tagged
    with the local time-of-week bucket of their midpoint (aggregate.kernels.bucket_instant)."""
    from schemas.segment_traversals import MAX_PLAUSIBLE_KPH, MIN_CONFIDENCE, MIN_PLAUSIBLE_KPH
    from speedprofile.aggregate import kernels as K

    ok = trav[trav["is_complete"].astype(bool) & (trav["duration_s"] > 0)
              & trav["speed_kph"].between(MIN_PLAUSIBLE_KPH, MAX_PLAUSIBLE_KPH)
              & (trav["confidence"] >= MIN_CONFIDENCE) & trav["segment_id"].isin(list(tz))].copy()
    enter = pd.to_datetime(ok["enter_time_utc"], utc=True, format="ISO8601")
    exit_ = pd.to_datetime(ok["exit_time_utc"], utc=True, format="ISO8601")
    mid = (enter + (exit_ - enter) / 2).dt.floor("us")
    ok["tow_bucket"] = [K.bucket_instant(m.to_pydatetime(), tz[s])["tow_bucket"]
                        for m, s in zip(mid, ok["segment_id"], strict=True)]
    return ok


def _estimates(trav: pd.DataFrame, tz: dict[int, str]) -> pd.DataFrame:
    """Median speed per (segment, bucket) of bucketed traversals, through the pipeline's kernels."""
    from speedprofile.aggregate import kernels as K

    if trav.empty:
        return pd.DataFrame(columns=["segment_id", "tow_bucket", "speed_kph_est", "n"])
    b = _bucket(trav, tz)
    if b.empty:
        return pd.DataFrame(columns=["segment_id", "tow_bucket", "speed_kph_est", "n"])
    rows = []
    for (sid, bucket), g in b.groupby(["segment_id", "tow_bucket"], sort=False):
        v = g["speed_kph"].to_numpy(float)
        counts = np.bincount(K.speed_bin(v), minlength=K.N_SPEED_BINS)
        st = K.histogram_stats(counts, len(v), g["trace_id"].nunique(), v.sum(), g["duration_s"].sum(),
                               g["traversed_m"].sum())
        rows.append((sid, bucket, st.median, len(v)))
    return pd.DataFrame(rows, columns=["segment_id", "tow_bucket", "speed_kph_est", "n"])


def one_interval(wh: str, seg: pd.DataFrame, interval_s: float, vehicles: int, days: int, work: str) -> dict:
    from schemas.segment_traversals import MIN_CONFIDENCE
    from speedprofile.matching.kernel import Matcher
    from speedprofile.network.graph import load_road_segments_table
    from speedprofile.simulate.fleet import simulate

    out = os.path.join(work, f"sim_{interval_s:g}s")
    simulate(wh, out, days=days, vehicles=vehicles, interval_s=interval_s, noise_m=5.0, seed=13)
    probes = pd.concat([pd.read_csv(os.path.join(out, "probes", f)) for f in sorted(os.listdir(os.path.join(out, "probes")))])
    probes["timestamp_utc"] = pd.to_datetime(probes["timestamp"], utc=True, format="ISO8601")
    probes = probes.rename(columns={"lon": "lon_deg", "lat": "lat_deg"}).drop(columns=["speed_kph"], errors="ignore")
    paths = pd.read_parquet(os.path.join(out, "truth_paths"))
    truth = pd.read_parquet(os.path.join(out, "truth"))[["segment_id", "tow_bucket", "speed_kph"]]
    truth = truth.rename(columns={"speed_kph": "speed_kph_true"})
    matcher = Matcher(load_road_segments_table(wh))
    c0 = time.process_time()
    frames = []
    for tid, g in probes.groupby("trace_id", sort=False):
        tr = matcher.match(g).traversals
        if len(tr):
            frames.append(tr.assign(trace_id=tid, piece=0))
    cpu = time.process_time() - c0
    trav = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    trav = trav[trav["reject_reason"].isna()].copy()
    trav["enter_time_utc"] = trav["enter_time_utc"].astype(str)
    trav["exit_time_utc"] = trav["exit_time_utc"].astype(str)

    seg_len = seg.set_index("segment_id")["length_m"]
    paths = paths.assign(length_m=paths["segment_id"].map(seg_len))
    dur = (paths["exit_time_utc"] - paths["enter_time_utc"]).dt.total_seconds()
    paths = paths.assign(true_kph=paths["length_m"] / dur * 3.6, duration_s=dur)
    # one true traversal per (trace, segment); a trace driving a segment twice keeps its first pass
    true_tr = paths.drop_duplicates(["trace_id", "segment_id"])[["trace_id", "segment_id", "true_kph"]]
    j = trav.merge(true_tr, on=["trace_id", "segment_id"], how="left")
    driven = j["true_kph"].notna()
    confident = j["confidence"] >= MIN_CONFIDENCE
    kept = j["is_complete"].astype(bool) & confident
    tz = dict(zip(seg["segment_id"], seg["timezone"], strict=True))
    cls = dict(zip(seg["segment_id"], seg["road_class"], strict=True))

    # estimates from the matched traversals (what the pipeline keeps) and from the true traversals
    est = _estimates(j[kept].drop(columns=["true_kph"]), tz)
    last = paths.groupby("trace_id")["seq"].transform("max")
    perfect = paths[(paths["seq"] > 0) & (paths["seq"] < last)]  # trips start and end inside a segment
    perfect = pd.DataFrame({
        "trace_id": perfect["trace_id"], "segment_id": perfect["segment_id"],
        "enter_time_utc": perfect["enter_time_utc"].astype(str), "exit_time_utc": perfect["exit_time_utc"].astype(str),
        "duration_s": perfect["duration_s"], "traversed_m": perfect["length_m"], "speed_kph": perfect["true_kph"],
        "is_complete": True, "confidence": 1.0})
    est_true = _estimates(perfect, tz)
    e = est.merge(truth, on=["segment_id", "tow_bucket"])
    et = est_true.merge(truth, on=["segment_id", "tow_bucket"])
    e["road_class"] = e["segment_id"].map(cls)
    et["road_class"] = et["segment_id"].map(cls)
    j["road_class"] = j["segment_id"].map(cls)

    # matching error: kept traversals on segments the trace never drove, vs the truth of their bucket
    wrong = j[kept & ~driven]
    wb = _estimates(wrong.drop(columns=["true_kph"]).assign(is_complete=True), tz) if len(wrong) else pd.DataFrame()
    wrong_err = wb.merge(truth, on=["segment_id", "tow_bucket"]) if len(wb) else pd.DataFrame(
        columns=["speed_kph_est", "speed_kph_true"])

    def block(mask_e, mask_et, mask_j) -> dict:
        ok = mask_j & driven
        part = ~j["is_complete"].astype(bool) & driven & mask_j
        return {
            "buckets": int(mask_e.sum()),
            "end_to_end_mae_kph": _mae(e.loc[mask_e, "speed_kph_est"], e.loc[mask_e, "speed_kph_true"]),
            "estimation_mae_kph": _mae(et.loc[mask_et, "speed_kph_est"], et.loc[mask_et, "speed_kph_true"]),
            "kept_traversals": int((kept & mask_j).sum()),
            "matching_wrong_share": round(float((kept & ~driven & mask_j).sum() / max((kept & mask_j).sum(), 1)), 4),
            "timing_mae_kph": _mae(j.loc[kept & ok, "speed_kph"], j.loc[kept & ok, "true_kph"]),
            "partial_share": round(float(part.sum() / max((driven & mask_j).sum(), 1)), 4),
            "partial_mae_kph": _mae(j.loc[part, "speed_kph"], j.loc[part, "true_kph"]),
            "low_confidence_share": round(float((j["is_complete"].astype(bool) & ~confident & mask_j).sum()
                                                / max((j["is_complete"].astype(bool) & mask_j).sum(), 1)), 4),
        }

    result = {"interval_s": interval_s, "vehicles": vehicles, "days": days, "fixes": len(probes),
              "match_cpu_s": round(cpu, 2), **block(np.ones(len(e), bool), np.ones(len(et), bool),
                                                    np.ones(len(j), bool)),
              "matching_mae_kph": _mae(wrong_err["speed_kph_est"], wrong_err["speed_kph_true"]),
              "by_road_class": {}}
    for c in sorted(set(e["road_class"].dropna())):
        result["by_road_class"][c] = block((e["road_class"] == c).to_numpy(), (et["road_class"] == c).to_numpy(),
                                           (j["road_class"] == c).to_numpy())
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--intervals", default="1,5,10,30", help="sampling intervals, seconds (default %(default)s)")
    ap.add_argument("--vehicles", type=int, default=60, help="vehicles per fleet (default %(default)s)")
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--osm", default=str(DATA / "osm_porto" / "porto.osm.pbf"))
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result file (default %(default)s)")
    args = ap.parse_args(argv)
    try:
        intervals = [float(x) for x in args.intervals.split(",") if x.strip()]
    except ValueError:
        print(f"error: --intervals {args.intervals}: expected comma-separated seconds", file=sys.stderr)
        return 2
    if not intervals or min(intervals) <= 0 or args.vehicles < 1 or args.days < 1:
        print("error: --intervals must be positive seconds, --vehicles and --days >= 1", file=sys.stderr)
        return 2
    if not os.path.exists(args.osm):
        print(f"error: --osm {args.osm}: no such file", file=sys.stderr)
        return 2
    from speedprofile.matching.kernel import MatchParams, warm_up
    from speedprofile.network.build import build
    from speedprofile.network.graph import load_road_segments_table

    warm_up()
    results = []
    with tempfile.TemporaryDirectory() as work:
        wh = os.path.join(work, "wh")
        build(wh, osm=args.osm)
        seg = load_road_segments_table(wh).select(["segment_id", "length_m", "road_class", "timezone"]).to_pandas()
        for iv in intervals:
            r = one_interval(wh, seg, iv, args.vehicles, args.days, work)
            results.append(r)
            print(f"{iv:>5g} s  buckets {r['buckets']:>6}  end-to-end {r['end_to_end_mae_kph']}  estimation "
                  f"{r['estimation_mae_kph']}  wrong segment {r['matching_wrong_share']:.2%} ({r['matching_mae_kph']})  "
                  f"timing {r['timing_mae_kph']}  partial {r['partial_share']:.1%} ({r['partial_mae_kph']})", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "speed_error", "osm": args.osm, "noise_m": 5.0,
                               "params": MatchParams().to_dict(), "results": results}, indent=2))
    print(f"results={out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
