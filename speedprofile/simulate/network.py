"""The simulator's view of road_segments: flat geometry arrays, a directed routing graph, local-time offsets.

Segments are rows sorted by segment_id; nodes are compact indices of (from_node_id, to_node_id). Routing uses
free-flow travel time (s) x a class bias toward arterials, restricted to the largest strongly connected component
so every origin reaches every destination.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from speedprofile.network.graph import haversine_m
from speedprofile.simulate.traffic import TrafficModel

SEG_SPAN_M = 1.0e7  # vertex key spacing per segment; segments are far shorter than 10,000 km
_COLUMNS = ["segment_id", "from_node_id", "to_node_id", "length_m", "road_class", "maxspeed_kph",
            "geom_lon_deg", "geom_lat_deg", "timezone"]


def _flat_list(col):
    arr = col.combine_chunks()
    offsets = np.asarray(arr.offsets.to_numpy(), dtype=np.int64)
    values = np.asarray(arr.values.to_numpy(zero_copy_only=False), dtype=np.float64)
    return offsets, values


class SimNetwork:
    """Road segments as numpy arrays plus the routing graph and the traffic model."""

    def __init__(self, table):
        import pyarrow.compute as pc
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import connected_components

        table = table.take(pc.sort_indices(table, [("segment_id", "ascending")]))
        self.n = table.num_rows
        self.segment_id = table.column("segment_id").to_numpy()
        road_class = np.asarray(table.column("road_class").to_numpy(zero_copy_only=False), dtype=object)
        maxspeed = table.column("maxspeed_kph").to_numpy(zero_copy_only=False).astype(np.float64)
        self.model = TrafficModel(self.segment_id, road_class, maxspeed)
        self.road_class = road_class
        off, lon = _flat_list(table.column("geom_lon_deg"))
        off2, lat = _flat_list(table.column("geom_lat_deg"))
        lon, lat = lon[off[0]:off[-1]], lat[off2[0]:off2[-1]]
        self.vert_off = off - off[0]
        self.vlon, self.vlat = lon, lat
        step = haversine_m(lon[:-1], lat[:-1], lon[1:], lat[1:])
        cum = np.concatenate([[0.0], np.cumsum(step)])
        seg_of_vert = np.repeat(np.arange(self.n), np.diff(self.vert_off))
        # distance of each vertex from its segment's first vertex, metres
        self.vcum = cum - cum[self.vert_off[:-1]][seg_of_vert]
        self.length_m = self.vcum[self.vert_off[1:] - 1].copy()
        self.length_m = np.maximum(self.length_m, 0.1)
        # sorted search key of every vertex: segment row x SEG_SPAN_M + distance along the segment
        self.vkey = seg_of_vert * SEG_SPAN_M + self.vcum
        # bearing of the edge starting at each vertex (last vertex of a segment: copy of the previous edge)
        b = _bearing_deg(lon[:-1], lat[:-1], lon[1:], lat[1:])
        self.vbearing = np.concatenate([b, [0.0]])
        last = self.vert_off[1:] - 1
        self.vbearing[last] = self.vbearing[np.maximum(last - 1, self.vert_off[:-1])]
        # time zones: index per segment into self.zones
        tz = np.asarray(table.column("timezone").to_numpy(zero_copy_only=False), dtype=object)
        self.zones, self.zone_idx = np.unique(tz.astype(str), return_inverse=True)
        # nodes
        ends = np.concatenate([table.column("from_node_id").to_numpy(), table.column("to_node_id").to_numpy()])
        self.node_ids, inv = np.unique(ends, return_inverse=True)
        self.src, self.dst = inv[: self.n], inv[self.n:]
        n_nodes = len(self.node_ids)
        ff_time = self.length_m / (self.model.free_flow_kph / 3.6)
        weight = ff_time * self.model.route_bias + 1e-3
        # one edge per (src, dst): the cheapest segment; remember which segment it is
        key = self.src.astype(np.int64) * n_nodes + self.dst
        order = np.lexsort((self.segment_id, weight, key))
        first = np.concatenate([[True], key[order][1:] != key[order][:-1]])
        chosen = order[first]
        self.edge_key = key[chosen]  # sorted ascending
        self.edge_seg = chosen
        self.graph = csr_matrix((weight[chosen], (self.src[chosen], self.dst[chosen])), shape=(n_nodes, n_nodes))
        _, labels = connected_components(self.graph, directed=True, connection="strong")
        biggest = np.bincount(labels).argmax()
        self.core_nodes = np.flatnonzero(labels == biggest)
        self.n_nodes = n_nodes

    def segments_of_node_path_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Segment row index of the routing edge a -> b (node indices) for each pair."""
        key = np.asarray(a, dtype=np.int64) * self.n_nodes + b
        return self.edge_seg[np.searchsorted(self.edge_key, key)]

    def main_zone(self) -> str:
        """The time zone covering most segments (trip hours are drawn in it)."""
        return str(self.zones[np.bincount(self.zone_idx).argmax()])


def _bearing_deg(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Initial bearing 0..360 (0 = north, clockwise) between arrays of points."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    x = np.sin(dl) * np.cos(p2)
    y = np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl)
    return np.mod(np.degrees(np.arctan2(x, y)), 360.0)


def _utcoffset_s(t: datetime, zone) -> float:
    off = t.astimezone(zone).utcoffset()
    return off.total_seconds() if off is not None else 0.0


class UtcOffsets:
    """UTC offset (s) per time zone and UTC hour over a window: offset(zone_idx, t_utc) vectorised.

    Offsets are sampled at each whole UTC hour (time-zone transitions fall on whole hours in nearly all zones).
    """

    def __init__(self, zones, start_utc_s: int, end_utc_s: int):
        from zoneinfo import ZoneInfo

        self.t0 = (int(start_utc_s) // 3600 - 48) * 3600
        hours = (int(end_utc_s) - self.t0) // 3600 + 72
        self.table = np.zeros((len(zones), hours), dtype=np.int64)
        base = datetime.fromtimestamp(self.t0, tz=UTC)
        for i, name in enumerate(zones):
            try:
                zi = ZoneInfo(str(name))
            except Exception:  # unknown name: treat as UTC
                continue
            self.table[i] = [int(_utcoffset_s(base + timedelta(hours=h), zi)) for h in range(hours)]

    def offset_s(self, zone_idx: np.ndarray, t_utc_s: np.ndarray) -> np.ndarray:
        h = ((np.asarray(t_utc_s, dtype=np.float64) - self.t0) // 3600).astype(np.int64)
        h = np.clip(h, 0, self.table.shape[1] - 1)
        return self.table[zone_idx, h]
