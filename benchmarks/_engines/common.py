"""Shared pieces of the side-by-side matching benchmark: traces, local projection, polyline overlap, scoring.

Grain: one trace (ordered GPS fixes) in, one path of our directed road segments out. Units: metres, seconds
(epoch), WGS84 degrees. Scoring is length-weighted over our network's directed segments.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

EARTH_RADIUS_M = 6_371_008.8
END_SLACK_M = 0.25  # overlap tests ignore samples further than this past a polyline end


@dataclass
class Trace:
    """One vehicle trace: fixes in time order (epoch seconds, WGS84 degrees)."""

    trace_id: str
    t_s: np.ndarray
    lon: np.ndarray
    lat: np.ndarray

    def __len__(self) -> int:
        return len(self.t_s)


@dataclass
class PathMatch:
    """An engine's matched path expressed on our network.

    segment_ids: our directed segment ids in path order (repeats allowed). unmapped_m: matched length the engine
    put on roads that have no counterpart in our network (counted against precision). failed: the engine
    returned no path for the trace (all true length is missed).
    """

    segment_ids: list[int] = field(default_factory=list)
    unmapped_m: float = 0.0
    failed: bool = False


class LocalProjection:
    """Equirectangular projection to metres around a reference point (error < 0.1 % within ~50 km)."""

    def __init__(self, lon0: float, lat0: float):
        self.lon0 = float(lon0)
        self.lat0 = float(lat0)
        self.kx = np.radians(1.0) * EARTH_RADIUS_M * np.cos(np.radians(self.lat0))
        self.ky = np.radians(1.0) * EARTH_RADIUS_M

    def xy(self, lon, lat) -> tuple[np.ndarray, np.ndarray]:
        """Degrees -> metres east/north of the reference point."""
        return ((np.asarray(lon, dtype=np.float64) - self.lon0) * self.kx,
                (np.asarray(lat, dtype=np.float64) - self.lat0) * self.ky)


def polyline_length(x: np.ndarray, y: np.ndarray) -> float:
    """Length of a planar polyline, metres."""
    if len(x) < 2:
        return 0.0
    return float(np.hypot(np.diff(x), np.diff(y)).sum())


def sample_along(x: np.ndarray, y: np.ndarray, step_m: float = 2.0, min_samples: int = 5):
    """Interior sample points of a polyline (ends excluded) with unit tangents: (px, py, tx, ty)."""
    dx, dy = np.diff(x), np.diff(y)
    seg = np.hypot(dx, dy)
    total = seg.sum()
    n = max(min_samples, int(total / step_m))
    if total <= 0:
        return np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0)
    s = (np.arange(n) + 0.5) / n * total
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    k = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
    f = np.divide(s - cum[k], seg[k], out=np.zeros_like(s), where=seg[k] > 0)
    ux = np.divide(dx[k], seg[k], out=np.zeros_like(s), where=seg[k] > 0)
    uy = np.divide(dy[k], seg[k], out=np.zeros_like(s), where=seg[k] > 0)
    return x[k] + f * dx[k], y[k] + f * dy[k], ux, uy


def covered_fraction(sx, sy, tx, ty, px: np.ndarray, py: np.ndarray, tol_m: float = 1.5) -> float:
    """Share of samples (with tangents) lying within tol_m of polyline p and running the same way along it."""
    if len(sx) == 0 or len(px) < 2:
        return 0.0
    ax, ay = px[:-1], py[:-1]
    dx, dy = np.diff(px), np.diff(py)
    l2 = dx * dx + dy * dy
    # (samples x polyline pieces) projection parameter, clamped to the piece
    u_raw = ((sx[:, None] - ax[None, :]) * dx[None, :] + (sy[:, None] - ay[None, :]) * dy[None, :])
    u_raw = np.divide(u_raw, l2[None, :], out=np.zeros_like(u_raw), where=l2[None, :] > 0)
    u = np.clip(u_raw, 0.0, 1.0)
    qx = ax[None, :] + u * dx[None, :]
    qy = ay[None, :] + u * dy[None, :]
    d = np.hypot(sx[:, None] - qx, sy[:, None] - qy)
    j = np.argmin(d, axis=1)
    rows = np.arange(len(sx))
    near = d[rows, j] <= tol_m
    ln = np.sqrt(l2[j])
    # a sample beyond either end of p (more than END_SLACK_M along it) is not covered, however close
    slack = np.divide(END_SLACK_M, ln, out=np.zeros_like(ln), where=ln > 0)
    m = len(dx)
    near &= ~((j == 0) & (u_raw[rows, j] < -slack)) & ~((j == m - 1) & (u_raw[rows, j] > 1 + slack))
    cos = np.divide(tx * dx[j] + ty * dy[j], ln, out=np.zeros_like(ln), where=ln > 0)
    return float(np.mean(near & (cos > 0.5)))


def score_trace(true_ids: Iterable[int], match: PathMatch, length_m: Mapping[int, float],
                reverse_of: Mapping[int, int] | None = None, observable_ids: Iterable[int] | None = None) -> dict:
    """Length-weighted overlap of one trace: true_m, matched_m (incl. unmapped), correct_m (matched ∩ true),
    reverse_m: wrongly matched length on the reverse twin of a true segment (U-turn artefacts), and the same
    overlap restricted to the observable part of the true path (driven between the first and last fix).

    Paths are compared as sets of directed segment ids (a segment driven twice counts once).
    """
    true_set = {int(s) for s in true_ids}
    matched_set = set() if match.failed else {int(s) for s in match.segment_ids}
    unknown = [s for s in true_set | matched_set if s not in length_m]
    if unknown:
        raise KeyError(f"segment ids not in the network: {sorted(unknown)[:5]}")
    true_m = sum(length_m[s] for s in true_set)
    matched_m = sum(length_m[s] for s in matched_set) + (0.0 if match.failed else float(match.unmapped_m))
    correct_m = sum(length_m[s] for s in true_set & matched_set)
    reverse_m = 0.0
    if reverse_of is not None:
        reverse_m = sum(length_m[s] for s in matched_set - true_set if reverse_of.get(s) in true_set)
    obs_set = true_set if observable_ids is None else {int(s) for s in observable_ids} & true_set
    observable_m = sum(length_m[s] for s in obs_set)
    correct_observable_m = sum(length_m[s] for s in obs_set & matched_set)
    return {"true_m": true_m, "matched_m": matched_m, "correct_m": correct_m, "reverse_m": reverse_m,
            "observable_m": observable_m, "correct_observable_m": correct_observable_m,
            "unmapped_m": 0.0 if match.failed else float(match.unmapped_m), "failed": bool(match.failed)}


def summarize(rows: Sequence[dict]) -> dict:
    """Micro-averaged recall = correct/true and precision = correct/matched over traces (lengths summed)."""
    true_m = sum(r["true_m"] for r in rows)
    matched_m = sum(r["matched_m"] for r in rows)
    correct_m = sum(r["correct_m"] for r in rows)
    reverse_m = sum(r.get("reverse_m", 0.0) for r in rows)
    obs_m = sum(r.get("observable_m", r["true_m"]) for r in rows)
    return {
        "traces": len(rows),
        "failed_traces": sum(1 for r in rows if r["failed"]),
        "true_km": round(true_m / 1000.0, 3),
        "matched_km": round(matched_m / 1000.0, 3),
        "unmapped_km": round(sum(r.get("unmapped_m", 0.0) for r in rows) / 1000.0, 3),
        "recall": round(correct_m / true_m, 4) if true_m > 0 else None,
        "precision": round(correct_m / matched_m, 4) if matched_m > 0 else None,
        # recall against the part of the true path driven between a trace's first and last fix
        "recall_observable": round(sum(r.get("correct_observable_m", r["correct_m"]) for r in rows) / obs_m, 4)
        if obs_m > 0 else None,
        # precision when wrong segments that are the reverse twin of a true one (U-turn artefacts) are ignored
        "precision_no_uturn": round(correct_m / (matched_m - reverse_m), 4) if matched_m - reverse_m > 0 else None,
    }


def dedupe_consecutive(ids: Iterable[int]) -> list[int]:
    """Drop immediate repeats (an engine reporting one segment per GPS fix) while keeping path order."""
    out: list[int] = []
    for s in ids:
        s = int(s)
        if not out or out[-1] != s:
            out.append(s)
    return out


def decode_polyline(encoded: str, precision: int = 6) -> np.ndarray:
    """Google encoded polyline (Valhalla uses precision 6) -> (n, 2) array of (lon, lat) degrees."""
    coords: list[tuple[float, float]] = []
    index = lat = lon = 0
    factor = float(10**precision)
    n = len(encoded)
    while index < n:
        deltas = []
        for _ in range(2):
            shift = result = 0
            while True:
                b = ord(encoded[index]) - 63
                index += 1
                result |= (b & 0x1F) << shift
                shift += 5
                if b < 0x20:
                    break
            deltas.append(~(result >> 1) if result & 1 else result >> 1)
        lat += deltas[0]
        lon += deltas[1]
        coords.append((lon / factor, lat / factor))
    return np.asarray(coords, dtype=np.float64).reshape(-1, 2)


@contextlib.contextmanager
def output_to(log_path: str | os.PathLike):
    """Send this process's stdout/stderr file descriptors (C++ library logging included) to a file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
