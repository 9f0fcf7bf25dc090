"""Our HMM matcher (`speedprofile.matching.Matcher.match_points`) on the warehouse's road_segments; its path legs
are already our directed segments.

Units: metres, seconds, WGS84 degrees.
"""

from __future__ import annotations

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
        from speedprofile.matching.network import network_from_table

        if cell_m not in self._nets:
            self._nets[cell_m] = network_from_table(self.segments, cell_m=cell_m)
        return self._nets[cell_m]

    def prepare(self) -> None:
        """Compile (or load) the matcher's numba kernels and build the routing network."""
        from speedprofile.matching import MatchParams
        from speedprofile.matching.kernel import warm_up

        warm_up()
        self._network(max(2 * MatchParams().radius_m, 20.0))

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
