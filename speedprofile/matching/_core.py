"""Compiled inner loops of the matcher (numba): grid candidate search, bounded Dijkstra, Viterbi, path assembly.

Units: metres in a local equirectangular projection of the network; seconds relative to the trace start.
Segment arrays are indexed by dense segment index (0..S-1), node arrays by dense node index (0..N-1).
"""

from __future__ import annotations

import numpy as np
from numba import njit

NEG_INF = -np.inf


@njit(cache=True, nogil=True)
def _heap_push(hk, hv, size, key, val):
    i = size
    hk[i] = key
    hv[i] = val
    while i > 0:
        parent = (i - 1) >> 1
        if hk[parent] <= hk[i]:
            break
        hk[parent], hk[i] = hk[i], hk[parent]
        hv[parent], hv[i] = hv[i], hv[parent]
        i = parent
    return size + 1


@njit(cache=True, nogil=True)
def _heap_pop(hk, hv, size):
    key = hk[0]
    val = hv[0]
    size -= 1
    hk[0] = hk[size]
    hv[0] = hv[size]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            break
        child = left
        if left + 1 < size and hk[left + 1] < hk[left]:
            child = left + 1
        if hk[i] <= hk[child]:
            break
        hk[child], hk[i] = hk[i], hk[child]
        hv[child], hv[i] = hv[i], hv[child]
        i = child
    return key, val, size


@njit(cache=True, nogil=True)
def dijkstra(src, limit, out_ptr, out_seg, seg_to, seg_len, dist, pred, touched, hk, hv, mark, stamp, n_targets):
    """Shortest distances from node src up to `limit` metres into dist (pred = arriving segment); returns #touched.

    Stops early once the n_targets nodes with mark == stamp are settled. dist must be +inf everywhere on entry;
    the caller resets the touched nodes afterwards.
    """
    found = 0
    nt = 0
    dist[src] = 0.0
    pred[src] = -1
    touched[nt] = src
    nt += 1
    size = _heap_push(hk, hv, 0, 0.0, src)
    while size > 0:
        d, u, size = _heap_pop(hk, hv, size)
        if d > dist[u]:
            continue
        if mark[u] == stamp:
            found += 1
            if found >= n_targets:
                break
        for k in range(out_ptr[u], out_ptr[u + 1]):
            s = out_seg[k]
            nd = d + seg_len[s]
            if nd > limit:
                continue
            v = seg_to[s]
            if nd < dist[v]:
                if dist[v] == np.inf:
                    touched[nt] = v
                    nt += 1
                dist[v] = nd
                pred[v] = s
                if size >= hk.shape[0]:
                    continue  # heap full (cannot happen with capacity = #segments + 1); stay safe
                size = _heap_push(hk, hv, size, nd, v)
    return nt


@njit(cache=True, nogil=True)
def find_candidates(px, py, radius, kmax, gx0, gy0, cell, ncy, grid_keys, grid_ptr, grid_items,
                    pc_seg, pc_x0, pc_y0, pc_x1, pc_y1, pc_off0, seg_scale, seg_len):
    """Up to kmax nearest segments within radius of each point: (count, seg, offset_m along segment, distance_m)."""
    n = px.shape[0]
    cnt = np.zeros(n, np.int64)
    cseg = np.full((n, kmax), -1, np.int64)
    coff = np.zeros((n, kmax), np.float64)
    cdist = np.full((n, kmax), np.inf)
    nkeys = grid_keys.shape[0]
    for i in range(n):
        cx = int(np.floor((px[i] - gx0) / cell))
        cy = int(np.floor((py[i] - gy0) / cell))
        if cx < 0 or cy < 0 or cy >= ncy:
            continue
        key = cx * ncy + cy
        j = np.searchsorted(grid_keys, key)
        if j >= nkeys or grid_keys[j] != key:
            continue
        for k in range(grid_ptr[j], grid_ptr[j + 1]):
            p = grid_items[k]
            x0 = pc_x0[p]
            y0 = pc_y0[p]
            dx = pc_x1[p] - x0
            dy = pc_y1[p] - y0
            l2 = dx * dx + dy * dy
            t = 0.0
            if l2 > 0.0:
                t = ((px[i] - x0) * dx + (py[i] - y0) * dy) / l2
                if t < 0.0:
                    t = 0.0
                elif t > 1.0:
                    t = 1.0
            qx = x0 + t * dx - px[i]
            qy = y0 + t * dy - py[i]
            d = np.sqrt(qx * qx + qy * qy)
            if d > radius:
                continue
            s = pc_seg[p]
            off = (pc_off0[p] + t * np.sqrt(l2)) * seg_scale[s]
            if off > seg_len[s]:
                off = seg_len[s]
            found = -1
            for m in range(cnt[i]):
                if cseg[i, m] == s:
                    found = m
                    break
            if found >= 0:
                if d < cdist[i, found]:
                    cdist[i, found] = d
                    coff[i, found] = off
                continue
            if cnt[i] < kmax:
                m = cnt[i]
                cnt[i] += 1
            else:
                m = 0
                for q in range(1, kmax):
                    if cdist[i, q] > cdist[i, m]:
                        m = q
                if cdist[i, m] <= d:
                    continue
            cseg[i, m] = s
            coff[i, m] = off
            cdist[i, m] = d
    return cnt, cseg, coff, cdist


@njit(cache=True, nogil=True)
def thin_points(px, py, t, min_move, max_hold_s, stay_s, stay_m):
    """Keep a point when it is at least min_move metres from the last kept one (or, when max_hold_s > 0, max_hold_s
    later); first and last kept. Once fixes have been seen within min_move of the last kept one for stay_s, the
    vehicle is standing: the next point is kept only once it is stay_m away (standstill drift of the receiver is not movement). A standstill thus collapses
    into its first fix; the caller keeps its duration."""
    n = px.shape[0]
    keep = np.zeros(n, np.bool_)
    if n == 0:
        return keep
    keep[0] = True
    last = 0
    seen = t[0]  # last time a fix was seen near the last kept one
    for i in range(1, n):
        dx = px[i] - px[last]
        dy = py[i] - py[last]
        d2 = dx * dx + dy * dy
        if max_hold_s > 0.0 and t[i] - t[last] > max_hold_s:
            keep[i] = True
            last = i
            seen = t[i]
        elif d2 >= min_move * min_move:
            if stay_s > 0.0 and seen - t[last] >= stay_s and d2 < stay_m * stay_m:
                seen = t[i]
                continue
            keep[i] = True
            last = i
            seen = t[i]
        else:
            seen = t[i]
    keep[n - 1] = True
    return keep


@njit(cache=True, nogil=True)
def _route(sa, oa, sb, ob, lim_total, back_tol, uturn_penalty, out_ptr, out_seg, seg_from, seg_to, seg_len,
           seg_rev, dist, pred, touched, hk, hv, with_dijkstra, mark, stamp):
    """Route metres from (sa, oa) to (sb, ob) and how: 0 same segment, 1 via nodes, 2 mid-segment U-turn."""
    best = np.inf
    kind = -1
    if sb == sa and ob >= oa - back_tol:
        best = max(ob - oa, 0.0)
        kind = 0
    if sb == seg_rev[sa] and sb >= 0:
        r = abs(seg_len[sa] - ob - oa) + uturn_penalty
        if r < best:
            best = r
            kind = 2
    nt = 0
    rem = seg_len[sa] - oa
    if with_dijkstra and lim_total - rem >= 0.0:
        mark[seg_from[sb]] = stamp
        nt = dijkstra(seg_to[sa], lim_total - rem, out_ptr, out_seg, seg_to, seg_len, dist, pred, touched, hk, hv,
                      mark, stamp, 1)
        dn = dist[seg_from[sb]]
        if dn < np.inf:
            r = rem + dn + ob
            if sb == seg_rev[sa] and seg_from[sb] == seg_to[sa]:
                r += uturn_penalty  # turning round at the end node
            if r < best:
                best = r
                kind = 1
    return best, kind, nt


@njit(cache=True, nogil=True)
def _start_chain(score, cdist, i, c, inv2s2):
    for b in range(c):
        score[i, b] = -cdist[i, b] * cdist[i, b] * inv2s2


@njit(cache=True, nogil=True)
def _transition(src, i, factor, score, back, px, py, t, cnt, cseg, coff, cdist, inv2s2, beta, beta_per_m,
                bound_factor, bound_slack, bound_min, max_speed, uturn_penalty, back_tol, out_ptr, out_seg, seg_from,
                seg_to, seg_len, seg_rev, dist, pred, touched, hk, hv, mark, stamp, n_targets):
    """Score the candidates of point i from those of point src; returns the route bound used, or -1 if none fits."""
    c = cnt[i]
    gx = px[i] - px[src]
    gy = py[i] - py[src]
    gc = np.sqrt(gx * gx + gy * gy)
    bound = factor * min(max(bound_factor * gc + bound_slack, bound_min), max_speed * (t[i] - t[src]) + bound_slack)
    inv_beta = 1.0 / max(beta, beta_per_m * gc)
    ok = False
    for a in range(cnt[src]):
        sa_score = score[src, a]
        if sa_score == NEG_INF:
            continue
        sa = cseg[src, a]
        oa = coff[src, a]
        rem = seg_len[sa] - oa
        nt = 0
        if bound - rem >= 0.0:
            nt = dijkstra(seg_to[sa], bound - rem, out_ptr, out_seg, seg_to, seg_len, dist, pred,
                          touched, hk, hv, mark, stamp, n_targets)
        for b in range(c):
            sb = cseg[i, b]
            ob = coff[i, b]
            route = np.inf
            if sb == sa and ob >= oa - back_tol:
                route = max(ob - oa, 0.0)
            if sb == seg_rev[sa] and sb >= 0:
                r = abs(seg_len[sa] - ob - oa) + uturn_penalty
                if r < route:
                    route = r
            if nt > 0:
                dn = dist[seg_from[sb]]
                if dn < np.inf:
                    r = rem + dn + ob
                    if sb == seg_rev[sa] and seg_from[sb] == seg_to[sa]:
                        r += uturn_penalty  # turning round at the end node
                    if r < route:
                        route = r
            if route > bound:
                continue
            v = sa_score - abs(route - gc) * inv_beta - cdist[i, b] * cdist[i, b] * inv2s2
            if v > score[i, b]:
                score[i, b] = v
                back[i, b] = a
                ok = True
        for k in range(nt):
            dist[touched[k]] = np.inf
    return bound if ok else -1.0


@njit(cache=True, nogil=True)
def viterbi(px, py, t, t_end, cnt, cseg, coff, cdist, sigma, beta, beta_per_m, bound_factor, bound_slack, bound_min,
            max_speed, max_gap_s, gap_join_m, skip_max_s, recover_factor, uturn_penalty, back_tol, stay_s, stay_m,
            out_ptr, out_seg, seg_from, seg_to, seg_len, seg_rev, n_nodes):
    """Newson & Krumm HMM over the points with candidates.

    t_end[i] is the last time point i's position was observed (thinned fixes near it extend it). A time gap
    (t[i] - t_end[prev] > max_gap_s) breaks the path unless the fixes are within gap_join_m of each other (a
    pause of the logger while standing). When no transition from the previous point fits, in order: the previous
    point is tried as a one-fix spike (connect from the one before it); the bound is widened by recover_factor;
    then point i is skipped as an outlier, as are the following points until one connects, for at most
    skip_max_s. If none does, the path breaks at the first skipped point and matching resumes from there.

    Returns (chosen candidate per point or -1, predecessor point per point or -1 = chain start, break flags:
    1 = time gap, 2 = no plausible transition, 3 = outlier skipped, route bound and backward tolerance used per
    point, forward score per point and candidate). Leaving a standstill (a point seen for stay_s), backward moves
    up to stay_m along a segment count as standing still. Points without candidates are left out.
    """
    n = px.shape[0]
    kmax = cseg.shape[1]
    score = np.full((n, kmax), NEG_INF)
    back = np.full((n, kmax), -1, np.int64)
    pred_pt = np.full(n, -1, np.int64)
    brk = np.zeros(n, np.int8)
    pt_bound = np.zeros(n, np.float64)
    pt_btol = np.zeros(n, np.float64)
    nseg = seg_len.shape[0]
    dist = np.full(n_nodes, np.inf)
    pred = np.full(n_nodes, -1, np.int64)
    touched = np.empty(n_nodes + 1, np.int64)
    hk = np.empty(nseg + 2, np.float64)
    hv = np.empty(nseg + 2, np.int64)
    inv2s2 = 0.5 / (sigma * sigma)
    mark = np.full(n_nodes, -1, np.int64)
    prev = -1
    prevprev = -1
    pend = -1  # first point skipped since prev (pending outlier run)
    stamp = 0  # marks the start nodes of the current point's candidates (Dijkstra stops once all are settled)
    i = 0
    while True:
        if i >= n:
            if pend < 0:
                break
            # the trace ended inside a skipped run: resume from its first point as a new path
            for k in range(pend, n):
                brk[k] = 0
            i = pend
            _start_chain(score, cdist, i, cnt[i], inv2s2)
            brk[i] = 2
            prevprev = -1
            prev = i
            pend = -1
            i += 1
            continue
        c = cnt[i]
        if c == 0:
            i += 1
            continue
        if prev >= 0 and t[i] - t_end[prev] > max_gap_s:
            gx = px[i] - px[prev]
            gy = py[i] - py[prev]
            if pend >= 0:
                for k in range(pend, i):
                    brk[k] = 0
                i = pend
                _start_chain(score, cdist, i, cnt[i], inv2s2)
                brk[i] = 2
                prevprev = -1
                prev = i
                pend = -1
                i += 1
                continue
            if gx * gx + gy * gy > gap_join_m * gap_join_m:
                _start_chain(score, cdist, i, c, inv2s2)
                brk[i] = 1
                prevprev = -1
                prev = i
                i += 1
                continue
        if prev < 0:
            _start_chain(score, cdist, i, c, inv2s2)
            prev = i
            i += 1
            continue
        stamp += 1
        n_targets = 0
        for b in range(c):
            v = seg_from[cseg[i, b]]
            if mark[v] != stamp:
                mark[v] = stamp
                n_targets += 1
        src = prev
        btol = back_tol
        if stay_s > 0.0 and t_end[prev] - t[prev] >= stay_s:
            btol = max(back_tol, stay_m)  # leaving a standstill: its drift is no backward movement
        bound = _transition(prev, i, 1.0, score, back, px, py, t, cnt, cseg, coff, cdist, inv2s2, beta, beta_per_m,
                            bound_factor, bound_slack, bound_min, max_speed, uturn_penalty, btol, out_ptr, out_seg,
                            seg_from, seg_to, seg_len, seg_rev, dist, pred, touched, hk, hv, mark, stamp, n_targets)
        if bound < 0.0 and pend < 0 and prevprev >= 0 and t[i] - t_end[prevprev] <= max_gap_s:
            # the previous point may be a spike: connect from the one before it
            src = prevprev
            btol = back_tol
            bound = _transition(prevprev, i, 1.0, score, back, px, py, t, cnt, cseg, coff, cdist, inv2s2, beta,
                                beta_per_m, bound_factor, bound_slack, bound_min, max_speed, uturn_penalty, btol,
                                out_ptr, out_seg, seg_from, seg_to, seg_len, seg_rev, dist, pred, touched, hk, hv,
                                mark, stamp, n_targets)
        if bound < 0.0 and recover_factor > 1.0:
            src = prev
            btol = back_tol if t_end[prev] - t[prev] < stay_s or stay_s <= 0.0 else max(back_tol, stay_m)
            bound = _transition(prev, i, recover_factor, score, back, px, py, t, cnt, cseg, coff, cdist, inv2s2, beta,
                                beta_per_m, bound_factor, bound_slack, bound_min, max_speed, uturn_penalty, btol,
                                out_ptr, out_seg, seg_from, seg_to, seg_len, seg_rev, dist, pred, touched, hk, hv,
                                mark, stamp, n_targets)
        if bound >= 0.0:
            pred_pt[i] = src
            pt_bound[i] = bound
            pt_btol[i] = btol
            if src == prevprev and src != prev:
                brk[prev] = 3
                # the spike is dropped: the chain continues from prevprev
                prev = prevprev
            prevprev = prev
            prev = i
            pend = -1
            i += 1
            continue
        if pend < 0:
            pend = i
        if t[i] - t_end[prev] <= skip_max_s:
            brk[i] = 3  # skipped for now; stays an outlier if a later point connects to prev
            i += 1
            continue
        # nothing connected within skip_max_s: break at the first skipped point and resume from there
        for k in range(pend, i + 1):
            brk[k] = 0
        i = pend
        _start_chain(score, cdist, i, cnt[i], inv2s2)
        brk[i] = 2
        prevprev = -1
        prev = i
        pend = -1
        i += 1
    # backtrack every chain from its best end state
    chosen = np.full(n, -1, np.int64)
    on_path = np.zeros(n, np.bool_)
    is_end = np.ones(n, np.bool_)
    for i in range(n):
        if cnt[i] > 0 and pred_pt[i] >= 0:
            is_end[pred_pt[i]] = False
    for i in range(n - 1, -1, -1):
        if cnt[i] == 0 or on_path[i] or not is_end[i] or brk[i] == 3:
            continue
        best = 0
        for b in range(1, cnt[i]):
            if score[i, b] > score[i, best]:
                best = b
        j = i
        cur = best
        while j >= 0:
            chosen[j] = cur
            on_path[j] = True
            pj = pred_pt[j]
            if pj >= 0:
                cur = back[j, cur]
            j = pj
    return chosen, pred_pt, brk, pt_bound, pt_btol, score


@njit(cache=True, nogil=True)
def point_margin(order, chosen, score, cnt, cseg, pt_chain, leg_seg, leg_chain, nseg):
    """Per matched point (in `order`): forward log-likelihood of the chosen candidate over the best rival, a
    candidate on a segment that is not on the point's matched path (so neighbours along the path are no rivals; the
    reverse twin is). +inf when there is no rival; negative when later fixes overruled the forward choice."""
    on = np.full(nseg, -1, np.int64)
    for k in range(leg_seg.shape[0]):
        on[leg_seg[k]] = leg_chain[k]
    m = order.shape[0]
    margin = np.full(m, np.inf)
    for q in range(m):
        i = order[q]
        sc = score[i, chosen[i]]
        for b in range(cnt[i]):
            if on[cseg[i, b]] != pt_chain[q]:
                d = sc - score[i, b]
                if d < margin[q]:
                    margin[q] = d
    return margin


@njit(cache=True, nogil=True)
def leg_confidence(leg_x0, leg_x1, leg_chain, pt_s, pt_chain, pt_conf):
    """Confidence of each leg: the mean confidence of the matched points that place it, from the last point at or
    before its start to the first point at or after its end, within its chain (points in path order)."""
    nl = leg_x0.shape[0]
    m = pt_s.shape[0]
    out = np.zeros(nl, np.float64)
    if m == 0:
        return out
    for k in range(nl):
        lo = np.searchsorted(pt_s, leg_x0[k], side="right") - 1
        hi = np.searchsorted(pt_s, leg_x1[k], side="left")
        if lo < 0:
            lo = 0
        if hi > m - 1:
            hi = m - 1
        total = 0.0
        cnt = 0
        for q in range(lo, hi + 1):
            if pt_chain[q] == leg_chain[k]:
                total += pt_conf[q]
                cnt += 1
        out[k] = total / cnt if cnt else 0.0
    return out


@njit(cache=True, nogil=True)
def _grow_f(a, n):
    b = np.empty(max(2 * a.shape[0], n), a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True, nogil=True)
def build_path(order, pred_pt, cseg, coff, chosen, pt_bound, pt_btol, uturn_penalty, out_ptr, out_seg, seg_from,
               seg_to, seg_len, seg_rev, n_nodes):
    """Legs (segment, from offset, to offset, chain, path position at start) along the matched chains.

    `order` lists matched points in time order; pt_bound and pt_btol are the route bound and backward tolerance
    the Viterbi pass used to reach each point. Returns legs and, per matched point, its position (metres along
    its chain's path) and chain number.
    """
    m = order.shape[0]
    cap = 4 * m + 16
    leg_seg = np.empty(cap, np.int64)
    leg_o0 = np.empty(cap, np.float64)
    leg_o1 = np.empty(cap, np.float64)
    leg_chain = np.empty(cap, np.int64)
    leg_s0 = np.empty(cap, np.float64)
    pt_pos = np.zeros(m, np.float64)
    pt_chain = np.zeros(m, np.int64)
    nseg = seg_len.shape[0]
    dist = np.full(n_nodes, np.inf)
    pred = np.full(n_nodes, -1, np.int64)
    touched = np.empty(n_nodes + 1, np.int64)
    hk = np.empty(nseg + 2, np.float64)
    hv = np.empty(nseg + 2, np.int64)
    path_buf = np.empty(64, np.int64)
    mark = np.full(n_nodes, -1, np.int64)
    nl = 0
    chain = -1
    cur_off = 0.0
    cur_s = 0.0
    for q in range(m):
        i = order[q]
        sb = cseg[i, chosen[i]]
        ob = coff[i, chosen[i]]
        if nl + 4 >= leg_seg.shape[0]:
            leg_seg = _grow_f(leg_seg, nl + 8)
            leg_o0 = _grow_f(leg_o0, nl + 8)
            leg_o1 = _grow_f(leg_o1, nl + 8)
            leg_chain = _grow_f(leg_chain, nl + 8)
            leg_s0 = _grow_f(leg_s0, nl + 8)
        j = pred_pt[i]
        kind = -1
        nt = 0
        sa = -1
        if q > 0 and j >= 0 and j == order[q - 1]:
            sa = cseg[j, chosen[j]]
            oa_raw = coff[j, chosen[j]]
            _route_m, kind, nt = _route(sa, oa_raw, sb, ob, pt_bound[i], pt_btol[i], uturn_penalty, out_ptr, out_seg,
                                     seg_from, seg_to, seg_len, seg_rev, dist, pred, touched, hk, hv, True,
                                     mark, q)
        if kind == -1:
            for k in range(nt):
                dist[touched[k]] = np.inf
            chain += 1
            leg_seg[nl] = sb
            leg_o0[nl] = ob
            leg_o1[nl] = ob
            leg_chain[nl] = chain
            leg_s0[nl] = 0.0
            nl += 1
            cur_off = ob
            cur_s = 0.0
            pt_pos[q] = 0.0
            pt_chain[q] = chain
            continue
        oa = cur_off
        if kind == 0:
            nob = max(ob, oa)
            cur_s += nob - oa
            leg_o1[nl - 1] = nob
            cur_off = nob
        elif kind == 2:
            p = max(oa, seg_len[sa] - ob)
            leg_o1[nl - 1] = p
            cur_s += p - oa
            leg_seg[nl] = sb
            leg_o0[nl] = seg_len[sa] - p
            leg_o1[nl] = ob
            leg_chain[nl] = chain
            leg_s0[nl] = cur_s
            nl += 1
            cur_s += ob - (seg_len[sa] - p)
            cur_off = ob
        else:
            # via nodes: finish the current segment, the shortest path's segments, then the start of sb
            leg_o1[nl - 1] = seg_len[sa]
            cur_s += seg_len[sa] - oa
            npath = 0
            if True:
                v = seg_from[sb]
                while pred[v] >= 0 and v != seg_to[sa]:
                    if npath >= path_buf.shape[0]:
                        path_buf = _grow_f(path_buf, npath + 1)
                    path_buf[npath] = pred[v]
                    npath += 1
                    v = seg_from[pred[v]]
            for k in range(npath - 1, -1, -1):
                s = path_buf[k]
                if nl + 4 >= leg_seg.shape[0]:
                    leg_seg = _grow_f(leg_seg, nl + 8)
                    leg_o0 = _grow_f(leg_o0, nl + 8)
                    leg_o1 = _grow_f(leg_o1, nl + 8)
                    leg_chain = _grow_f(leg_chain, nl + 8)
                    leg_s0 = _grow_f(leg_s0, nl + 8)
                leg_seg[nl] = s
                leg_o0[nl] = 0.0
                leg_o1[nl] = seg_len[s]
                leg_chain[nl] = chain
                leg_s0[nl] = cur_s
                nl += 1
                cur_s += seg_len[s]
            leg_seg[nl] = sb
            leg_o0[nl] = 0.0
            leg_o1[nl] = ob
            leg_chain[nl] = chain
            leg_s0[nl] = cur_s
            nl += 1
            cur_s += ob
            cur_off = ob
        for k in range(nt):
            dist[touched[k]] = np.inf
        pt_pos[q] = cur_s
        pt_chain[q] = chain
    return leg_seg[:nl], leg_o0[:nl], leg_o1[:nl], leg_chain[:nl], leg_s0[:nl], pt_pos, pt_chain
