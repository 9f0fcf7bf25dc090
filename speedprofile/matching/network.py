"""Routing structures of one road network, built once and reused for every trace matched on it.

Grain: one directed segment (dense index 0..S-1) and one node (dense index 0..N-1). Units: metres in a local
equirectangular projection centred on the network; segment lengths are the table's geodesic `length_m`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EARTH_RADIUS_M = 6_371_008.8
_DEG = np.pi / 180.0
# road_segments columns the matcher reads (what a job must send its workers); road_class and maxspeed_kph are
# optional: without them every segment has the same expected speed and times are shared by distance.
NETWORK_COLUMNS = ["segment_id", "from_node_id", "to_node_id", "reverse_segment_id", "length_m", "geom_lon_deg",
                   "geom_lat_deg", "partition", "road_class", "maxspeed_kph"]
MIN_EXPECTED_KPH = 5.0  # a tagged limit below this (a typo, "walk") is not a driving speed


def expected_speed_kph(road_class, maxspeed_kph=None) -> np.ndarray:
    """Per segment, the speed a vehicle is expected to drive (km/h): the posted limit when tagged, else the class's
    typical speed (aggregate.kernels.DEFAULT_CLASS_SPEED_KPH, 'unknown' for a class not in it). Only the ratios
    between segments matter: the matcher shares the time between two fixes along the path in proportion to it."""
    from speedprofile.aggregate.kernels import DEFAULT_CLASS_SPEED_KPH

    classes = np.asarray(road_class, dtype=object)
    default = DEFAULT_CLASS_SPEED_KPH["unknown"]
    kph = np.array([DEFAULT_CLASS_SPEED_KPH.get(c, default) for c in classes.tolist()], np.float64)
    if maxspeed_kph is not None:
        ms = np.asarray(maxspeed_kph, np.float64)
        tagged = np.isfinite(ms) & (ms >= MIN_EXPECTED_KPH)
        kph[tagged] = ms[tagged]
    return kph


def _unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique values (sort-based; numpy's hash-based unique is slow on large int arrays)."""
    a = np.sort(a, kind="stable")
    if len(a) == 0:
        return a
    return a[np.concatenate([[True], a[1:] != a[:-1]])]


def _unique_inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(a, kind="stable")
    sa = a[order]
    if len(a) == 0:
        return sa, np.zeros(0, np.int64)
    new = np.concatenate([[True], sa[1:] != sa[:-1]])
    inv = np.empty(len(a), np.int64)
    inv[order] = np.cumsum(new) - 1
    return sa[new], inv


@dataclass
class RoutingNetwork:
    """CSR adjacency, segment arrays and a uniform grid over the segment geometry pieces."""

    segment_id: np.ndarray      # int64 [S] table id of each dense segment
    seg_from: np.ndarray        # int64 [S] dense from-node
    seg_to: np.ndarray          # int64 [S] dense to-node
    seg_len: np.ndarray         # float64 [S] metres (geodesic)
    seg_rev: np.ndarray         # int64 [S] dense index of the reverse twin, -1 if none
    seg_scale: np.ndarray       # float64 [S] geodesic length / projected length
    seg_partition: np.ndarray   # object [S] partition cell ('' when unknown)
    n_nodes: int
    out_ptr: np.ndarray         # int64 [N+1] CSR row pointers: outgoing segments of each node
    out_seg: np.ndarray         # int64 [S]
    lon0: float
    lat0: float
    kx: float                   # metres per degree of longitude at lat0
    ky: float                   # metres per degree of latitude
    # geometry pieces (one per consecutive vertex pair) and the grid index over them
    pc_seg: np.ndarray
    pc_x0: np.ndarray
    pc_y0: np.ndarray
    pc_x1: np.ndarray
    pc_y1: np.ndarray
    pc_off0: np.ndarray
    cell_m: float
    gx0: float
    gy0: float
    ncy: int
    grid_keys: np.ndarray
    grid_ptr: np.ndarray
    grid_items: np.ndarray
    # expected seconds per metre of each segment (1 / expected speed); None when all segments are alike
    seg_pace: np.ndarray | None = None

    @property
    def n_segments(self) -> int:
        return len(self.segment_id)

    def project(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """WGS84 degrees -> local metres (x east, y north)."""
        return (np.asarray(lon, np.float64) - self.lon0) * self.kx, (np.asarray(lat, np.float64) - self.lat0) * self.ky

    def index_of(self, segment_ids: np.ndarray) -> np.ndarray:
        """Dense index per table segment id, -1 when the id is not in this network."""
        ids = np.asarray(segment_ids, np.int64)
        order = self._id_order
        pos = np.searchsorted(self.segment_id[order], ids)
        pos = np.minimum(pos, len(order) - 1) if len(order) else pos
        if not len(order):
            return np.full(len(ids), -1, np.int64)
        hit = self.segment_id[order][pos] == ids
        return np.where(hit, order[pos], -1)

    @property
    def _id_order(self) -> np.ndarray:
        if not hasattr(self, "_order_cache"):
            self._order_cache = np.argsort(self.segment_id, kind="stable")
        return self._order_cache


def build_network(
    segment_id, from_node_id, to_node_id, length_m, geom_offsets, geom_lon, geom_lat,
    reverse_segment_id=None, partition=None, cell_m: float = 100.0, reverse_valid=None, expected_kph=None,
) -> RoutingNetwork:
    """Routing structures from flat columns; geometry as vertex arrays with offsets (segment k = [off[k], off[k+1])).

    Reverse twins come from `reverse_segment_id` (int64; `reverse_valid` masks nulls, else negative = none) or,
    when it is None, from the (to, from) node pairs. `expected_kph` (per segment, see `expected_speed_kph`) shares
    the time between fixes along the path; None = the same everywhere (by distance).
    """
    seg_ids = np.asarray(segment_id, np.int64)
    n = len(seg_ids)
    fn = np.asarray(from_node_id, np.int64)
    tn = np.asarray(to_node_id, np.int64)
    nodes, inv = _unique_inverse(np.concatenate([fn, tn]))
    seg_from = inv[:n].astype(np.int64)
    seg_to = inv[n:].astype(np.int64)
    n_nodes = len(nodes)
    seg_len = np.asarray(length_m, np.float64).copy()
    seg_len[~np.isfinite(seg_len)] = 0.0
    seg_len = np.maximum(seg_len, 0.0)
    # reverse twin: given ids, else derived from (to, from) node pairs
    if reverse_segment_id is not None:
        if reverse_valid is None:
            rev_ids = np.asarray(reverse_segment_id, dtype=np.int64)
            reverse_valid = rev_ids >= 0
        else:
            rev_ids = np.asarray(reverse_segment_id, dtype=np.int64)
        reverse_valid = np.asarray(reverse_valid, bool)
        seg_rev = np.full(n, -1, np.int64)
        if n:
            order = np.argsort(seg_ids, kind="stable")
            pos = np.minimum(np.searchsorted(seg_ids[order], rev_ids), n - 1)
            hit = reverse_valid & (seg_ids[order][pos] == rev_ids)
            seg_rev[hit] = order[pos][hit]
    else:
        key = seg_from * n_nodes + seg_to
        rkey = seg_to * n_nodes + seg_from
        order = np.argsort(key, kind="stable")
        pos = np.minimum(np.searchsorted(key[order], rkey), max(n - 1, 0))
        seg_rev = np.where((key[order][pos] == rkey) & (seg_from != seg_to), order[pos], -1).astype(np.int64) if n else np.zeros(0, np.int64)
    # CSR of outgoing segments per node
    order = np.argsort(seg_from, kind="stable")
    out_seg = order.astype(np.int64)
    counts = np.bincount(seg_from, minlength=n_nodes)
    out_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    # projection
    glon = np.asarray(geom_lon, np.float64)
    glat = np.asarray(geom_lat, np.float64)
    offs = np.asarray(geom_offsets, np.int64)
    if len(glon):
        lon0 = float((glon.min() + glon.max()) / 2)
        lat0 = float((glat.min() + glat.max()) / 2)
    else:
        lon0 = lat0 = 0.0
    ky = EARTH_RADIUS_M * _DEG
    kx = ky * float(np.cos(lat0 * _DEG))
    X = (glon - lon0) * kx
    Y = (glat - lat0) * ky
    # pieces: vertex pairs inside one segment
    nv = np.diff(offs)
    vseg = np.repeat(np.arange(n, dtype=np.int64), nv)
    if len(X) > 1:
        same = vseg[:-1] == vseg[1:]
        a = np.nonzero(same)[0]
    else:
        a = np.zeros(0, np.int64)
    pc_seg = vseg[a] if len(a) else np.zeros(0, np.int64)
    pc_x0, pc_y0, pc_x1, pc_y1 = X[a], Y[a], X[a + 1], Y[a + 1]
    plen = np.hypot(pc_x1 - pc_x0, pc_y1 - pc_y0)
    # offset of each piece's start along its segment (projected metres)
    cum = np.cumsum(plen)
    seg_first_piece = np.searchsorted(pc_seg, np.arange(n))
    start_cum = np.concatenate([[0.0], cum])[seg_first_piece]
    pc_off0 = np.concatenate([[0.0], cum])[: len(plen)] - start_cum[pc_seg] if len(plen) else np.zeros(0)
    proj_len = np.bincount(pc_seg, weights=plen, minlength=n) if len(plen) else np.zeros(n)
    seg_scale = np.divide(seg_len, proj_len, out=np.ones(n), where=proj_len > 0)
    # grid: sample each piece every cell/2 and register the 3x3 cells around each sample
    if len(plen):
        gx0 = float(X.min()) - 2 * cell_m
        gy0 = float(Y.min()) - 2 * cell_m
        ncy = int((Y.max() - gy0) // cell_m) + 3
        ns = (np.ceil(plen / (cell_m / 2)).astype(np.int64) + 1)
        pid = np.repeat(np.arange(len(plen), dtype=np.int64), ns)
        first = np.concatenate([[0], np.cumsum(ns)[:-1]])
        j = np.arange(len(pid)) - np.repeat(first, ns)
        tt = j / np.maximum(ns[pid] - 1, 1)
        sx = pc_x0[pid] + tt * (pc_x1[pid] - pc_x0[pid])
        sy = pc_y0[pid] + tt * (pc_y1[pid] - pc_y0[pid])
        cx = np.floor((sx - gx0) / cell_m).astype(np.int64)
        cy = np.floor((sy - gy0) / cell_m).astype(np.int64)
        base = _unique((cx * ncy + cy) * len(plen) + pid)
        bkey, bpid = base // len(plen), base % len(plen)
        bcx, bcy = bkey // ncy, bkey % ncy
        keys = []
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                keys.append(((bcx + dx) * ncy + (bcy + dy)) * len(plen) + bpid)
        comb = _unique(np.concatenate(keys))
        gkey = comb // len(plen)
        items = comb % len(plen)
        first_of_key = np.concatenate([[True], gkey[1:] != gkey[:-1]])
        grid_keys, start = gkey[first_of_key], np.nonzero(first_of_key)[0]
        grid_ptr = np.concatenate([start, [len(gkey)]]).astype(np.int64)
    else:
        gx0 = gy0 = 0.0
        ncy = 1
        grid_keys = np.zeros(0, np.int64)
        grid_ptr = np.zeros(1, np.int64)
        items = np.zeros(0, np.int64)
    seg_part = np.asarray(partition, dtype=object) if partition is not None else np.full(n, "", dtype=object)
    pace = None
    if expected_kph is not None and n:
        kph = np.asarray(expected_kph, np.float64)
        kph = np.where(np.isfinite(kph) & (kph >= MIN_EXPECTED_KPH), kph, np.nan)
        kph = np.where(np.isnan(kph), np.nanmedian(kph) if np.isfinite(kph).any() else 1.0, kph)
        if kph.min() < kph.max():
            pace = 3.6 / kph
    return RoutingNetwork(
        segment_id=seg_ids, seg_from=seg_from, seg_to=seg_to, seg_len=seg_len, seg_rev=seg_rev,
        seg_scale=seg_scale, seg_partition=seg_part, n_nodes=n_nodes, out_ptr=out_ptr, out_seg=out_seg,
        lon0=lon0, lat0=lat0, kx=kx, ky=ky,
        pc_seg=pc_seg.astype(np.int64), pc_x0=pc_x0, pc_y0=pc_y0, pc_x1=pc_x1, pc_y1=pc_y1, pc_off0=pc_off0,
        cell_m=float(cell_m), gx0=gx0, gy0=gy0, ncy=ncy,
        grid_keys=grid_keys.astype(np.int64), grid_ptr=grid_ptr, grid_items=items.astype(np.int64), seg_pace=pace,
    )


def network_from_table(table, cell_m: float = 100.0) -> RoutingNetwork:
    """RoutingNetwork from road_segments rows (pyarrow.Table or pandas.DataFrame with the ROAD_SEGMENTS columns)."""
    import pyarrow as pa

    if not isinstance(table, pa.Table):
        table = _arrow_from_pandas(table)
    table = table.combine_chunks()

    def col(name):
        return table.column(name).chunk(0) if table.column(name).num_chunks else table.column(name).combine_chunks()

    glon = col("geom_lon_deg")
    glat = col("geom_lat_deg")
    offs = np.asarray(glon.offsets, np.int64)
    lon = np.asarray(glon.values, np.float64)
    lat = np.asarray(glat.values, np.float64)
    if not np.array_equal(np.asarray(glat.offsets, np.int64), offs):
        raise ValueError("geom_lon_deg and geom_lat_deg differ in vertex counts")
    rev = col("reverse_segment_id") if "reverse_segment_id" in table.column_names else None
    rev_np = rev_ok = None
    if rev is not None:
        rev_ok = ~np.asarray(rev.is_null().to_numpy(zero_copy_only=False), bool)
        rev_np = np.asarray(rev.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), np.int64)
    part = (np.asarray(col("partition").to_pylist(), dtype=object)
            if "partition" in table.column_names else None)
    kph = None
    if "road_class" in table.column_names:
        ms = (col("maxspeed_kph").cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
              if "maxspeed_kph" in table.column_names else None)
        kph = expected_speed_kph(col("road_class").to_pylist(), ms)
    return build_network(
        col("segment_id").to_numpy(zero_copy_only=False), col("from_node_id").to_numpy(zero_copy_only=False),
        col("to_node_id").to_numpy(zero_copy_only=False), col("length_m").to_numpy(zero_copy_only=False),
        offs - offs[0] if len(offs) else offs, lon[offs[0]:] if len(offs) else lon,
        lat[offs[0]:] if len(offs) else lat, reverse_segment_id=rev_np, partition=part, cell_m=cell_m,
        reverse_valid=rev_ok, expected_kph=kph,
    )


def _arrow_from_pandas(df):
    import pyarrow as pa

    cols = {}
    for c in ("segment_id", "from_node_id", "to_node_id"):
        cols[c] = pa.array(np.asarray(df[c], np.int64))
    cols["length_m"] = pa.array(np.asarray(df["length_m"], np.float64))
    if "reverse_segment_id" in df.columns:
        r = df["reverse_segment_id"]
        mask = r.isna().to_numpy(bool)
        vals = np.asarray(r.where(~r.isna(), 0).astype("int64").to_numpy(), np.int64)
        cols["reverse_segment_id"] = pa.array(vals, mask=mask, type=pa.int64())
    for c in ("geom_lon_deg", "geom_lat_deg"):
        cols[c] = pa.array([np.asarray(v, np.float64) for v in df[c]], type=pa.list_(pa.float64()))
    if "road_class" in df.columns:
        cols["road_class"] = pa.array(df["road_class"].astype(object).where(df["road_class"].notna(), None),
                                      type=pa.string())
    if "maxspeed_kph" in df.columns:
        cols["maxspeed_kph"] = pa.array(df["maxspeed_kph"].to_numpy(np.float64, na_value=np.nan), type=pa.float64(), from_pandas=True)
    if "partition" in df.columns:
        cols["partition"] = pa.array(df["partition"].astype(object).where(df["partition"].notna(), None), type=pa.string())
    return pa.table(cols)
