"""Map-matching kernel: one trace piece (its fixes) in, segment traversals with observed speeds out. No Spark.

Hidden Markov model after Newson & Krumm (2009): candidates are the segments within `radius_m` of a fix;
emission is Gaussian in the perpendicular distance (sigma_m); transition is exponential in
|route distance - great-circle distance| (beta_m) with route distances from bounded Dijkstra searches on the
directed network; Viterbi picks the path. Times are UTC; positions metres; speeds km/h.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from schemas.segment_traversals import MAX_PLAUSIBLE_KPH, MIN_PLAUSIBLE_KPH
from speedprofile.matching import _core
from speedprofile.matching.network import RoutingNetwork, network_from_table

# Per-fix outcome of matching (every input fix gets exactly one).
FIX_STATUSES = (
    "matched",          # on a matched path of two or more fixes
    "isolated",         # snapped to a road, but its piece of path has no other fix (nothing to traverse)
    "off_network",      # no road within radius_m
    "outlier",          # dropped by the HMM as a GPS spike (no plausible transition through it)
    "invalid_coordinate",  # lon/lat/time missing or not finite
    "duplicate_time",   # same timestamp as the previous usable fix of the trace
    "time_backwards",   # timestamp earlier than the previous usable fix (input order)
    "single_fix",       # the trace piece has only one usable fix
    "prematched_no_link",  # pre-matched piece, but this fix has no link id
)
BREAK_REASONS = ("time_gap", "no_transition")
TRAVERSAL_COLUMNS = [
    "seq", "segment_id", "enter_time_utc", "exit_time_utc", "duration_s", "traversed_m", "speed_kph",
    "is_complete", "n_fixes", "match_source", "confidence", "reject_reason", "owned",
]


@dataclass(frozen=True)
class MatchParams:
    """Matching parameters; the defaults suit 1-60 s sampling of consumer GPS (metres, seconds)."""

    sigma_m: float = 10.0        # GPS noise of consumer receivers in streets (N&K measured 4.07 on open roads)
    beta_m: float = 5.0          # transition scale of |route - great-circle| in metres, at least ...
    beta_per_m: float = 0.15     # ... this fraction of the fixes' distance apart (sparse data detours more)
    radius_m: float = 40.0       # candidate search radius around each fix (4 sigma: farther is off the network)
    max_candidates: int = 16     # nearest segments kept per fix (interchanges stack many arcs within radius)
    max_gap_s: float = 180.0     # a longer gap between usable fixes starts a new path (trace break)
    bound_factor: float = 2.0    # route search bound = max(bound_factor * gc + bound_slack_m, bound_min_m)
    bound_slack_m: float = 100.0
    bound_min_m: float = 300.0
    max_route_kph: float = 250.0  # ... and at most this speed x the time between the fixes + bound_slack_m
    recover_factor: float = 1.0  # no transition fits: retry with the bound times this before skipping/breaking
    skip_max_s: float = 30.0     # fixes that connect to nothing are skipped as outliers for up to this long
    gap_join_m: float = 100.0    # a time gap does not break the path when the fixes are this close (a pause)
    smooth_s: float = 2.0        # traversal timing: path positions averaged over fixes within +- this (dense data)
    expected_time: bool = True   # traversal timing: share the time between fixes by expected travel time, not distance
    offroad_m: float = 25.0      # a piece of path whose fixes are on average farther than this is off the map
    uturn_penalty_m: float = 100.0  # extra metres charged for turning round (mid-segment or at a node)
    back_tol_m: float = 10.0     # backward jitter along one segment treated as standing still
    thin_m: float = 8.0          # skip fixes closer than this to the last kept one; 0 = keep all
    max_hold_s: float = 0.0      # ... but keep at least one fix every max_hold_s (0 = a standstill is one fix)
    stay_s: float = 30.0         # no thin_m move for this long = standing: the next kept fix must be ...
    stay_m: float = 30.0         # ... this far away (standstill drift is not movement); stay_s 0 = off
    complete_tol_m: float = 0.5  # a traversal counts as complete when it covers the segment to within this
    min_traversal_m: float = 1.0  # partial legs shorter than this are not traversals (a path starting on a node)
    min_plausible_kph: float = MIN_PLAUSIBLE_KPH
    max_plausible_kph: float = MAX_PLAUSIBLE_KPH

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PointMatch:
    """Per-fix outcome of matching one trace (arrays aligned with the input fixes) and the matched path's legs."""

    status: np.ndarray       # object: one of FIX_STATUSES
    segment_id: np.ndarray   # int64, -1 when not matched
    offset_m: np.ndarray     # metres from the segment start, NaN when not matched
    chain: np.ndarray        # int64 path number within the trace, -1 when not matched
    breaks: dict             # BREAK_REASONS -> count
    leg_arrays: dict         # LEG_COLUMNS -> numpy array, one element per leg (segment piece of the path)

    @property
    def legs(self) -> pd.DataFrame:
        """Path legs: seg_index, off0_m, off1_m, chain, s0_m (path position), enter_s, exit_s, n_fixes, segment_id."""
        if not hasattr(self, "_legs_df"):
            self._legs_df = pd.DataFrame(self.leg_arrays, columns=LEG_COLUMNS)
        return self._legs_df


LEG_COLUMNS = ["seg_index", "off0_m", "off1_m", "chain", "s0_m", "enter_s", "exit_s", "n_fixes", "confidence",
               "segment_id"]
# Confidence of a matched point: the logistic of its margin (forward log-likelihood of the chosen road over the best
# candidate off the matched path; 0 = a coin flip), halved next to a break or a skipped outlier.
NEAR_BREAK_FACTOR = 0.5


def match_confidence(margin: np.ndarray, near_break: np.ndarray) -> np.ndarray:
    """0..1 per matched point from its Viterbi margin (+inf = no rival road) and whether a break is next to it."""
    with np.errstate(over="ignore"):
        c = 1.0 / (1.0 + np.exp(-np.minimum(margin, 50.0)))
    return np.where(near_break, c * NEAR_BREAK_FACTOR, c)


def _near_break(brk: np.ndarray) -> np.ndarray:
    """Kept points next to (or at) a break start or a skipped outlier."""
    flag = brk != 0
    near = flag.copy()
    near[1:] |= flag[:-1]
    near[:-1] |= flag[1:]
    return near
_BIG_M = 1e9  # chain separation in the combined path position (no path is 1 000 000 km long)


@dataclass
class PieceMatch:
    """Array outcome of one trace piece (fixes in input order): per-fix status, segment, chain; breaks; and the
    traversal columns (TRAVERSAL_COLUMNS without the times, plus _enter_us/_exit_us in UTC microseconds), or None."""

    status: np.ndarray
    segment_id: np.ndarray
    chain: np.ndarray
    breaks: dict
    traversals: dict | None


@dataclass
class TraceMatch:
    """Traversals (TRAVERSAL_COLUMNS) of one trace piece plus its per-fix outcome."""

    traversals: pd.DataFrame
    points: PointMatch


class Matcher:
    """Map matcher bound to one road network; build once, call `match` per trace piece.

    `network` is a RoutingNetwork, or road_segments rows (pandas DataFrame or pyarrow Table).
    """

    def __init__(self, network, params: MatchParams | None = None):
        self.params = params or MatchParams()
        if isinstance(network, RoutingNetwork):
            self.net = network
        else:
            self.net = network_from_table(network, cell_m=max(2 * self.params.radius_m, 20.0))
        if self.net.cell_m < 2 * self.params.radius_m - 1e-9:
            raise ValueError(f"network grid cell {self.net.cell_m} m is smaller than 2 x radius_m")

    # ---- HMM on raw arrays (used by the benchmark and by `match`) ----
    def match_points(self, lon: np.ndarray, lat: np.ndarray, t_s: np.ndarray) -> PointMatch:
        """Match fixes (degrees, seconds strictly increasing) -> per-fix segment/offset and the path legs."""
        p, net = self.params, self.net
        n = len(lon)
        x, y = net.project(lon, lat)
        t_s = np.asarray(t_s, np.float64)
        keep = _core.thin_points(x, y, t_s, *_floats(p.thin_m, p.max_hold_s, p.stay_s, p.stay_m)) if p.thin_m > 0 else np.ones(n, bool)
        kidx = np.nonzero(keep)[0]
        kx, ky, kt = x[kidx], y[kidx], t_s[kidx]
        # last time each kept fix's position was seen: the fixes thinned onto it (a standstill) extend it
        kt_end = t_s[np.concatenate([kidx[1:] - 1, [n - 1]])] if n else kt
        cnt, cseg, coff, cdist = _core.find_candidates(
            kx, ky, float(p.radius_m), int(p.max_candidates), net.gx0, net.gy0, net.cell_m, net.ncy, net.grid_keys,
            net.grid_ptr, net.grid_items, net.pc_seg, net.pc_x0, net.pc_y0, net.pc_x1, net.pc_y1, net.pc_off0,
            net.seg_scale, net.seg_len)
        chosen, pred_pt, brk, pt_bound, pt_btol, score = _core.viterbi(
            kx, ky, kt, kt_end, cnt, cseg, coff, cdist, *_floats(
                p.sigma_m, p.beta_m, p.beta_per_m, p.bound_factor, p.bound_slack_m, p.bound_min_m,
                p.max_route_kph / 3.6, p.max_gap_s, p.gap_join_m, p.skip_max_s, p.recover_factor, p.uturn_penalty_m,
                p.back_tol_m, p.stay_s, p.stay_m), net.out_ptr, net.out_seg, net.seg_from, net.seg_to,
            net.seg_len, net.seg_rev, net.n_nodes)
        if p.offroad_m > 0:
            _drop_offroad_chains(chosen, pred_pt, cdist, p.offroad_m)
        order = np.nonzero(chosen >= 0)[0]
        lseg, lo0, lo1, lchain, ls0, pos, pchain = _core.build_path(
            order, pred_pt, cseg, coff, chosen, pt_bound, pt_btol, float(p.uturn_penalty_m), net.out_ptr, net.out_seg,
            net.seg_from, net.seg_to, net.seg_len, net.seg_rev, net.n_nodes)
        # per kept point outcome
        k_status = np.where(cnt == 0, "off_network", "outlier").astype(object)
        k_seg = np.full(len(kidx), -1, np.int64)
        k_off = np.full(len(kidx), np.nan)
        k_chain = np.full(len(kidx), -1, np.int64)
        k_pos = np.full(len(kidx), np.nan)
        if len(order):
            k_seg[order] = cseg[order, chosen[order]]
            k_off[order] = coff[order, chosen[order]]
            k_chain[order] = pchain
            k_pos[order] = pos
            chain_sizes = np.bincount(pchain)
            k_status[order] = np.where(chain_sizes[pchain] >= 2, "matched", "isolated")
        # thinned fixes take the outcome of the last kept fix before them
        anchor = np.cumsum(keep) - 1
        status = k_status[anchor]
        seg = k_seg[anchor]
        off = k_off[anchor]
        chain = k_chain[anchor]
        ppos = k_pos[anchor]
        breaks = {"time_gap": int(np.sum(brk == 1)), "no_transition": int(np.sum(brk == 2))}
        pace = net.seg_pace[lseg] if net.seg_pace is not None and p.expected_time else None
        legs = self._leg_times(lseg, lo0, lo1, lchain, ls0, chain, ppos, t_s, p.smooth_s, pace)
        margin = _core.point_margin(order, chosen, score, cnt, cseg, pchain, lseg, lchain, net.n_segments)
        legs["confidence"] = self._leg_confidence(lseg, lo0, lo1, lchain, ls0, order, pos, pchain, margin, brk)
        legs["segment_id"] = net.segment_id[lseg] if len(lseg) else np.zeros(0, np.int64)
        seg_ids = net.segment_id[np.maximum(seg, 0)] if net.n_segments else np.zeros(len(seg), np.int64)
        return PointMatch(status, np.where(seg >= 0, seg_ids, -1), off, chain, breaks, legs)

    @staticmethod
    def _leg_confidence(lseg, lo0, lo1, lchain, ls0, order, pos, pchain, margin, brk) -> np.ndarray:
        """Per leg, 0..1: how sure the match is (see `match_confidence`), mean over the points placing it."""
        if not len(lseg):
            return np.zeros(0)
        conf = match_confidence(margin, _near_break(brk)[order])
        s = np.maximum.accumulate(pchain * _BIG_M + pos)
        x0 = lchain * _BIG_M + ls0
        return _core.leg_confidence(x0, x0 + (lo1 - lo0), lchain, s, pchain, conf)

    @staticmethod
    def _leg_times(lseg, lo0, lo1, lchain, ls0, chain, ppos, t_s, smooth_s: float = 0.0,
                   pace: np.ndarray | None = None) -> dict:
        """Enter/exit seconds per leg, interpolated along the path from the fixes' (position, time) anchors.

        With `pace` (expected seconds per metre of each leg's segment) the time between two anchors is shared in
        proportion to the expected travel time of the path between them, not its length: a slow ramp between two
        faster roads gets more of the time. None = by distance (a constant speed between two fixes)."""
        nl = len(lseg)
        enter = np.full(nl, np.nan)
        exit_ = np.full(nl, np.nan)
        nfix = np.zeros(nl, np.int64)
        ok = chain >= 0
        if nl and ok.any():
            # one monotone axis over all chains: chain * _BIG_M + position (fixes are in time order)
            s = chain[ok] * _BIG_M + _smooth_positions(ppos[ok], chain[ok], t_s[ok], smooth_s)
            tt = t_s[ok]
            s = np.maximum.accumulate(s)
            x0 = lchain * _BIG_M + ls0
            x1 = x0 + (lo1 - lo0)
            if pace is None:
                enter = _interp_leave(x0, s, tt)
                exit_ = _interp_leave(x1, s, tt)
            else:
                # the same on the path's expected-time axis (monotone in position, chains apart); the fixes are
                # smoothed there, so the window does not mix a slow segment's position with a fast one's
                # (every position goes through the same map, so a fix exactly at a leg's end stays exactly there)
                e0 = _expected_time_axis(x0, lo1 - lo0, lchain, pace)
                c = chain[ok]
                e_fix = _expected_time_at(c * _BIG_M + ppos[ok], x0, e0, pace) - c * _BIG_M
                es = np.maximum.accumulate(c * _BIG_M + _smooth_positions(e_fix, c, tt, smooth_s))
                enter = _interp_leave(_expected_time_at(x0, x0, e0, pace), es, tt)
                exit_ = _interp_leave(_expected_time_at(x1, x0, e0, pace), es, tt)
            lo = np.searchsorted(s, x0, side="left")
            hi = np.searchsorted(s, x1, side="left")
            last = np.ones(nl, bool)
            last[:-1] = lchain[1:] != lchain[:-1]
            hi[last] = np.searchsorted(s, lchain[last] * _BIG_M + _BIG_M / 2, side="left")
            nfix = np.maximum(hi - lo, 0)
        return {"seg_index": lseg, "off0_m": lo0, "off1_m": lo1, "chain": lchain, "s0_m": ls0,
                "enter_s": enter, "exit_s": exit_, "n_fixes": nfix}

    # ---- one trace piece as a pandas frame ----
    def match(self, fixes: pd.DataFrame) -> TraceMatch:
        """Match one trace piece: columns timestamp_utc, lon_deg, lat_deg [, is_context, prematched_segment_id,
        speed_kph, source_file, source_row]. Fixes are taken in input order (source_file, source_row when present);
        the per-fix outcome is aligned with the rows as given. Never raises on bad fixes."""
        n = len(fixes)
        order = _input_order(fixes)
        t_us = _as_micros(fixes["timestamp_utc"])[order]
        lon = fixes["lon_deg"].to_numpy(np.float64, na_value=np.nan)[order]
        lat = fixes["lat_deg"].to_numpy(np.float64, na_value=np.nan)[order]
        ctx = (fixes["is_context"].to_numpy(object)[order] == True if "is_context" in fixes.columns  # noqa: E712
               else np.zeros(n, bool)).astype(bool)
        pm_col = fixes["prematched_segment_id"] if "prematched_segment_id" in fixes.columns else None
        has = pm_col.notna().to_numpy(bool)[order] if pm_col is not None else None
        ids = speeds = None
        if pm_col is not None and has is not None and has.any():
            ids = np.asarray(pm_col.where(pm_col.notna(), 0).astype("int64").to_numpy(), np.int64)[order]
            speeds = (fixes["speed_kph"].to_numpy(np.float64, na_value=np.nan)[order] if "speed_kph" in fixes.columns
                      else np.full(n, np.nan))
        pa_ = self.match_arrays(t_us, lon, lat, ctx, ids, has, speeds)
        trav = pa_.traversals
        if trav is not None and len(trav["seq"]):
            trav["enter_time_utc"] = _utc(trav["_enter_us"])
            trav["exit_time_utc"] = _utc(trav["_exit_us"])
            out = pd.DataFrame({c: trav[c] for c in TRAVERSAL_COLUMNS})
        else:
            out = _empty_traversals()
        # back to the caller's row order
        inv = np.empty(n, np.int64)
        inv[order] = np.arange(n)
        pm_out = PointMatch(pa_.status[inv], pa_.segment_id[inv], np.full(n, np.nan), pa_.chain[inv], pa_.breaks, {})
        return TraceMatch(out, pm_out)

    def match_arrays(self, t_us: np.ndarray, lon: np.ndarray, lat: np.ndarray, ctx: np.ndarray,
                     pm_ids: np.ndarray | None = None, pm_has: np.ndarray | None = None,
                     speeds: np.ndarray | None = None) -> PieceMatch:
        """Match one trace piece given as arrays in input order: UTC microseconds (_NAT = missing), degrees
        (NaN = missing), context flags, and optionally pre-matched link ids (pm_has = id present) with reported
        speeds (km/h). Per-fix outcome in the same order; traversal columns with enter/exit microseconds."""
        n = len(t_us)
        status = np.full(n, "", dtype=object)
        valid = np.isfinite(lon) & np.isfinite(lat) & (t_us != _NAT)
        status[~valid] = "invalid_coordinate"
        # input order; drop fixes whose time does not advance past the latest usable one
        vidx = np.nonzero(valid)[0]
        tv = t_us[vidx]
        run_max = np.maximum.accumulate(tv) if len(tv) else tv
        prev_max = np.concatenate([[np.iinfo(np.int64).min], run_max[:-1]]) if len(tv) else tv
        dup = tv == prev_max
        back = tv < prev_max
        status[vidx[dup]] = "duplicate_time"
        status[vidx[back]] = "time_backwards"
        usable = valid.copy()
        usable[vidx[dup | back]] = False
        seg_id = np.full(n, -1, np.int64)
        chain = np.full(n, -1, np.int64)
        breaks = dict.fromkeys(BREAK_REASONS, 0)
        uidx = np.nonzero(usable)[0]
        trav: dict | None = None
        if pm_has is not None and pm_ids is not None and pm_has.any():
            if speeds is None:
                speeds = np.full(n, np.nan)
            trav, st = self._prematched(uidx, pm_ids, pm_has, t_us, speeds)
            status[uidx] = st
            seg_id[uidx] = np.where(pm_has[uidx], pm_ids[uidx], -1)
        elif len(uidx) < 2:
            status[uidx] = "single_fix"
        else:
            t0 = t_us[uidx[0]]
            pm = self.match_points(lon[uidx], lat[uidx], (t_us[uidx] - t0) / 1e6)
            status[uidx] = pm.status
            seg_id[uidx] = pm.segment_id
            chain[uidx] = pm.chain
            breaks = pm.breaks
            trav = self._traversals(pm.leg_arrays, t0)
        if trav is not None and len(trav["seq"]):
            owned_lo, owned_hi = _owned_span(t_us, ctx, usable)
            enter_us = trav["_enter_us"]
            trav["owned"] = (enter_us >= owned_lo) & (enter_us < owned_hi)
        else:
            trav = None
        return PieceMatch(status, seg_id, chain, breaks, trav)

    def _traversals(self, legs: dict, t0_us: int) -> dict | None:
        """Path legs -> traversal columns (plus _enter_us/_exit_us), with reject reasons; None when no legs."""
        p, net = self.params, self.net
        if not len(legs["seg_index"]):
            return None
        seg_len = net.seg_len[legs["seg_index"]]
        o0, o1 = legs["off0_m"], legs["off1_m"]
        traversed = np.clip(o1 - o0, 0.0, None)
        complete = (o0 <= p.complete_tol_m) & (o1 >= seg_len - p.complete_tol_m)
        keep = complete | (traversed >= p.min_traversal_m)
        traversed, complete = traversed[keep], complete[keep]
        enter_s, exit_s = legs["enter_s"][keep], legs["exit_s"][keep]
        dur = exit_s - enter_s
        with np.errstate(divide="ignore", invalid="ignore"):
            speed = np.where(dur > 0, traversed / dur * 3.6, np.nan)
        reason = np.full(len(dur), None, dtype=object)
        reason[~(dur > 0)] = "duration_nonpositive"
        reason[(dur > 0) & ((speed > p.max_plausible_kph) | (speed < p.min_plausible_kph))] = "speed_implausible"
        return {
            "seq": np.arange(len(dur), dtype=np.int32),
            "segment_id": legs["segment_id"][keep].astype(np.int64),
            "duration_s": dur,
            "traversed_m": traversed,
            "speed_kph": speed,
            "is_complete": complete,
            "n_fixes": legs["n_fixes"][keep].astype(np.int32),
            "match_source": np.full(len(dur), "hmm", dtype=object),
            "confidence": legs["confidence"][keep].astype(np.float64),
            "reject_reason": reason,
            "_enter_us": t0_us + np.round(enter_s * 1e6).astype(np.int64),
            "_exit_us": t0_us + np.round(exit_s * 1e6).astype(np.int64),
        }

    def _prematched(self, uidx, ids, has, t_us, speeds):
        """Consecutive fixes on one link -> one traversal; boundaries at the midpoint between runs."""
        st = np.where(has[uidx], "matched", "prematched_no_link").astype(object)
        good = uidx[has[uidx]]
        if len(good) == 0:
            return None, st
        gid = ids[good]
        starts = np.concatenate([[0], np.nonzero(np.diff(gid) != 0)[0] + 1])
        ends = np.concatenate([starts[1:], [len(good)]])
        nrun = len(starts)
        tg = t_us[good].astype(np.float64)
        first_t, last_t = tg[starts], tg[ends - 1]
        enter = first_t.copy()
        exit_ = last_t.copy()
        if nrun > 1:
            mid = (last_t[:-1] + first_t[1:]) / 2
            enter[1:] = mid
            exit_[:-1] = mid
        run_id = gid[starts]
        sidx = self.net.index_of(run_id)
        length = np.where(sidx >= 0, self.net.seg_len[np.maximum(sidx, 0)], np.nan)
        interior = np.zeros(nrun, bool)
        interior[1:-1] = True
        dur = (exit_ - enter) / 1e6
        mean_v = np.array([np.nanmean(speeds[good[a:b]]) if np.isfinite(speeds[good[a:b]]).any() else np.nan
                           for a, b in zip(starts, ends, strict=True)])
        traversed = np.where(interior, length, np.minimum(length, mean_v / 3.6 * np.maximum(dur, 0)))
        with np.errstate(divide="ignore", invalid="ignore"):
            speed = np.where(dur > 0, traversed / dur * 3.6, np.nan)
        p = self.params
        reason = np.full(nrun, None, dtype=object)
        reason[~(dur > 0)] = "duration_nonpositive"
        reason[(dur > 0) & ((speed > p.max_plausible_kph) | (speed < p.min_plausible_kph))] = "speed_implausible"
        reason[(dur > 0) & ~np.isfinite(speed)] = "speed_unknown"
        reason[sidx < 0] = "unknown_segment"
        trav = {
            "seq": np.arange(nrun, dtype=np.int32),
            "segment_id": run_id,
            "duration_s": dur,
            "traversed_m": traversed,
            "speed_kph": speed,
            "is_complete": interior & (sidx >= 0),
            "n_fixes": (ends - starts).astype(np.int32),
            "match_source": np.full(nrun, "prematched", dtype=object),
            "confidence": np.ones(nrun),  # link ids given by the source
            "reject_reason": reason,
            "_enter_us": np.round(enter).astype(np.int64),
            "_exit_us": np.round(exit_).astype(np.int64),
        }
        return trav, st


OFFROAD_VS_TRACE = 2.5  # ... and farther than this times the trace's median fix-to-path distance


def _drop_offroad_chains(chosen: np.ndarray, pred_pt: np.ndarray, cdist: np.ndarray, offroad_m: float) -> None:
    """Unmatch (in place) every matched piece of path whose fixes lie on average farther than offroad_m from it,
    and farther than OFFROAD_VS_TRACE x the median distance over the whole trace: the vehicle was off the mapped
    network (a car park, a footpath), and the roads nearby are not where it drove."""
    order = np.nonzero(chosen >= 0)[0]
    if not len(order):
        return
    start = np.ones(len(order), bool)
    start[1:] = pred_pt[order[1:]] != order[:-1]
    cid = np.cumsum(start) - 1
    d = cdist[order, chosen[order]]
    mean = np.bincount(cid, weights=d) / np.bincount(cid)
    # a noisy receiver is far from every road all the time: off the map means far compared with the trace itself
    limit = max(offroad_m, OFFROAD_VS_TRACE * float(np.median(d)))
    chosen[order[mean[cid] > limit]] = -1


def _smooth_positions(pos: np.ndarray, chain: np.ndarray, t: np.ndarray, half_s: float) -> np.ndarray:
    """Path positions of the fixes (time order) averaged over the fixes of the same chain within half_s seconds:
    with dense sampling, GPS noise projected on the path would otherwise become speed noise on short segments
    (a 15 m segment crossed in 1.5 s). Sparse fixes (farther apart than half_s) and the ends of chains are left
    as they are."""
    n = len(pos)
    if half_s <= 0 or n < 3:
        return pos
    key = chain * 1e7 + t  # time within chain, chains far apart (traces are shorter than 10^7 s)
    first = np.searchsorted(key, chain * 1e7, side="left")
    last = np.searchsorted(key, chain * 1e7 + 5e6, side="right") - 1
    # symmetric windows (no bias at constant speed), so they shrink to the fix itself at both ends of a chain
    w = np.minimum(half_s, np.minimum(t - t[first], t[last] - t))
    lo = np.searchsorted(key, key - w, side="left")
    hi = np.searchsorted(key, key + w, side="right")
    c = np.concatenate([[0.0], np.cumsum(pos)])
    return (c[hi] - c[lo]) / (hi - lo)


def _expected_time_axis(x0: np.ndarray, length: np.ndarray, lchain: np.ndarray, pace: np.ndarray) -> np.ndarray:
    """Expected time (s) at the start of each leg along its chain's path (legs are contiguous within a chain, in
    path order), as one monotone axis: chain * _BIG_M + seconds since the chain's start."""
    dt = np.maximum(length, 0.0) * pace
    cum = np.cumsum(dt)
    start = cum - dt
    first = np.ones(len(x0), bool)
    first[1:] = lchain[1:] != lchain[:-1]
    base = np.maximum.accumulate(np.where(first, np.arange(len(x0)), 0))  # each leg's chain's first leg
    return lchain * _BIG_M + (start - start[base])


def _expected_time_at(s: np.ndarray, x0: np.ndarray, e0: np.ndarray, pace: np.ndarray) -> np.ndarray:
    """Expected time at path positions s (the combined chain axis): in the leg that starts at or before s, at
    that leg's pace (past a chain's last leg, at its pace)."""
    k = np.clip(np.searchsorted(x0, s, side="right") - 1, 0, len(x0) - 1)
    return e0[k] + (s - x0[k]) * pace[k]


def _floats(*values) -> tuple[float, ...]:
    """Parameters as Python floats: one compiled signature of the kernels whatever numeric types were passed."""
    return tuple(float(v) for v in values)


def _interp_leave(x: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Time at path position x: between the last anchor at or before x and the next one (a stop = leaving time)."""
    k = np.searchsorted(s, x, side="right") - 1
    k = np.clip(k, 0, len(s) - 1)
    k1 = np.minimum(k + 1, len(s) - 1)
    ds = s[k1] - s[k]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(ds > 0, (x - s[k]) / ds, 0.0)
    frac = np.clip(frac, 0.0, 1.0)
    return t[k] + frac * (t[k1] - t[k])


def _owned_span(t_us: np.ndarray, ctx: np.ndarray, usable: np.ndarray) -> tuple[float, float]:
    """[first owned fix, first context fix after the owned ones) — the border rule of the probes table."""
    owned = np.nonzero(usable & ~ctx)[0]
    if len(owned) == 0:
        return np.inf, np.inf
    lo = float(t_us[owned].min())
    last_owned = float(t_us[owned].max())
    after = t_us[usable & ctx]
    after = after[after > last_owned]
    hi = float(after.min()) if len(after) else np.inf
    return lo, hi


_NAT = np.iinfo(np.int64).min


def _as_micros(ts: pd.Series) -> np.ndarray:
    """UTC instants (tz-aware, naive-UTC or ISO strings) -> int64 microseconds since the epoch (NaT -> _NAT)."""
    if not len(ts):
        return np.zeros(0, np.int64)
    if not (isinstance(ts.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(ts.dtype)):
        ts = pd.to_datetime(ts, utc=True, errors="coerce", format="ISO8601")
    arr = ts.array  # tz-aware arrays store UTC epoch values; naive ones are taken as UTC
    raw = arr.asi8
    per_us = {"s": -1_000_000, "ms": -1000, "us": 1, "ns": 1000}[np.datetime_data(arr._ndarray.dtype)[0]]
    vals = raw // per_us if per_us > 0 else raw * -per_us
    return np.where(arr.isna(), _NAT, vals).astype(np.int64)


def _utc(us: np.ndarray):
    """int64 microseconds -> tz-aware UTC datetime array."""
    return pd.array(np.asarray(us, np.int64).astype("datetime64[us]"), dtype="datetime64[us]").tz_localize("UTC")


def _input_order(fixes: pd.DataFrame) -> np.ndarray:
    """Row order of the fixes as the source gave them (source_file, source_row), else as passed."""
    n = len(fixes)
    if "source_row" not in fixes.columns or n == 0:
        return np.arange(n)
    rows = fixes["source_row"].to_numpy(np.float64, na_value=np.nan)
    if "source_file" in fixes.columns:
        files = fixes["source_file"].to_numpy(object)
        if not (files == files[0]).all():
            codes = pd.factorize(files, sort=True)[0]
            return np.lexsort((rows, codes))
    if n < 2 or (np.diff(rows) > 0).all():
        return np.arange(n)
    return np.argsort(rows, kind="stable")


def _empty_traversals(extra: bool = False) -> pd.DataFrame:
    df = pd.DataFrame({
        "seq": pd.Series([], dtype=np.int32), "segment_id": pd.Series([], dtype=np.int64),
        "enter_time_utc": pd.Series([], dtype="datetime64[us, UTC]"),
        "exit_time_utc": pd.Series([], dtype="datetime64[us, UTC]"),
        "duration_s": pd.Series([], dtype=np.float64), "traversed_m": pd.Series([], dtype=np.float64),
        "speed_kph": pd.Series([], dtype=np.float64), "is_complete": pd.Series([], dtype=bool),
        "n_fixes": pd.Series([], dtype=np.int32), "match_source": pd.Series([], dtype=object),
        "confidence": pd.Series([], dtype=np.float64), "reject_reason": pd.Series([], dtype=object), "owned": pd.Series([], dtype=bool),
    })
    if extra:
        df = df.drop(columns=["owned"])
        df["_enter_us"] = pd.Series([], dtype=np.int64)
    return df


def warm_up() -> None:
    """Compile (or load from cache) the numba kernels on a two-segment network, outside any timed region."""
    from speedprofile.matching.network import build_network

    net = build_network([1, 2], [10, 11], [11, 12], [100.0, 100.0], [0, 2, 4],
                        [0.0, 0.001, 0.001, 0.002], [0.0, 0.0, 0.0, 0.0])
    m = Matcher(net)
    m.match_points(np.array([0.0002, 0.0009, 0.0015]), np.array([0.00001, 0.0, 0.00002]), np.array([0.0, 5.0, 10.0]))
