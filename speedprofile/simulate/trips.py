"""Fleet kernels, vectorised over a batch of trips: routes, time-dependent driving, GPS fixes.

Times are UTC epoch seconds (float), distances metres, speeds km/h. A batch is many trips at once: traversals and
fixes are flat arrays with a trip index, so the cost per trip is a few numpy operations, not Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from speedprofile.simulate.network import SEG_SPAN_M as _SEG_SPAN_M
from speedprofile.simulate.network import SimNetwork, UtcOffsets
from speedprofile.simulate.traffic import tow_bucket_of

M_PER_DEG_LAT = 111_195.08  # metres per degree of latitude on the mean-radius sphere
_TRIP_SPAN_S = 1.0e6  # trip-local time axis spacing; trips last far less than 11 days
_MAX_DIJKSTRA_CELLS = 5_000_000  # origins x nodes per Dijkstra call (float64 + int32 temporaries)
_MAX_TREE_CELLS = 40_000_000  # origins x nodes kept per pool (float32 + int32: 320 MB)


class RouteTrees:
    """Shortest-path trees (biased travel time) from a pool of origin nodes: routing cost and predecessor rows."""

    def __init__(self, net: SimNetwork, origins: np.ndarray):
        from scipy.sparse.csgraph import dijkstra

        self.origins = np.asarray(origins, dtype=np.int64)
        self.dist = np.empty((len(self.origins), net.n_nodes), dtype=np.float32)
        self.pred = np.empty((len(self.origins), net.n_nodes), dtype=np.int32)
        per_call = max(1, _MAX_DIJKSTRA_CELLS // max(1, net.n_nodes))
        for lo in range(0, len(self.origins), per_call):
            d, p = dijkstra(net.graph, directed=True, indices=self.origins[lo: lo + per_call], return_predecessors=True)
            self.dist[lo: lo + per_call] = d
            self.pred[lo: lo + per_call] = p


def pool_size(net: SimNetwork, expected_trips: int) -> int:
    """Origins per tree pool: about one per 16 trips, at least 32, bounded by the core size and memory."""
    return int(min(len(net.core_nodes), max(32, -(-expected_trips // 16)), max(1, _MAX_TREE_CELLS // net.n_nodes)))


def plan_routes(net: SimNetwork, trees: RouteTrees, rng: np.random.Generator, n_trips: int,
                min_cost_s: float = 90.0, candidates: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Random trips: origin from the tree pool, destination the first of `candidates` random core nodes whose
    routing cost is at least min_cost_s (else the farthest). Returns (segment rows in driving order, per-trip counts).
    """
    core = net.core_nodes
    row = rng.integers(0, len(trees.origins), size=n_trips)
    cand = core[rng.integers(0, len(core), size=(n_trips, candidates))]
    d = trees.dist[row[:, None], cand]
    finite = np.isfinite(d)
    good = finite & (d >= min_cost_s)
    pick = np.where(good.any(axis=1), good.argmax(axis=1), np.where(finite, d, -1).argmax(axis=1))
    dest = cand[np.arange(n_trips), pick]
    origin = trees.origins[row]
    # walk all predecessor chains back in lockstep
    steps = [dest.copy()]
    cur = dest.copy()
    active = cur != origin
    while active.any():
        nxt = trees.pred[row[active], cur[active]]
        stuck = nxt < 0
        cur[np.flatnonzero(active)[stuck]] = origin[active][stuck]  # unreachable: empty route
        cur[np.flatnonzero(active)[~stuck]] = nxt[~stuck]
        steps.append(cur.copy())
        active = cur != origin
    S = np.stack(steps)  # (max hops + 1, trips)
    hops = (S != origin[None, :]).sum(axis=0)  # nodes before reaching the origin = segments on the route
    reach = np.isfinite(trees.dist[row, dest])
    hops = np.where(reach, hops, 0)
    nodes_per = np.where(hops > 0, hops + 1, 0)
    trip_rep = np.repeat(np.arange(n_trips), nodes_per)
    i = np.arange(nodes_per.sum()) - np.repeat(np.cumsum(nodes_per) - nodes_per, nodes_per)
    node = S[hops[trip_rep] - i, trip_rep]
    same = trip_rep[1:] == trip_rep[:-1]
    seg = net.segments_of_node_path_pairs(node[:-1][same], node[1:][same])
    return seg, hops


@dataclass
class Traversals:
    """One row per (trip, segment) driven, in driving order within each trip."""

    trip: np.ndarray  # trip index in the batch
    seg: np.ndarray  # segment row index in the network
    enter_s: np.ndarray  # UTC epoch seconds
    exit_s: np.ndarray
    bucket: np.ndarray  # local time-of-week bucket whose model speed was driven (bucket of the midpoint)
    model_kph: np.ndarray  # model speed in that bucket (no vehicle noise) = the truth
    driven_kph: np.ndarray  # model speed x vehicle/trip factor


def drive(net: SimNetwork, offsets: UtcOffsets, routes: tuple[np.ndarray, np.ndarray], start_s: np.ndarray,
          speed_factor: np.ndarray, iterations: int = 4) -> Traversals:
    """Drive each route from its start time; a segment's speed is the model speed of the bucket of its midpoint.

    The midpoint depends on the speeds before it, so speeds and times are iterated to a fixed point (a few
    rounds suffice; a traversal whose midpoint still crosses a bucket edge keeps the bucket last used).
    """
    seg, lens = routes
    seg = np.asarray(seg, dtype=np.int64)
    lens = np.asarray(lens, dtype=np.int64)
    trip = np.repeat(np.arange(len(lens)), lens)
    first = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    zone = net.zone_idx[seg]
    length = net.length_m[seg]
    start = np.asarray(start_s, dtype=np.float64)[trip]
    factor = np.asarray(speed_factor, dtype=np.float64)[trip]
    bucket = tow_bucket_of(start + offsets.offset_s(zone, start))
    for _ in range(iterations):
        model = net.model.speed_kph(seg, bucket)
        enter, dur = _times(length, model * factor, start, trip, first, lens)
        mid = enter + dur / 2
        new_bucket = tow_bucket_of(mid + offsets.offset_s(zone, mid))
        if np.array_equal(new_bucket, bucket):
            break
        bucket = new_bucket
    model = net.model.speed_kph(seg, bucket)
    driven = model * factor
    enter, dur = _times(length, driven, start, trip, first, lens)
    return Traversals(trip, seg, enter, enter + dur, bucket, model, driven)


def _times(length, kph, start, trip, first, lens):
    dur = length / (kph / 3.6)
    cum = np.cumsum(dur)
    excl = cum - dur
    if len(lens):
        excl = excl - np.repeat(excl[first[lens > 0]], lens[lens > 0])
    return start + excl, dur


@dataclass
class Fixes:
    """One row per emitted GPS fix (after dropouts), ordered by trip then time."""

    trip: np.ndarray
    t_s: np.ndarray  # UTC epoch seconds
    lon: np.ndarray  # with noise
    lat: np.ndarray
    speed_kph: np.ndarray
    heading_deg: np.ndarray
    true_lon: np.ndarray  # noise-free position on the driven geometry
    true_lat: np.ndarray
    seg: np.ndarray  # segment row index being driven
    dropped: int  # fixes lost to dropouts


def sample_fixes(net: SimNetwork, trav: Traversals, n_trips: int, start_s: np.ndarray, interval_s: float,
                 noise_m: float, rng: np.random.Generator, gap_rate: float = 0.004, loss_rate: float = 0.005,
                 gap_mean_fixes: float = 8.0) -> Fixes:
    """GPS fixes every interval_s from each trip's start to its end, interpolated along the driven geometry.

    Noise: isotropic Gaussian, sigma noise_m metres per axis. Dropouts: gaps start at a fix with probability
    gap_rate and last 2 + Geometric(1/gap_mean_fixes) fixes; single fixes are lost with probability loss_rate.
    """
    start_s = np.asarray(start_s, dtype=np.float64)
    counts = np.bincount(trav.trip, minlength=n_trips)
    has = counts > 0
    last_idx = np.cumsum(counts) - 1
    end_s = np.where(has, trav.exit_s[np.clip(last_idx, 0, None)] if len(trav.exit_s) else 0.0, start_s)
    n_fix = np.where(has, np.floor((end_s - start_s) / interval_s).astype(np.int64) + 1, 0)
    fix_trip = np.repeat(np.arange(n_trips), n_fix)
    k = np.arange(n_fix.sum()) - np.repeat(np.cumsum(n_fix) - n_fix, n_fix)
    rel = k * float(interval_s)
    t = start_s[fix_trip] + rel
    # traversal containing each fix: search on a per-trip offset time axis
    trav_key = trav.trip * _TRIP_SPAN_S + (trav.enter_s - start_s[trav.trip])
    j = np.searchsorted(trav_key, fix_trip * _TRIP_SPAN_S + rel, side="right") - 1
    trav_first = np.cumsum(counts) - counts
    j = np.clip(j, trav_first[fix_trip], last_idx[fix_trip])
    seg = trav.seg[j]
    dur = trav.exit_s[j] - trav.enter_s[j]
    f = np.clip(np.divide(t - trav.enter_s[j], dur, out=np.zeros_like(t), where=dur > 0), 0.0, 1.0)
    d = f * net.length_m[seg]
    lon, lat, heading = locate(net, seg, d)
    speed = trav.driven_kph[j]

    n = len(t)
    keep = rng.random(n) >= loss_rate
    starts = np.flatnonzero(rng.random(n) < gap_rate)
    if len(starts):
        glen = 2 + rng.geometric(1.0 / gap_mean_fixes, size=len(starts))
        # a gap only removes fixes of the trip it started in
        trip_end = np.cumsum(n_fix)[fix_trip[starts]]
        diff = np.zeros(n + 1, dtype=np.int64)
        np.add.at(diff, starts, 1)
        np.add.at(diff, np.minimum(starts + glen, trip_end), -1)
        keep &= np.cumsum(diff[:-1]) == 0
    keep[np.cumsum(n_fix)[has] - n_fix[has]] = True  # every trip keeps its first and last fix
    keep[np.cumsum(n_fix)[has] - 1] = True
    idx = np.flatnonzero(keep)
    m = len(idx)
    ex = rng.normal(0.0, noise_m, m) if noise_m > 0 else np.zeros(m)
    ny = rng.normal(0.0, noise_m, m) if noise_m > 0 else np.zeros(m)
    lat_k = lat[idx]
    noisy_lat = lat_k + ny / M_PER_DEG_LAT
    noisy_lon = lon[idx] + ex / (M_PER_DEG_LAT * np.cos(np.radians(lat_k)))
    rep_speed = np.maximum(0.0, speed[idx] * (1.0 + rng.normal(0.0, 0.03, m)))
    rep_heading = np.mod(heading[idx] + rng.normal(0.0, 3.0, m), 360.0)
    return Fixes(fix_trip[idx], t[idx], noisy_lon, noisy_lat, rep_speed, rep_heading, lon[idx], lat[idx],
                 seg[idx], int(n - m))


def locate(net: SimNetwork, seg: np.ndarray, dist_m: np.ndarray):
    """Point at dist_m metres along each segment's geometry (linear in degrees per edge) and the edge bearing."""
    lo = net.vert_off[seg]
    hi = net.vert_off[seg + 1] - 2  # last edge start
    v = np.searchsorted(net.vkey, seg * _SEG_SPAN_M + dist_m, side="right") - 1
    v = np.clip(v, lo, hi)
    edge = net.vcum[v + 1] - net.vcum[v]
    frac = np.clip(np.divide(dist_m - net.vcum[v], edge, out=np.zeros_like(dist_m), where=edge > 0), 0.0, 1.0)
    lon = net.vlon[v] + frac * (net.vlon[v + 1] - net.vlon[v])
    lat = net.vlat[v] + frac * (net.vlat[v + 1] - net.vlat[v])
    return lon, lat, net.vbearing[v]
