"""How much better traversal speeds get when matching knows each segment's speed: the timing of traversals between
sparse fixes with the network's expected speeds, with the simulator's true speeds (upper bounds), and with speeds
learnt back from the same fleet's matched traversals.

    .venv/bin/python benchmarks/timing_prior.py [--vehicles 250] [--days 3] [--interval-s 10]
        [--configs default,oracle_free_flow,oracle_time_of_day,feedback,tomography] [--iterations 2] [--out FILE]

Between two fixes 10 s apart a car crosses several short segments; the matcher shares the time between them by
their expected travel time (`MatchParams.expected_time`: free-flow speeds from `road_class` and `maxspeed_kph`).
The simulator drives each segment at its own speed (a per-segment free-flow factor in [0.85, 1.10] and rush-hour
depth factor in [0.7, 1.3], see docs/simulator.md), which the network does not tell. Each config matches the same
fleet (Porto, 5 m noise, the demo's interval) with other expected speeds per segment:

- `default`: the network's expected speeds (what the pipeline does);
- `oracle_free_flow`: the simulator's true free flow per segment (an upper bound: no estimate knows it exactly);
- `oracle_time_of_day`: the simulator's true speed per segment in the bucket of the trace's middle fix;
- `feedback`: per segment, the median speed of the kept traversals of the previous round (>= 3 of them; else the
  network's expected speed), repeated `--iterations` times: what a pipeline could learn from its own output;
- `tomography`: per segment and time band (weekday night, AM peak, midday, PM peak; weekend), the paces that best
  explain every stretch between two consecutive fixes (sparse least squares, damped toward the expected pace).

Scores (km/h): `timing_mae_kph` of kept traversals on driven segments against their true speed, and the MAE of
the estimates against the truth over every bucket with data (k = 1) and over the buckets published as observed
(k = MIN_TRACES), through the same bucketing, histogram and estimation kernels as `speed_error.py`.

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
for p in (REPO, REPO / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import speed_error as se  # noqa: E402

DATA = Path(os.environ.get("SPEEDPROFILE_DATA", REPO.parent / "shared" / "data"))
DEFAULT_OUT = Path(tempfile.gettempdir()) / "speedprofile-bench" / "timing_prior.json"
CONFIGS = ("default", "oracle_free_flow", "oracle_time_of_day", "feedback", "tomography")
TOMOGRAPHY_DAMP = 1.0  # damping of the relative pace change (0.1 and 0.3 were worse still)
FEEDBACK_MIN_TRAVERSALS = 3


def band_of(tow_bucket: int) -> int:
    """Time band of a local time-of-week bucket: 0 weekday night/evening, 1 AM peak (07-10), 2 PM peak
    (16-19:30), 3 midday, 4 weekend."""
    from speedprofile.simulate.traffic import BUCKET_MINUTES, BUCKETS_PER_DAY

    day, minute = tow_bucket // BUCKETS_PER_DAY, (tow_bucket % BUCKETS_PER_DAY) * BUCKET_MINUTES
    if day in (0, 6):
        return 4
    if 420 <= minute < 600:
        return 1
    if 960 <= minute < 1170:
        return 2
    return 3 if 600 <= minute < 960 else 0


class Fleet:
    """One simulated fleet, its truth and a matcher on its network; `run(name, pace_of)` matches every trace with
    the paces (s/m per network segment) `pace_of(trace fixes)` gives and scores the result."""

    def __init__(self, wh: str, sim: str):
        from speedprofile.matching.kernel import Matcher, MatchParams
        from speedprofile.network.graph import load_road_segments_table
        from speedprofile.simulate.network import SimNetwork

        rs = load_road_segments_table(wh)
        seg = rs.select(["segment_id", "length_m", "road_class", "timezone"]).to_pandas()
        probes, paths, self.truth = se.load_fleet(sim, seg)
        self.traces = [(tid, g) for tid, g in probes.groupby("trace_id", sort=False)]
        self.fixes = len(probes)
        self.true_tr = se.true_traversals(paths)
        self.tz = dict(zip(seg["segment_id"], seg["timezone"], strict=True))
        self.matcher = Matcher(rs, MatchParams())
        self.net = self.matcher.net
        self.base_pace = self.net.seg_pace.copy()
        sim_net = SimNetwork(rs)
        order = pd.Series(np.arange(len(sim_net.segment_id)), index=sim_net.segment_id)
        self.sim_idx = order.loc[self.net.segment_id].to_numpy()  # matcher's segment -> the simulator's row
        self.model = sim_net.model
        self.zone = sim_net.main_zone()
        self.stretches: list[tuple] = []  # filled by a `capture` run: (legs' segment, start, end, anchors, times, tow)

    def tow(self, fixes: pd.DataFrame) -> int:
        """Local time-of-week bucket of the trace's middle fix (the bucketing stage's rule, in the network's zone)."""
        from speedprofile.aggregate.kernels import bucket_instant

        t = fixes["timestamp_utc"].iloc[len(fixes) // 2].to_pydatetime()
        return int(bucket_instant(t, self.zone)["tow_bucket"])

    def run(self, name: str, pace_of, capture: bool = False) -> tuple[dict, pd.DataFrame]:
        from schemas.segment_traversals import MIN_CONFIDENCE
        from schemas.speed_estimates import MIN_TRACES

        matcher = _anchor_matcher(self) if capture else self.matcher
        c0 = time.process_time()
        frames = []
        for tid, g in self.traces:
            self.net.seg_pace = pace_of(g)
            if capture:
                matcher.tow = self.tow(g)
            tr = matcher.match(g).traversals
            if len(tr):
                frames.append(tr.assign(trace_id=tid, piece=0))
        cpu = time.process_time() - c0
        self.net.seg_pace = self.base_pace
        trav = pd.concat(frames, ignore_index=True)
        trav = trav[trav["reject_reason"].isna()].copy()
        trav["enter_time_utc"] = trav["enter_time_utc"].astype(str)
        trav["exit_time_utc"] = trav["exit_time_utc"].astype(str)
        j = trav.merge(self.true_tr, on=["trace_id", "segment_id"], how="left")
        kept = j["is_complete"].astype(bool) & (j["confidence"] >= MIN_CONFIDENCE)
        ok = kept & j["true_kph"].notna()
        r = {"config": name, "match_cpu_s": round(cpu, 2), "kept_traversals": int(kept.sum()),
             "timing_mae_kph": se._mae(j.loc[ok, "speed_kph"], j.loc[ok, "true_kph"]),
             "timing_bias_kph": se._mean(j.loc[ok, "speed_kph"] - j.loc[ok, "true_kph"])}
        for k, tag in ((1, "all"), (MIN_TRACES, "published")):
            e = se._estimates(j[kept].drop(columns=["true_kph"]), self.tz, min_traces=k)
            e = e.merge(self.truth, on=["segment_id", "tow_bucket"])
            r[tag] = {"buckets": len(e), "end_to_end_mae_kph": se._mae(e["speed_kph_est"], e["speed_kph_true"])}
        print(f"{name:<24} timing MAE {r['timing_mae_kph']:.2f} (bias {r['timing_bias_kph']:+.2f}); estimates MAE "
              f"{r['all']['end_to_end_mae_kph']:.2f} over {r['all']['buckets']:,} buckets, published "
              f"{r['published']['end_to_end_mae_kph']:.2f} over {r['published']['buckets']:,}; "
              f"match {cpu:.1f} CPU-s", flush=True)
        return r, j[kept].drop(columns=["true_kph"])

    def feedback_pace(self, kept: pd.DataFrame) -> np.ndarray:
        """Per segment: the median speed of its kept traversals (>= FEEDBACK_MIN_TRAVERSALS), else expected."""
        g = kept.groupby("segment_id")["speed_kph"].agg(["median", "size"])
        g = g[g["size"] >= FEEDBACK_MIN_TRAVERSALS]["median"]
        kph = pd.Series(3.6 / self.base_pace, index=self.net.segment_id)
        common = g.index.intersection(kph.index)
        kph.loc[common] = g.loc[common]
        return 3.6 / kph.to_numpy()

    def tomography_paces(self, n_bands: int = 5) -> np.ndarray:
        """Paces per (band, segment) that best explain the captured stretches' times (sparse least squares on the
        relative change, rows weighted by 1 / duration, damped toward the expected pace)."""
        from scipy.sparse import csr_matrix
        from scipy.sparse.linalg import lsqr

        nseg = len(self.net.segment_id)
        rows, cols, vals, rhs = [], [], [], []
        for lseg, x0, x1, s, t, tow in self.stretches:
            b = band_of(tow)
            for k in range(len(s) - 1):
                a, c, dt = s[k], s[k + 1], t[k + 1] - t[k]
                if c - a < 1.0 or dt <= 0 or c - a > 5e6 or (c - a) / dt * 3.6 < 3.0:
                    continue  # no movement, a chain boundary, or a stop
                i0, i1 = np.searchsorted(x1, a, side="right"), np.searchsorted(x0, c, side="left")
                for i in range(i0, i1):
                    overlap = min(c, x1[i]) - max(a, x0[i])
                    if overlap > 0:
                        rows.append(len(rhs))
                        cols.append(b * nseg + lseg[i])
                        vals.append(overlap)
                rhs.append(dt)
        rhs = np.asarray(rhs)
        p0 = np.tile(self.base_pace, n_bands)
        w = 1.0 / np.maximum(rhs, 1.0)
        m = csr_matrix((vals, (rows, cols)), shape=(len(rhs), n_bands * nseg))
        m = csr_matrix(m.multiply(w[:, None]).multiply(p0[None, :]))
        q = lsqr(m, rhs * w - m @ np.ones(len(p0)), damp=TOMOGRAPHY_DAMP, iter_lim=2000)[0]
        return (p0 * np.clip(1 + q, 0.3, 3.0)).reshape(n_bands, nseg)


def _anchor_matcher(fleet: Fleet):
    """A matcher like the fleet's that also records, per trace (its bucket in `.tow`), the fixes' path positions
    and times next to the path's legs: the stretches between consecutive fixes, for the tomography."""
    from speedprofile.matching import kernel as KM

    class AnchorMatcher(KM.Matcher):
        tow = 0

        def _leg_times(self, lseg, lo0, lo1, lchain, ls0, chain, ppos, t_s, smooth_s=0.0, pace=None):
            ok = chain >= 0
            if len(lseg) and ok.any():
                s = chain[ok] * KM._BIG_M + KM._smooth_positions(ppos[ok], chain[ok], t_s[ok], smooth_s)
                x0 = lchain * KM._BIG_M + ls0
                fleet.stretches.append((lseg.copy(), x0, x0 + (lo1 - lo0), np.maximum.accumulate(s),
                                        t_s[ok].copy(), self.tow))
            return KM.Matcher._leg_times(lseg, lo0, lo1, lchain, ls0, chain, ppos, t_s, smooth_s, pace)

    return AnchorMatcher(fleet.net, fleet.matcher.params)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vehicles", type=int, default=250)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--interval-s", type=float, default=10.0)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of %(default)s")
    ap.add_argument("--iterations", type=int, default=2, help="feedback rounds (default %(default)s)")
    ap.add_argument("--osm", default=str(DATA / "osm_porto" / "porto.osm.pbf"))
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON result file (default %(default)s)")
    args = ap.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs or set(configs) - set(CONFIGS):
        print(f"error: --configs {args.configs}: expected a comma-separated subset of {', '.join(CONFIGS)}",
              file=sys.stderr)
        return 2
    if args.vehicles < 1 or args.days < 1 or not args.interval_s > 0 or args.iterations < 1:
        print("error: --vehicles, --days, --iterations >= 1 and --interval-s > 0", file=sys.stderr)
        return 2
    if not os.path.exists(args.osm):
        print(f"error: --osm {args.osm}: no such file", file=sys.stderr)
        return 2
    from speedprofile.matching.kernel import MatchParams, warm_up
    from speedprofile.network.build import build
    from speedprofile.simulate.fleet import simulate

    warm_up()
    results = []
    with tempfile.TemporaryDirectory() as work:
        wh, sim = os.path.join(work, "wh"), os.path.join(work, "sim")
        build(wh, osm=args.osm)
        simulate(wh, sim, days=args.days, vehicles=args.vehicles, interval_s=args.interval_s, noise_m=5.0, seed=7)
        fleet = Fleet(wh, sim)
        print(f"fleet: {fleet.fixes:,} fixes, {len(fleet.traces):,} traces, {args.interval_s:g} s, {fleet.zone}")
        r, kept = fleet.run("default", lambda g: fleet.base_pace, capture="tomography" in configs)
        results.append(r)
        if "oracle_free_flow" in configs:
            pace = 3.6 / fleet.model.free_flow_kph[fleet.sim_idx]
            results.append(fleet.run("oracle_free_flow", lambda g: pace)[0])
        if "oracle_time_of_day" in configs:
            def true_pace(g):
                b = np.full(len(fleet.sim_idx), fleet.tow(g))
                return 3.6 / fleet.model.speed_kph(fleet.sim_idx, b)
            results.append(fleet.run("oracle_time_of_day", true_pace)[0])
        if "feedback" in configs:
            prev = kept
            for i in range(args.iterations):
                pace = fleet.feedback_pace(prev)
                r, prev = fleet.run(f"feedback_{i + 1}", lambda g, p=pace: p)
                results.append(r)
        if "tomography" in configs:
            bands = fleet.tomography_paces()
            results.append(fleet.run("tomography", lambda g: bands[band_of(fleet.tow(g))])[0])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "timing_prior", "osm": args.osm, "vehicles": args.vehicles,
                               "days": args.days, "interval_s": args.interval_s, "noise_m": 5.0,
                               "fixes": fleet.fixes, "params": MatchParams().to_dict(), "results": results},
                              indent=2))
    print(f"results={out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
