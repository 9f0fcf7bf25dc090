"""`speedprofile export`: speed_estimates in interchange formats, one row/feature per directed segment.

- valhalla: `valhalla_historical_traffic.csv` — osm_way_id, from_node_id, to_node_id, freeflow_speed,
  constrained_speed (km/h, integers), historical_speeds (2016 five-minute speeds from Sunday 00:00 local,
  DCT-II -> 200 int16 big-endian -> base64, as Valhalla's add_predicted_traffic reads them).
- mapbox: `mapbox_typical.csv` — Mapbox Typical layout: from_node_id, to_node_id, then 2016 integer km/h speeds,
  Sunday 00:00 local first; no header.
- geojson: `speed_segments.geojson` (RFC 7946, WGS84) and `speed_segments.parquet` (GeoParquet 1.1, WKB) for
  QGIS — segment attributes, free-flow / constrained speed and the mean speed of each hour of the week.
Buckets without an estimate are filled by circular linear interpolation over the week; segments without any
estimate, and (for valhalla/mapbox) segments without OSM ids, are skipped and counted.
"""

from __future__ import annotations

import argparse
import csv
import json
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas.bucketed_traversals import N_BUCKETS
from speedprofile import warehouse as wh
from speedprofile.errors import UserError
from speedprofile.serve import predicted_speeds as ps
from speedprofile.serve.timeofweek import BUCKETS_PER_DAY, DAYS

FORMATS = ("valhalla", "mapbox", "geojson")
_HOUR = np.arange(N_BUCKETS) % BUCKETS_PER_DAY // 12
NIGHT = (_HOUR >= 22) | (_HOUR < 5)  # Valhalla's "freeflow": typical night speed
DAY = (_HOUR >= 7) & (_HOUR < 19)  # Valhalla's "constrained": typical daytime speed
HOUR_COLUMNS = [f"kph_{DAYS[d].lower()}_{h:02d}" for d in range(7) for h in range(24)]


def fill_week(speeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2016) speeds with NaN gaps -> filled copy (circular linear interpolation) and a mask of rows with data."""
    out = speeds.astype(float).copy()
    has = np.isfinite(out).any(axis=1)
    x = np.arange(N_BUCKETS)
    for i in np.where(has & ~np.isfinite(out).all(axis=1))[0]:
        ok = np.isfinite(out[i])
        xs, ys = x[ok], out[i, ok]
        out[i] = np.interp(x, np.concatenate([xs - N_BUCKETS, xs, xs + N_BUCKETS]), np.tile(ys, 3))
    return out, has


def weekly_profiles(warehouse: str, partitions: Sequence[str] | None = None) -> Iterator[tuple[pd.DataFrame, np.ndarray, np.ndarray]]:
    """Per partition: segments, raw (n, 2016) speed matrix (NaN = no estimate), free_flow_kph per segment."""
    from speedprofile.serve.data import estimate_partitions, load_estimates, load_segments

    cells = list(partitions) if partitions else estimate_partitions(warehouse)
    for cell in cells:
        segs = load_segments(warehouse, [cell]).reset_index(drop=True)
        est = load_estimates(warehouse, [cell], columns=["segment_id", "tow_bucket", "speed_kph", "free_flow_kph"])
        row = pd.Series(np.arange(len(segs)), index=segs["segment_id"].to_numpy())
        r = row.reindex(est["segment_id"].to_numpy()).to_numpy()
        b = est["tow_bucket"].to_numpy(dtype=float)
        ok = np.isfinite(r) & (b >= 0) & (b < N_BUCKETS)
        speeds = np.full((len(segs), N_BUCKETS), np.nan)
        speeds[r[ok].astype(int), b[ok].astype(int)] = est["speed_kph"].to_numpy(dtype=float)[ok]
        ff = est[ok].groupby("segment_id")["free_flow_kph"].median()
        yield segs, speeds, ff.reindex(segs["segment_id"]).to_numpy(dtype=float)


def _freeflow_constrained(filled: np.ndarray, ff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    free = np.where(np.isfinite(ff), ff, filled[:, NIGHT].mean(axis=1))
    cons = filled[:, DAY].mean(axis=1)
    return np.clip(np.round(free), 1, 255).astype(int), np.clip(np.round(cons), 1, 255).astype(int)


def _keyed_profiles(warehouse: str, partitions: Sequence[str] | None, counts: dict[str, Any]):
    """Gap-filled weekly profiles of the segments that have estimates and an OSM key; counts what is skipped."""
    for segs, speeds, ff in weekly_profiles(warehouse, partitions):
        filled, has = fill_week(speeds)
        osm = segs["osm_way_id"].notna().to_numpy()
        counts["segments_in"] += len(segs)
        counts["skipped"]["no_estimates"] += int((~has).sum())
        counts["skipped"]["no_osm_way_id"] += int((has & ~osm).sum())
        keep = has & osm
        if keep.any():
            yield segs[keep], filled[keep], ff[keep]


def _export_counts() -> dict[str, Any]:
    return {"segments_in": 0, "rows_written": 0, "skipped": {"no_estimates": 0, "no_osm_way_id": 0}}


def export_valhalla(warehouse: str, out_dir: Path, partitions: Sequence[str] | None = None) -> dict:
    """Write valhalla_historical_traffic.csv; returns row accounting."""
    path = out_dir / "valhalla_historical_traffic.csv"
    counts = _export_counts()
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["osm_way_id", "from_node_id", "to_node_id", "freeflow_speed", "constrained_speed", "historical_speeds"])
        for s, filled, ff in _keyed_profiles(warehouse, partitions, counts):
            coef = ps.compress(filled)
            free, cons = _freeflow_constrained(filled, ff)
            for way, a, b, f, c, k in zip(s["osm_way_id"], s["from_node_id"], s["to_node_id"], free, cons, coef, strict=True):
                w.writerow([int(way), int(a), int(b), int(f), int(c), ps.encode(k)])
            counts["rows_written"] += len(s)
    return {"file": str(path), **counts}


def export_mapbox(warehouse: str, out_dir: Path, partitions: Sequence[str] | None = None) -> dict:
    """Write mapbox_typical.csv (node pair + 2016 integer speeds, Sunday 00:00 first, no header)."""
    path = out_dir / "mapbox_typical.csv"
    counts = _export_counts()
    with open(path, "w", newline="") as fh:
        for segs, filled, _ in _keyed_profiles(warehouse, partitions, counts):
            block = np.column_stack([segs["from_node_id"].to_numpy(np.int64),
                                     segs["to_node_id"].to_numpy(np.int64),
                                     np.clip(np.round(filled), 0, None).astype(np.int64)])
            np.savetxt(fh, block, fmt="%d", delimiter=",")
            counts["rows_written"] += len(segs)
    return {"file": str(path), **counts}


def _wkb_linestring(lon: np.ndarray, lat: np.ndarray) -> bytes:
    xy = np.column_stack([np.asarray(lon, "<f8"), np.asarray(lat, "<f8")])
    return struct.pack("<BII", 1, 2, len(xy)) + xy.astype("<f8").tobytes()


def _none(v):
    return None if v is None or pd.isna(v) else v


def export_geojson(warehouse: str, out_dir: Path, partitions: Sequence[str] | None = None) -> dict:
    """Write speed_segments.geojson and speed_segments.parquet (GeoParquet, WKB LineStrings, EPSG:4326)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    gj_path, gp_path = out_dir / "speed_segments.geojson", out_dir / "speed_segments.parquet"
    counts: dict[str, Any] = {"segments_in": 0, "features_written": 0, "skipped": {"no_estimates": 0}}
    tables = []
    with open(gj_path, "w") as fh:
        fh.write('{"type":"FeatureCollection","features":[\n')
        first = True
        for segs, speeds, ff in weekly_profiles(warehouse, partitions):
            filled, has = fill_week(speeds)
            counts["segments_in"] += len(segs)
            counts["skipped"]["no_estimates"] += int((~has).sum())
            if not has.any():
                continue
            s = segs[has].reset_index(drop=True)
            with np.errstate(invalid="ignore"):
                hourly = np.nanmean(speeds[has].reshape(len(s), 168, 12), axis=2)  # NaN: hour without estimate
            free, cons = _freeflow_constrained(filled[has], ff[has])
            attrs = pd.DataFrame({
                "segment_id": s["segment_id"].astype("int64"), "osm_way_id": s["osm_way_id"].astype("Int64"),
                "from_node_id": s["from_node_id"].astype("int64"), "to_node_id": s["to_node_id"].astype("int64"),
                "name": s["name"], "road_class": s["road_class"], "length_m": s["length_m"].round(1),
                "maxspeed_kph": s["maxspeed_kph"], "partition": s["partition"],
                "free_flow_kph": free, "constrained_kph": cons,
            })
            hours = pd.DataFrame(np.round(hourly, 1), columns=HOUR_COLUMNS)
            table = pd.concat([attrs, hours], axis=1)
            for rec, lon, lat in zip(table.to_dict("records"), s["geom_lon_deg"], s["geom_lat_deg"], strict=True):
                props = {k: (_none(v).item() if hasattr(_none(v), "item") else _none(v)) for k, v in rec.items()}
                coords = [[round(float(x), 7), round(float(y), 7)] for x, y in zip(lon, lat, strict=True)]
                fh.write(("" if first else ",\n") + json.dumps(
                    {"type": "Feature", "geometry": {"type": "LineString", "coordinates": coords}, "properties": props},
                    separators=(",", ":"), allow_nan=False))
                first = False
            t = pa.Table.from_pandas(table, preserve_index=False)
            wkb = [_wkb_linestring(lo, la) for lo, la in zip(s["geom_lon_deg"], s["geom_lat_deg"], strict=True)]
            tables.append(t.append_column("geometry", pa.array(wkb, type=pa.binary())))
            counts["features_written"] += len(s)
        fh.write("\n]}\n")
    if tables:
        table = pa.concat_tables(tables)
        bbox = _bbox(table)
        geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {
            "encoding": "WKB", "geometry_types": ["LineString"], "bbox": bbox,
            "crs": _crs84()}}}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"geo": json.dumps(geo).encode()})
        pq.write_table(table, gp_path)
    return {"file": str(gj_path), "geoparquet": str(gp_path) if tables else None, **counts}


def _bbox(table) -> list[float]:
    xs, ys = [], []
    for g in table.column("geometry").to_pylist():
        n = struct.unpack_from("<I", g, 5)[0]
        xy = np.frombuffer(g, "<f8", count=2 * n, offset=9).reshape(n, 2)
        xs += [xy[:, 0].min(), xy[:, 0].max()]
        ys += [xy[:, 1].min(), xy[:, 1].max()]
    return [float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))]


def _crs84() -> dict:
    """PROJJSON of OGC:CRS84 (WGS84 longitude/latitude), the GeoParquet default spelled out for readers."""
    return {"type": "GeographicCRS", "name": "WGS 84 (CRS84)",
            "datum": {"type": "GeodeticReferenceFrame", "name": "World Geodetic System 1984",
                      "ellipsoid": {"name": "WGS 84", "semi_major_axis": 6378137, "inverse_flattening": 298.257223563}},
            "coordinate_system": {"subtype": "ellipsoidal", "axis": [
                {"name": "Geodetic longitude", "abbreviation": "Lon", "direction": "east", "unit": "degree"},
                {"name": "Geodetic latitude", "abbreviation": "Lat", "direction": "north", "unit": "degree"}]},
            "id": {"authority": "OGC", "code": "CRS84"}}


EXPORTERS = {"valhalla": export_valhalla, "mapbox": export_mapbox, "geojson": export_geojson}


def export(warehouse: str, fmt: str, out_dir: str | Path, partitions: Sequence[str] | None = None) -> dict:
    """Run one exporter into out_dir; writes its accounting under _metrics/export_<fmt>/."""
    if fmt not in EXPORTERS:
        raise UserError(f"unknown export format {fmt!r}: use {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = EXPORTERS[fmt](warehouse, out, partitions)
    wh.write_local_json(wh.metrics_path(warehouse, f"export_{fmt}", None, None), result)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", required=True, choices=FORMATS, help="valhalla | mapbox | geojson (+GeoParquet)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--partition", default=None, help="comma-separated partition cells (default: all)")


def cli(args: argparse.Namespace) -> int:
    cells = [c.strip() for c in args.partition.split(",") if c.strip()] if args.partition else None
    r = export(args.warehouse, args.format, args.out, cells)
    written = r.get("rows_written", r.get("features_written"))
    skipped = ", ".join(f"{k} {v}" for k, v in r["skipped"].items() if v) or "none"
    extra = f" and {r['geoparquet']}" if r.get("geoparquet") else ""
    print(f"{args.format}: {written} segments -> {r['file']}{extra}; skipped: {skipped}")
    return 0
