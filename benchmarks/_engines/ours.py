"""Our HMM matcher (`speedprofile.matching.Matcher.match_points`) on the warehouse's road_segments; its path legs
are already our directed segments.

Units: metres, seconds, WGS84 degrees.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks._engines.common import PathMatch, Trace, dedupe_consecutive

MIN_COVER_M = 0.25  # same slack as the Valhalla overlap test (common.END_SLACK_M)


class OursEngine:
    """speedprofile's matcher; one routing network per grid cell size, one Matcher per (noise) configuration."""

    name = "ours"

    def __init__(self, warehouse: str, segments: pd.DataFrame):
        self.warehouse = warehouse
        self.segments = segments
        self._nets: dict[float, object] = {}
        self.matcher = None

    def _network(self, cell_m: float):
        from speedprofile.matching.network import build_network, network_from_table

        if cell_m not in self._nets:
            try:
                self._nets[cell_m] = network_from_table(self.segments, cell_m=cell_m)
            except (ValueError, OverflowError):
                # reverse ids beyond 2**53 do not survive a float cast: let the network pair twins by nodes
                segs = self.segments
                nv = np.array([len(g) for g in segs["geom_lon_deg"]], np.int64)
                self._nets[cell_m] = build_network(
                    segs["segment_id"].to_numpy(np.int64), segs["from_node_id"].to_numpy(np.int64),
                    segs["to_node_id"].to_numpy(np.int64), segs["length_m"].to_numpy(np.float64),
                    np.concatenate([[0], np.cumsum(nv)]), np.concatenate(segs["geom_lon_deg"].to_list()),
                    np.concatenate(segs["geom_lat_deg"].to_list()), cell_m=cell_m)
        return self._nets[cell_m]

    def prepare(self) -> None:
        """Build the routing network (and compile the matcher's inner loops on a two-fix warm-up trace)."""
        from speedprofile.matching import Matcher, MatchParams

        params = MatchParams()
        m = Matcher(self._network(max(2 * params.radius_m, 20.0)), params)
        lon = np.asarray(self.segments["geom_lon_deg"].iloc[0], np.float64)[:2]
        lat = np.asarray(self.segments["geom_lat_deg"].iloc[0], np.float64)[:2]
        m.match_points(lon, lat, np.array([0.0, 10.0]))

    def configure(self, noise_m: float, interval_s: float) -> None:
        """Tell the matcher the GPS noise of the cell (the same figure every engine gets)."""
        from speedprofile.matching import Matcher, MatchParams

        sigma = max(float(noise_m), 1.0)
        # thinning distance follows the kernel's own rule (2 sigma; its default 8.14 m is 2 x the default sigma)
        params = MatchParams(sigma_m=sigma, radius_m=max(50.0, 4.0 * sigma), thin_m=2.0 * sigma)
        self.matcher = Matcher(self._network(max(2 * params.radius_m, 20.0)), params)

    def match(self, trace: Trace):
        return self.matcher.match_points(trace.lon, trace.lat, trace.t_s - trace.t_s[0])

    def to_segments(self, raw) -> PathMatch:
        """Segments of the path legs that cover at least MIN_COVER_M of their segment."""
        legs = raw.legs
        if legs is None or legs.empty:
            return PathMatch(failed=True)
        cover = (legs["off1_m"] - legs["off0_m"]).abs().to_numpy()
        ids = legs["segment_id"].to_numpy()[cover >= MIN_COVER_M]
        if len(ids) == 0:
            return PathMatch(failed=True)
        return PathMatch(segment_ids=dedupe_consecutive(ids.tolist()))
