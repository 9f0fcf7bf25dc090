"""Speed error of observed estimates against the simulator's truth, by road class and sampling interval, with the
error attributed to matching, partial traversals and estimation.

    .venv/bin/python benchmarks/speed_error.py [--intervals 1,5,10,30] [--vehicles 60] [--days 1] [--kernels K;K]
        [--timing expected,distance] [--out FILE]

For each sampling interval a Porto fleet is simulated (`speedprofile simulate`, 5 m GPS noise, same seed), every
trace is matched with the kernel the `match_traces` app runs (`Matcher.match`), and the traversals go through the
same rules and kernels as the pipeline: complete, plausible, confident traversals are bucketed by their local
midpoint (`aggregate.kernels.bucket_instant`), turned into histograms (`histogram_table`) and estimated with the
pipeline's estimator (`estimate_segments`, observed temporal kernel included) with k = 1, so every bucket with data
is scored (no minimum trace count, no back-off). `by_kernel` compares observed-bucket kernels (--kernels) on every
bucket with data and on the buckets the pipeline publishes as observed (>= MIN_TRACES own traces).
Truth: the simulator's per segment x bucket model speed (`truth/`), and per trace the time it really entered and
left each segment (`truth_paths/`).

Attribution (mean absolute errors, km/h):
- `end_to_end`: estimates from the matched traversals vs the truth speed of the bucket;
- `estimation`: estimates from the *true* traversals of the same traces (perfect matching and timing) vs the
  truth: what the medians of a few noisy drivers cost on their own;
- `matching`: kept traversals on a segment the trace never drove (error vs the truth speed of that bucket), with
  their share of all kept traversals;
- `timing`: kept traversals on a driven segment vs the true speed of that same traversal (interpolation of
  enter/exit times between fixes), also signed (`timing_bias_kph`) and by segment length (`by_length`);
- `partial`: partial traversals on driven segments vs their true traversal speed: what using them would cost
  (the pipeline does not bucket them), with their share of all traversals on driven segments.

`--timing` matches the same fleet once per way of timing traversals between fixes (`MatchParams.expected_time`:
`expected` shares the time by the segments' expected travel time, `distance` by length) and scores each.

Writes JSON to --out (default: a scratch folder under the system temp dir, never the repository).
"""

from __future__ import annotations

import argparse
import itertools
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


def _estimates(trav: pd.DataFrame, tz: dict[int, str], kernel: tuple[int, ...] | None = None,
               min_traces: int = 1) -> pd.DataFrame:
    """Observed estimates per (segment, bucket) of bucketed traversals, through the pipeline's kernels
    (`histogram_table`, then `estimate_segments` with the observed-bucket `kernel`, default the pipeline's): every
    bucket with >= min_traces traces (default 1: every bucket with data), its median, p15/p85, confidence and
    n (observations behind it)."""
    import pyarrow as pa

    from speedprofile.aggregate import kernels as K

    empty = pd.DataFrame(columns=["segment_id", "tow_bucket", "speed_kph_est", "n", "p15_kph", "p85_kph",
                                  "confidence"])
    b = _bucket(trav, tz) if len(trav) else trav
    if b.empty:
        return empty
    cols = ["segment_id", "tow_bucket", "trace_id", "speed_kph", "duration_s", "traversed_m"]
    hist = K.histogram_table(pa.Table.from_pandas(b[cols], preserve_index=False), ("segment_id", "tow_bucket"))
    hist = hist.to_pandas()
    priors = {int(s): K.class_prior("unknown", None, min_traces) for s in hist["segment_id"].unique()}
    est = K.estimate_segments(hist, priors, min_traces, kernel=kernel or K.OBSERVED_KERNEL)
    est = est[est["source"] == "observed"]
    return est.rename(columns={"speed_kph": "speed_kph_est", "n_obs": "n"})[list(empty.columns)]


def _mean(x) -> float | None:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return round(float(x.mean()), 3) if len(x) else None


LENGTH_BANDS_M = (0.0, 20.0, 40.0, 80.0, 160.0, np.inf)
TIMINGS = {"expected": True, "distance": False}  # --timing name -> MatchParams.expected_time


def one_interval(wh: str, seg: pd.DataFrame, interval_s: float, vehicles: int, days: int, work: str,
                 kernels: list[tuple[int, ...]], timings: list[str]) -> list[dict]:
    """Simulate one fleet at interval_s and score it once per way of timing traversals (`timings`)."""
    from speedprofile.simulate.fleet import simulate

    out = os.path.join(work, f"sim_{interval_s:g}s")
    simulate(wh, out, days=days, vehicles=vehicles, interval_s=interval_s, noise_m=5.0, seed=13)
    probes, paths, truth = load_fleet(out, seg)
    return [score(wh, seg, probes, paths, truth, interval_s, vehicles, days, kernels, timing) for timing in timings]


def load_fleet(sim: str, seg: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A simulated fleet's output folder -> (probes as `Matcher.match` takes them, truth paths with each traversal's
    length_m, duration_s and true_kph, truth with `speed_kph_true` per segment x bucket)."""
    folder = os.path.join(sim, "probes")
    probes = pd.concat([pd.read_csv(os.path.join(folder, f)) for f in sorted(os.listdir(folder))])
    probes["timestamp_utc"] = pd.to_datetime(probes["timestamp"], utc=True, format="ISO8601")
    probes = probes.rename(columns={"lon": "lon_deg", "lat": "lat_deg"}).drop(columns=["speed_kph"], errors="ignore")
    paths = pd.read_parquet(os.path.join(sim, "truth_paths"))
    paths = paths.assign(length_m=paths["segment_id"].map(seg.set_index("segment_id")["length_m"]))
    dur = (paths["exit_time_utc"] - paths["enter_time_utc"]).dt.total_seconds()
    paths = paths.assign(true_kph=paths["length_m"] / dur * 3.6, duration_s=dur)
    truth = pd.read_parquet(os.path.join(sim, "truth"))[["segment_id", "tow_bucket", "speed_kph"]]
    return probes, paths, truth.rename(columns={"speed_kph": "speed_kph_true"})


def true_traversals(paths: pd.DataFrame) -> pd.DataFrame:
    """One true traversal per (trace, segment) with its true speed; a trace driving a segment twice keeps its first
    pass."""
    return paths.drop_duplicates(["trace_id", "segment_id"])[["trace_id", "segment_id", "true_kph"]]


def score(wh: str, seg: pd.DataFrame, probes: pd.DataFrame, paths: pd.DataFrame, truth: pd.DataFrame,
          interval_s: float, vehicles: int, days: int, kernels: list[tuple[int, ...]], timing: str) -> dict:
    """Match the fleet's probes with the given timing and score the traversals and estimates against the truth."""
    from schemas.segment_traversals import MIN_CONFIDENCE
    from schemas.speed_estimates import MIN_TRACES
    from speedprofile.matching.kernel import Matcher, MatchParams
    from speedprofile.network.graph import load_road_segments_table

    matcher = Matcher(load_road_segments_table(wh), MatchParams(expected_time=TIMINGS[timing]))
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
    j = trav.merge(true_traversals(paths), on=["trace_id", "segment_id"], how="left")
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
    wb = (_estimates(wrong.drop(columns=["true_kph"]).assign(is_complete=True), tz, kernel=(1,)) if len(wrong)
          else pd.DataFrame())
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
            "timing_bias_kph": _mean(j.loc[kept & ok, "speed_kph"] - j.loc[kept & ok, "true_kph"]),
            "partial_share": round(float(part.sum() / max((driven & mask_j).sum(), 1)), 4),
            "partial_mae_kph": _mae(j.loc[part, "speed_kph"], j.loc[part, "true_kph"]),
            "low_confidence_share": round(float((j["is_complete"].astype(bool) & ~confident & mask_j).sum()
                                                / max((j["is_complete"].astype(bool) & mask_j).sum(), 1)), 4),
        }

    # the observed-bucket kernel: every bucket with data (k = 1) and the published observed buckets (k = MIN_TRACES)
    by_kernel = {}
    for kern in kernels:
        row = {}
        for k, tag in ((1, "all"), (MIN_TRACES, "published")):
            ek = _estimates(j[kept].drop(columns=["true_kph"]), tz, kernel=kern, min_traces=k)
            ek = ek.merge(truth, on=["segment_id", "tow_bucket"])
            etk = _estimates(perfect, tz, kernel=kern, min_traces=k).merge(truth, on=["segment_id", "tow_bucket"])
            row[tag] = {"buckets": len(ek), "end_to_end_mae_kph": _mae(ek["speed_kph_est"], ek["speed_kph_true"]),
                        "estimation_mae_kph": _mae(etk["speed_kph_est"], etk["speed_kph_true"]),
                        "p85_minus_p15_kph": _mean(ek["p85_kph"] - ek["p15_kph"]),
                        "confidence": _mean(ek["confidence"])}
        by_kernel["-".join(map(str, kern))] = row

    result = {"interval_s": interval_s, "timing": timing, "vehicles": vehicles, "days": days, "fixes": len(probes),
              "match_cpu_s": round(cpu, 2), **block(np.ones(len(e), bool), np.ones(len(et), bool),
                                                    np.ones(len(j), bool)),
              "matching_mae_kph": _mae(wrong_err["speed_kph_est"], wrong_err["speed_kph_true"]),
              "by_kernel": by_kernel, "by_road_class": {}, "by_length": {}}
    for c in sorted(set(e["road_class"].dropna())):
        result["by_road_class"][c] = block((e["road_class"] == c).to_numpy(), (et["road_class"] == c).to_numpy(),
                                           (j["road_class"] == c).to_numpy())
    lengths = {name: frame["segment_id"].map(seg_len).to_numpy() for name, frame in (("e", e), ("et", et), ("j", j))}
    for lo, hi in itertools.pairwise(LENGTH_BANDS_M):
        band = {k: (v >= lo) & (v < hi) for k, v in lengths.items()}
        result["by_length"][f"{lo:g}-{hi:g} m"] = block(band["e"], band["et"], band["j"])
    return result


def _print(r: dict) -> None:
    print(f"{r['interval_s']:>5g} s  {r['timing']:<8}  buckets {r['buckets']:>6}  end-to-end {r['end_to_end_mae_kph']}  "
          f"estimation {r['estimation_mae_kph']}  wrong segment {r['matching_wrong_share']:.2%} "
          f"({r['matching_mae_kph']})  timing {r['timing_mae_kph']} (bias {r['timing_bias_kph']})  "
          f"partial {r['partial_share']:.1%} ({r['partial_mae_kph']})  match {r['match_cpu_s']} CPU-s", flush=True)
    for name, kr in r["by_kernel"].items():
        a, p = kr["all"], kr["published"]
        print(f"        kernel {name:<11} all {a['buckets']:>6} e2e {a['end_to_end_mae_kph']} est "
              f"{a['estimation_mae_kph']} | published (k>=3) {p['buckets']:>5} e2e {p['end_to_end_mae_kph']} est "
              f"{p['estimation_mae_kph']} p85-p15 {p['p85_minus_p15_kph']} conf {p['confidence']}", flush=True)
    for group in ("by_road_class", "by_length"):
        for name, b in r[group].items():
            print(f"        {name:<15} buckets {b['buckets']:>6} e2e {b['end_to_end_mae_kph']} est "
                  f"{b['estimation_mae_kph']} timing {b['timing_mae_kph']} (bias {b['timing_bias_kph']}) "
                  f"kept {b['kept_traversals']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--intervals", default="1,5,10,30", help="sampling intervals, seconds (default %(default)s)")
    ap.add_argument("--vehicles", type=int, default=60, help="vehicles per fleet (default %(default)s)")
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--kernels", default="1;1-2-1;1-2-3-2-1;1-1-1-1-1",
                    help="observed-bucket kernels to compare, ';'-separated weights (default %(default)s)")
    ap.add_argument("--timing", default="expected,distance",
                    help="ways of timing traversals between fixes to compare: expected, distance (default %(default)s)")
    ap.add_argument("--osm", default=str(DATA / "osm_porto" / "porto.osm.pbf"))
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result file (default %(default)s)")
    args = ap.parse_args(argv)
    try:
        intervals = [float(x) for x in args.intervals.split(",") if x.strip()]
    except ValueError:
        print(f"error: --intervals {args.intervals}: expected comma-separated seconds", file=sys.stderr)
        return 2
    from speedprofile.aggregate.kernels import check_kernel

    try:
        kernels = [check_kernel(tuple(int(w) for w in k.split("-"))) for k in args.kernels.split(";") if k.strip()]
    except ValueError as e:
        print(f"error: --kernels {args.kernels}: {e}", file=sys.stderr)
        return 2
    timings = [x.strip() for x in args.timing.split(",") if x.strip()]
    if not timings or set(timings) - set(TIMINGS):
        print(f"error: --timing {args.timing}: expected a comma-separated subset of {', '.join(TIMINGS)}",
              file=sys.stderr)
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
            for r in one_interval(wh, seg, iv, args.vehicles, args.days, work, kernels, timings):
                results.append(r)
                _print(r)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "speed_error", "osm": args.osm, "noise_m": 5.0,
                               "params": MatchParams().to_dict(), "results": results}, indent=2))
    print(f"results={out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
