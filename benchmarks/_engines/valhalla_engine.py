"""Valhalla's map matcher (pyvalhalla `Actor.trace_attributes`, shape_match=map_snap) on tiles built from the
same OSM extract as our network; its edges are mapped back to our directed segments by OSM way id + geometry.

Units: metres, seconds, WGS84 degrees.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks._engines.common import (
    LocalProjection,
    PathMatch,
    Trace,
    covered_fraction,
    decode_polyline,
    polyline_length,
    sample_along,
)

ATTRIBUTES = ["edge.way_id", "edge.begin_shape_index", "edge.end_shape_index", "edge.length", "shape"]
OVERLAP_TOL_M = 1.5  # our and Valhalla's geometry come from the same OSM nodes; 1.5 m absorbs rounding


def _valhalla_bin(name: str) -> str:
    import valhalla

    path = Path(valhalla.__file__).parent / "bin" / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} not found in the pyvalhalla wheel at {path}")
    return str(path)


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def build_tiles(pbf: str, work_dir: str | os.PathLike) -> str:
    """Build Valhalla routing tiles for pbf under work_dir (skipped when already built from the same file).

    Returns the path of the valhalla.json config that points at the tiles.
    """
    from valhalla.config import get_config

    work = Path(work_dir)
    tiles = work / "tiles"
    config_path = work / "valhalla.json"
    stamp = work / f".built-{_file_digest(pbf)}"
    if stamp.exists() and config_path.exists() and any(tiles.rglob("*.gph")):
        return str(config_path)
    tiles.mkdir(parents=True, exist_ok=True)
    cfg = get_config(tile_extract="", tile_dir=str(tiles))
    for key in ("traffic_extract", "admin", "landmarks", "timezone", "transit_dir", "transit_feeds_dir"):
        cfg["mjolnir"][key] = ""  # no admin/time-zone databases: country overrides are not needed here
    cfg["mjolnir"]["data_processing"]["use_admin_db"] = False
    cfg["mjolnir"]["concurrency"] = 1
    cfg["mjolnir"]["logging"]["type"] = ""
    cfg["meili"]["logging"]["type"] = ""
    cfg["loki"]["logging"]["type"] = ""
    cfg["thor"]["logging"]["type"] = ""
    cfg["odin"]["logging"]["type"] = ""
    config_path.write_text(json.dumps(cfg, indent=1))
    for old in work.glob(".built-*"):
        old.unlink()
    log = work / "build_tiles.log"
    with open(log, "w") as fh:
        proc = subprocess.run([_valhalla_bin("valhalla_build_tiles"), "-c", str(config_path), pbf],
                              stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not any(tiles.rglob("*.gph")):
        raise RuntimeError(f"valhalla_build_tiles failed (exit {proc.returncode}); see {log}")
    stamp.touch()
    return str(config_path)


class WayIndex:
    """Our directed segments grouped by OSM way id, with interior samples for overlap tests."""

    def __init__(self, segments: pd.DataFrame, proj: LocalProjection):
        self.proj = proj
        self._rows: dict[int, list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {}
        ways = segments["osm_way_id"]
        keep = ways.notna().to_numpy()
        for sid, way, glon, glat in zip(segments["segment_id"].to_numpy()[keep], ways[keep].to_numpy(),
                                        segments["geom_lon_deg"].to_numpy()[keep],
                                        segments["geom_lat_deg"].to_numpy()[keep], strict=True):
            x, y = proj.xy(glon, glat)
            self._rows.setdefault(int(way), []).append((int(sid), *sample_along(x, y)))

    def segments_on(self, way_id: int, px: np.ndarray, py: np.ndarray) -> list[tuple[int, float]]:
        """Our segments of way_id overlapping polyline p in the same direction, with the covered share."""
        out = []
        for sid, sx, sy, tx, ty in self._rows.get(int(way_id), ()):
            frac = covered_fraction(sx, sy, tx, ty, px, py, OVERLAP_TOL_M)
            if frac > 0:
                out.append((sid, frac))
        return out


class ValhallaEngine:
    """Valhalla Actor on tiles from the extract; `match` is the timed call, `to_segments` maps the result."""

    name = "valhalla"

    def __init__(self, pbf: str, work_dir: str | os.PathLike, segments: pd.DataFrame, proj: LocalProjection):
        self.pbf = pbf
        self.work_dir = work_dir
        self.segments = segments
        self.proj = proj
        self.actor = None
        self.index: WayIndex | None = None
        self.gps_sigma_m = 5.0
        self.search_radius_m = 50.0

    def prepare(self) -> None:
        """Build (or reuse) tiles and open the Actor; index our segments by way for the mapping."""
        import valhalla

        config = build_tiles(self.pbf, self.work_dir)
        self.actor = valhalla.Actor(config)
        self.index = WayIndex(self.segments, self.proj)

    def configure(self, noise_m: float, interval_s: float) -> None:
        """Tell the matcher the GPS noise of the cell (the same figure every engine gets)."""
        self.gps_sigma_m = max(float(noise_m), 1.0)
        self.search_radius_m = max(50.0, 4.0 * self.gps_sigma_m)

    def request(self, trace: Trace) -> str:
        req = {
            "shape": [{"lon": float(x), "lat": float(y), "time": float(t)}
                      for x, y, t in zip(trace.lon, trace.lat, trace.t_s, strict=True)],
            "costing": "auto",
            "shape_match": "map_snap",
            "use_timestamps": True,
            "trace_options": {"gps_accuracy": self.gps_sigma_m, "search_radius": self.search_radius_m},
            "filters": {"attributes": ATTRIBUTES, "action": "include"},
        }
        return json.dumps(req)

    def match(self, trace: Trace):
        """Matched edges + shape (raw JSON dict), or None when Valhalla finds no path."""
        try:
            return json.loads(self.actor.trace_attributes(self.request(trace)))
        except RuntimeError:
            return None

    def to_segments(self, raw) -> PathMatch:
        """Map each Valhalla edge to our segments of the same way that it covers in the same direction."""
        if raw is None or not raw.get("edges"):
            return PathMatch(failed=True)
        shape = decode_polyline(raw["shape"], 6)
        sx, sy = self.proj.xy(shape[:, 0], shape[:, 1])
        ids: list[int] = []
        unmapped = 0.0
        for edge in raw["edges"]:
            b, e = int(edge["begin_shape_index"]), int(edge["end_shape_index"])
            px, py = sx[b:e + 1], sy[b:e + 1]
            hits = self.index.segments_on(int(edge.get("way_id", 0)), px, py)
            if not hits:
                unmapped += polyline_length(px, py)
                continue
            # order our segments along the Valhalla edge by their position on it
            ids.extend(sid for sid, _ in hits)
        return PathMatch(segment_ids=ids, unmapped_m=unmapped)
