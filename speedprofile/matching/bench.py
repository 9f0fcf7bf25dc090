"""`speedprofile bench match --kubicka DIR`: map-matching accuracy and throughput on Kubicka et al. (2015).

Accuracy per track = length of correctly matched arcs / length of the union of matched and true arcs (Newson &
Krumm's route-overlap measure, directed: the reverse twin of a true arc is a miss), averaged weighted by the true
route length. Throughput = matched points / CPU seconds of matching (graph loading timed separately).

`--folds K` adds k-fold cross-validation: the tracks are dealt into K folds (in id order, round robin); for each
fold the parameter set of a small grid with the best accuracy on the other folds is chosen (ties: the set with the
fewest changes from the defaults) and scored on that fold only. Parameters that only help the tracks they were chosen on show up as a gap between the training and the
held-out accuracy.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import time

import numpy as np

from speedprofile.errors import UserError

RESULTS = os.path.join(os.environ.get("TMPDIR", "/tmp"), "speedprofile-bench", "bench_match.json")  # scratch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubicka", required=True, metavar="DIR",
                        help="folder of track folders NNNNNNNN/NNNNNNNN.{nodes,arcs,track,route}[.gz]")
    parser.add_argument("--tracks", default=None, help="comma-separated track ids (default: all in DIR)")
    parser.add_argument("--out", default=None, help=f"JSON result file (default: {RESULTS}, a scratch folder)")
    parser.add_argument("--folds", type=int, default=0, metavar="K",
                        help="also cross-validate: tune on K-1 folds of the tracks, score on the K-th (K >= 2)")
    parser.add_argument("--grid", default=None, metavar="JSON",
                        help='parameter grid for --folds, e.g. \'{"sigma_m": [7, 10, 13]}\' (default: CV_GRID)')


# Parameter grid searched by --folds (every combination; the defaults are one of them).
CV_GRID = {
    "radius_m": [40.0, 50.0],
    "sigma_m": [7.0, 10.0, 13.0],
    "beta_per_m": [0.1, 0.15],
    "skip_max_s": [0.0, 30.0],
    "stay_s": [0.0, 30.0],
    "offroad_m": [0.0, 25.0],
}


def _read_tsv(path: str, ncols: int) -> np.ndarray:
    """Tab-separated numbers, gzip or plain (detected by magic bytes) -> float64 array (rows, ncols)."""
    import pandas as pd

    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        if not raw.strip():
            return np.zeros((0, ncols))
        arr = pd.read_csv(io.BytesIO(raw), sep="\t", header=None, dtype=np.float64, engine="c").to_numpy()
    except (OSError, EOFError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if arr.shape[1] < ncols:
        raise UserError(f"{path}: expected {ncols} tab-separated columns, found {arr.shape[1]}")
    return arr[:, :ncols]


def _find(folder: str, tid: str, kind: str) -> str:
    for name in (f"{tid}.{kind}.gz", f"{tid}.{kind}"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    raise UserError(f"track {tid}: no {kind} file in {folder}")


def list_tracks(root: str, only: list[str] | None) -> list[str]:
    if not os.path.isdir(root):
        raise UserError(f"--kubicka {root}: not a folder")
    found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
                   and any(re.fullmatch(rf"{re.escape(d)}\.track(\.gz)?", f) for f in os.listdir(os.path.join(root, d))))
    if only:
        missing = [t for t in only if t not in found]
        if missing:
            raise UserError(f"--tracks: no track folder {', '.join(missing)} in {root}")
        return [t for t in found if t in only]
    if not found:
        raise UserError(f"--kubicka {root}: no track folders (NNNNNNNN/NNNNNNNN.track[.gz])")
    return found


def load_track(root: str, tid: str, cell_m: float = 100.0):
    """(network, lon, lat, t, true route arc ids) of one track; network built from straight arcs."""
    from speedprofile.matching.network import build_network
    from speedprofile.network.graph import haversine_m

    folder = os.path.join(root, tid)
    nodes = _read_tsv(_find(folder, tid, "nodes"), 2)
    arcs = _read_tsv(_find(folder, tid, "arcs"), 2).astype(np.int64)
    track = _read_tsv(_find(folder, tid, "track"), 3)
    route = _read_tsv(_find(folder, tid, "route"), 1).astype(np.int64)[:, 0]
    src, dst = arcs[:, 0], arcs[:, 1]
    n = len(arcs)
    if n and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= len(nodes)):
        raise UserError(f"track {tid}: arcs refer to node ids outside 0..{len(nodes) - 1}")
    bad = (route < 0) | (route >= n)
    if bad.any():
        raise UserError(f"track {tid}: route refers to arc ids outside 0..{n - 1}")
    glon = np.empty(2 * n)
    glat = np.empty(2 * n)
    glon[0::2], glon[1::2] = nodes[src, 0], nodes[dst, 0]
    glat[0::2], glat[1::2] = nodes[src, 1], nodes[dst, 1]
    length = haversine_m(nodes[src, 0], nodes[src, 1], nodes[dst, 0], nodes[dst, 1])
    net = build_network(np.arange(n, dtype=np.int64), src, dst, length, np.arange(0, 2 * n + 1, 2), glon, glat,
                        cell_m=cell_m)
    return net, track[:, 0], track[:, 1], track[:, 2], route


def route_overlap(matched: np.ndarray, truth: np.ndarray, seg_len: np.ndarray) -> tuple[float, float, float]:
    """(correct metres, union metres, true metres) over directed arc sets."""
    m = np.unique(matched)
    t = np.unique(truth)
    inter = np.intersect1d(m, t)
    union = np.union1d(m, t)
    return float(seg_len[inter].sum()), float(seg_len[union].sum()), float(seg_len[t].sum())


def run(root: str, tracks: list[str], params=None, out=print) -> dict:
    from speedprofile.matching.kernel import Matcher, MatchParams

    params = params or MatchParams()
    rows = []
    tot_pts = 0
    tot_cpu = 0.0
    tot_load = 0.0
    wsum = 0.0
    asum = 0.0
    out(f"{'track':>8} {'points':>7} {'arcs':>8} {'load_s':>7} {'cpu_s':>7} {'pts/s':>8} {'accuracy':>8} {'breaks':>6}")
    for tid in tracks:
        t0 = time.perf_counter()
        net, lon, lat, t, route = load_track(root, tid)
        matcher = Matcher(net, params)
        load_s = time.perf_counter() - t0
        c0 = time.process_time()
        pm = matcher.match_points(lon, lat, t - t[0] if len(t) else t)
        cpu = time.process_time() - c0
        matched = pm.legs["seg_index"].to_numpy() if len(pm.legs) else np.zeros(0, np.int64)
        correct, union, true_len = route_overlap(matched, route, net.seg_len)
        acc = correct / union if union > 0 else 0.0
        npts = len(lon)
        tot_pts += npts
        tot_cpu += cpu
        tot_load += load_s
        wsum += true_len
        asum += acc * true_len
        brk = sum(pm.breaks.values())
        rows.append({"track": tid, "points": npts, "accuracy": acc, "cpu_s": cpu, "load_s": load_s, "breaks": brk})
        out(f"{tid:>8} {npts:>7} {net.n_segments:>8} {load_s:>7.2f} {cpu:>7.3f} {npts / max(cpu, 1e-9):>8.0f} "
            f"{acc:>8.4f} {brk:>6}")
    summary = {
        "tracks": len(rows),
        "points": tot_pts,
        "accuracy": round(asum / wsum, 5) if wsum > 0 else 0.0,
        "points_per_second": round(tot_pts / max(tot_cpu, 1e-9), 1),
        "cores": 1,
        "match_cpu_s": round(tot_cpu, 3),
        "load_s": round(tot_load, 3),
        "worst": sorted(rows, key=lambda r: r["accuracy"])[:5],
        "params": params.to_dict(),
    }
    return summary


def _grid(spec: str | None) -> list[dict]:
    """Every combination of the grid's values (JSON object of lists, or CV_GRID) as MatchParams keyword sets."""
    import itertools

    from speedprofile.matching.kernel import MatchParams

    grid = CV_GRID
    if spec is not None:
        try:
            grid = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise UserError(f"--grid: not JSON ({exc.msg})") from None
        if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
            raise UserError("--grid: expected a JSON object of non-empty lists, e.g. {\"sigma_m\": [7, 10]}")
    known = set(MatchParams.__dataclass_fields__)
    unknown = sorted(set(grid) - known)
    if unknown:
        raise UserError(f"--grid: unknown parameter {', '.join(unknown)} (see MatchParams)")
    keys = sorted(grid)
    combos = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(grid[k] for k in keys))]
    for kw in combos:
        try:
            MatchParams(**kw)
        except TypeError as exc:
            raise UserError(f"--grid: {exc}") from None
    return combos


def cross_validate(root: str, tracks: list[str], folds: int, combos: list[dict], out=print) -> dict:
    """k-fold CV over the tracks: per fold, the grid point best on the other folds, scored on this fold."""
    from speedprofile.matching.kernel import Matcher, MatchParams

    if folds < 2 or folds > len(tracks):
        raise UserError(f"--folds {folds}: need 2 <= K <= number of tracks ({len(tracks)})")
    nc = len(combos)
    correct = np.zeros((nc, len(tracks)))
    union = np.zeros((nc, len(tracks)))
    true_len = np.zeros(len(tracks))
    for j, tid in enumerate(tracks):
        net, lon, lat, t, route = load_track(root, tid)
        tt = t - t[0] if len(t) else t
        for c, kw in enumerate(combos):
            pm = Matcher(net, MatchParams(**kw)).match_points(lon, lat, tt)
            matched = pm.legs["seg_index"].to_numpy() if len(pm.legs) else np.zeros(0, np.int64)
            correct[c, j], union[c, j], true_len[j] = route_overlap(matched, route, net.seg_len)
    acc = np.divide(correct, union, out=np.zeros_like(correct), where=union > 0)
    defaults = MatchParams().to_dict()
    off_default = [sum(float(v) != float(defaults[k]) for k, v in kw.items()) for kw in combos]
    fold_of = np.arange(len(tracks)) % folds

    def weighted(c: int, mask: np.ndarray) -> float:
        w = true_len[mask]
        return float((acc[c, mask] * w).sum() / w.sum()) if w.sum() > 0 else 0.0

    rows = []
    held_out = np.zeros(len(tracks))
    out(f"{'fold':>4} {'tracks':>6} {'train':>7} {'test':>7}  chosen parameters")
    for f in range(folds):
        test = fold_of == f
        train = ~test
        # ties (the training tracks cannot tell the parameter sets apart) go to the one nearest the defaults
        best = max(range(nc), key=lambda c: (round(weighted(c, train), 9), -off_default[c], -c))
        held_out[test] = acc[best, test]
        row = {"fold": f, "tracks": [tracks[j] for j in np.nonzero(test)[0]], "params": combos[best],
               "train_accuracy": round(weighted(best, train), 5), "test_accuracy": round(weighted(best, test), 5)}
        rows.append(row)
        out(f"{f:>4} {int(test.sum()):>6} {row['train_accuracy']:>7.4f} {row['test_accuracy']:>7.4f}  "
            f"{json.dumps(combos[best])}")
    tests = [r["test_accuracy"] for r in rows]
    worst = int(np.argmin(held_out))
    return {
        "folds": folds,
        "grid_size": nc,
        "mean_accuracy": round(float(np.mean(tests)), 5),
        "worst_fold_accuracy": round(float(np.min(tests)), 5),
        "pooled_accuracy": round(float((held_out * true_len).sum() / true_len.sum()), 5) if true_len.sum() else 0.0,
        "min_track": {"track": tracks[worst], "accuracy": round(float(held_out[worst]), 5)},
        "tracks_below_0_90": [tracks[j] for j in np.nonzero(held_out < 0.90)[0]],
        "per_fold": rows,
        "held_out_per_track": {tracks[j]: round(float(held_out[j]), 5) for j in range(len(tracks))},
    }


def cli(args: argparse.Namespace) -> int:
    from speedprofile.matching import _core  # noqa: F401  (compile/load the kernels before timing)
    from speedprofile.matching.kernel import warm_up

    only = [t.strip() for t in args.tracks.split(",")] if args.tracks else None
    tracks = list_tracks(args.kubicka, only)
    warm_up()
    combos = _grid(args.grid) if args.folds else None
    if args.folds and not 2 <= args.folds <= len(tracks):
        raise UserError(f"--folds {args.folds}: need 2 <= K <= number of tracks ({len(tracks)})")
    summary = run(args.kubicka, tracks)
    if args.folds:
        print()
        summary["cv"] = cross_validate(args.kubicka, tracks, args.folds, combos)
    path = os.path.abspath(args.out or RESULTS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(summary, fh, indent=2)
    head = {k: summary[k] for k in ("tracks", "points", "accuracy", "points_per_second", "cores")}
    if args.folds:
        cv = summary["cv"]
        head.update({"cv_folds": cv["folds"], "cv_accuracy_mean": cv["mean_accuracy"],
                     "cv_accuracy_worst_fold": cv["worst_fold_accuracy"], "cv_accuracy_min_track": cv["min_track"]["accuracy"]})
        print(f"cv: mean {cv['mean_accuracy']:.4f}, worst fold {cv['worst_fold_accuracy']:.4f}, "
              f"lowest track {cv['min_track']['track']} {cv['min_track']['accuracy']:.4f}")
    print(f"load_s={summary['load_s']} match_cpu_s={summary['match_cpu_s']} results={path}")
    print(json.dumps(head))
    return 0
