"""fastmm (an FMM derivative: HMM + precomputed upper-bounded origin-destination table) on our own directed
segments: edge id = our segment_id, source/target = our node ids, geometry projected to local metres.

Units: metres, seconds, WGS84 degrees in, metres inside fastmm.
"""

from __future__ import annotations

import os

import pandas as pd

from benchmarks._engines.common import LocalProjection, PathMatch, Trace, dedupe_consecutive

MIN_COVER_M = 0.25  # same slack as the Valhalla overlap test (common.END_SLACK_M)


class FastmmEngine:
    """fastmm FastMapMatch in SHORTEST mode; `match` is the timed call, `to_segments` reads edge ids."""

    name = "fastmm"

    def __init__(self, segments: pd.DataFrame, proj: LocalProjection, cache_dir: str | os.PathLike,
                 delta_m: float = 3000.0):
        self.segments = segments
        self.proj = proj
        self.cache_dir = str(cache_dir)
        self.delta_m = float(delta_m)
        self.network = None
        self.matcher = None
        self.gps_sigma_m = 5.0
        self.search_radius_m = 50.0

    def prepare(self) -> None:
        """Load our segments into a fastmm Network and build (or load from cache) its UBODT."""
        import fastmm

        net = fastmm.Network()
        segs = self.segments
        for sid, a, b, glon, glat in zip(segs["segment_id"].to_numpy(), segs["from_node_id"].to_numpy(),
                                         segs["to_node_id"].to_numpy(), segs["geom_lon_deg"].to_numpy(),
                                         segs["geom_lat_deg"].to_numpy(), strict=True):
            x, y = self.proj.xy(glon, glat)
            net.add_edge(int(sid), source=int(a), target=int(b), geom=list(zip(x.tolist(), y.tolist(), strict=True)))
        net.finalize()
        self.network = net
        os.makedirs(self.cache_dir, exist_ok=True)
        self.matcher = fastmm.FastMapMatch(net, fastmm.TransitionMode.SHORTEST,
                                           max_distance_between_candidates=self.delta_m,
                                           cache_dir=self.cache_dir)

    def configure(self, noise_m: float, interval_s: float) -> None:
        """Tell the matcher the GPS noise of the cell (the same figure every engine gets)."""
        self.gps_sigma_m = max(float(noise_m), 1.0)
        self.search_radius_m = max(50.0, 4.0 * self.gps_sigma_m)

    def match(self, trace: Trace):
        import fastmm

        x, y = self.proj.xy(trace.lon, trace.lat)
        traj = fastmm.Trajectory.from_xyt_tuples(list(zip(x.tolist(), y.tolist(), trace.t_s.tolist(), strict=True)))
        return self.matcher.match(traj, max_candidates=8, candidate_search_radius=self.search_radius_m,
                                  gps_error=self.gps_sigma_m, reverse_tolerance=self.gps_sigma_m)

    def to_segments(self, raw) -> PathMatch:
        """Edge ids of the matched sub-trajectories (fastmm skips the fixes it cannot match)."""
        import fastmm

        ids: list[int] = []
        for sub in raw.subtrajectories:
            if sub.error_code != fastmm.MatchErrorCode.SUCCESS:
                continue
            for seg in sub.segments:
                for e in seg.edges:
                    offsets = [p.edge_offset for p in e.points]
                    # an edge touched only at its end node (a fix snapped exactly onto a junction) is not driven
                    if len(offsets) >= 2 and max(offsets) - min(offsets) >= MIN_COVER_M:
                        ids.append(e.edge_id)
        if not ids:
            return PathMatch(failed=True)
        return PathMatch(segment_ids=dedupe_consecutive(ids))
