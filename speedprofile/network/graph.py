"""road_segments as columns: node/arc graph loading, geodesic lengths, time zones, H3 partitions, Parquet I/O.

Grain: one directed segment. Units: metres, km/h, WGS84 degrees. A build replaces the whole table in one commit
(through speedprofile.tables) and then writes the plain file `<warehouse>/road_segments/_partitions.json`.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from schemas.road_segments import DEFAULT_H3_RES, ROAD_SEGMENTS
from speedprofile import warehouse as wh
from speedprofile.errors import UserError

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG), metres
_TZ_ROUND_DEG = 3  # time-zone lookups per unique coordinate rounded to ~100 m


def haversine_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle distance in metres between arrays of WGS84 points (degrees)."""
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lon1, lat1, lon2, lat2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def timezones_of(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """IANA time zone per point (object array); one tzfpy lookup per unique ~100 m rounded coordinate."""
    import tzfpy

    if len(lon) == 0:
        return np.array([], dtype=object)
    uniq, inverse = _unique_points(lon, lat, 10 ** _TZ_ROUND_DEG)
    names = np.array([tzfpy.get_tz(float(x), float(y)) or "UTC" for x, y in uniq], dtype=object)
    return names[inverse]


def _unique_points(lon: np.ndarray, lat: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Unique (lon, lat) after rounding to 1/scale degrees, as (k, 2) array, and the inverse index."""
    ilon = np.round(np.asarray(lon, dtype=np.float64) * scale).astype(np.int64)
    ilat = np.round(np.asarray(lat, dtype=np.float64) * scale).astype(np.int64)
    span = int(np.round(180 * scale)) + 1  # ilat + 90*scale lies in [0, span)
    key = ilon * span + (ilat + span // 2)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    pts = np.stack([ilon[first] / scale, ilat[first] / scale], axis=1)
    return pts, inverse.reshape(-1)


def h3_cells_of(lon: np.ndarray, lat: np.ndarray, res: int) -> np.ndarray:
    """H3 cell (hex string) per point at resolution res (object array)."""
    import h3

    if not 0 <= int(res) <= 15:
        raise UserError(f"--h3-res must be 0..15, got {res}")
    if len(lon) == 0:
        return np.array([], dtype=object)
    # Cells are identical for points closer than ~1 cm; dedupe at 1e-7 degrees to save calls.
    uniq, inverse = _unique_points(lon, lat, 1e7)
    cells = np.array([h3.latlng_to_cell(float(b), float(a), int(res)) for a, b in uniq], dtype=object)
    return cells[inverse]


def segments_table(
    cols: dict[str, Any],
    geom_offsets: np.ndarray,
    geom_lon: np.ndarray,
    geom_lat: np.ndarray,
    h3_res: int,
):
    """Assemble a road_segments pyarrow.Table from columns and flat geometry (offsets into lon/lat arrays).

    `cols` holds segment_id, osm_way_id (or None), from_node_id, to_node_id, reverse_segment_id (-1 = none),
    road_class, maxspeed_kph (NaN = none), name (None = none), is_oneway. Length, time zone and partition are
    derived here from the geometry (midpoint = the middle vertex-pair midpoint of the polyline by length).
    """
    import pyarrow as pa

    n = len(cols["segment_id"])
    offsets = np.asarray(geom_offsets, dtype=np.int64)
    glon = np.asarray(geom_lon, dtype=np.float64)
    glat = np.asarray(geom_lat, dtype=np.float64)
    step = haversine_m(glon[:-1], glat[:-1], glon[1:], glat[1:]) if len(glon) > 1 else np.zeros(0)
    # Zero the steps that cross from one segment to the next (step k joins vertex k and k+1).
    cum = np.concatenate([[0.0], np.cumsum(step)])
    length = cum[offsets[1:] - 1] - cum[offsets[:-1]] if n else np.zeros(0)
    mid_lon, mid_lat = _midpoints(offsets, glon, glat, cum, length)
    tz = timezones_of(mid_lon, mid_lat)
    cells = h3_cells_of(mid_lon, mid_lat, h3_res)

    def opt_int(a):
        if a is None:
            return pa.nulls(n, pa.int64())
        a = np.asarray(a, dtype=np.int64)
        return pa.array(a, mask=a < 0, type=pa.int64())

    maxspeed = np.asarray(cols.get("maxspeed_kph", np.full(n, np.nan)), dtype=np.float64)
    name = cols.get("name")
    geom_type = pa.list_(pa.float64())
    arrays = {
        "segment_id": pa.array(np.asarray(cols["segment_id"], dtype=np.int64)),
        "osm_way_id": opt_int(cols.get("osm_way_id")),
        "from_node_id": pa.array(np.asarray(cols["from_node_id"], dtype=np.int64)),
        "to_node_id": pa.array(np.asarray(cols["to_node_id"], dtype=np.int64)),
        "reverse_segment_id": opt_int(cols["reverse_segment_id"]),
        "length_m": pa.array(length),
        "road_class": pa.array(np.asarray(cols["road_class"], dtype=object), type=pa.string()),
        "maxspeed_kph": pa.array(maxspeed, mask=np.isnan(maxspeed)),
        "name": pa.nulls(n, pa.string()) if name is None else pa.array(name, type=pa.string()),
        "is_oneway": pa.array(np.asarray(cols["is_oneway"], dtype=bool)),
        "geom_lon_deg": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(glon)).cast(geom_type),
        "geom_lat_deg": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(glat)).cast(geom_type),
        "timezone": pa.array(tz, type=pa.string()),
        "partition": pa.array(cells, type=pa.string()),
    }
    return pa.table(arrays, schema=ROAD_SEGMENTS.arrow_schema())


def _midpoints(offsets, glon, glat, cum, length):
    """Point halfway along each polyline (linear interpolation in degrees within the vertex pair)."""
    n = len(offsets) - 1
    if n == 0:
        return np.zeros(0), np.zeros(0)
    start = offsets[:-1]
    target = cum[start] + length / 2
    # index of the vertex pair containing the halfway distance, clamped inside the segment's own vertices
    k = np.searchsorted(cum, target, side="right") - 1
    k = np.clip(k, start, offsets[1:] - 2)
    seg_len = cum[k + 1] - cum[k]
    frac = np.divide(target - cum[k], seg_len, out=np.zeros_like(target), where=seg_len > 0)
    frac = np.clip(frac, 0.0, 1.0)
    return glon[k] + frac * (glon[k + 1] - glon[k]), glat[k] + frac * (glat[k + 1] - glat[k])


def _read_columns(path: str, ncols: int, dtype, what: str) -> np.ndarray:
    """Tab-separated numeric file (gzip or plain, detected by magic bytes) -> (rows, ncols) array."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise UserError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise UserError(f"{what} file {path} is a damaged gzip file: {exc}") from None
    if not raw.strip():
        return np.zeros((0, ncols), dtype=dtype)
    try:
        df = pd.read_csv(io.BytesIO(raw), sep="\t", header=None, dtype=dtype, float_precision="round_trip",
                         skip_blank_lines=False, engine="c")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{what} file {path} is not {ncols} tab-separated numbers per line: {msg}") from None
    if df.shape[1] != ncols or df.isna().to_numpy().any():
        raise UserError(f"{what} file {path} is not {ncols} tab-separated numbers per line "
                        f"(found {df.shape[1]} columns or empty fields)")
    return df.to_numpy()


def read_node_arc_graph(nodes_path: str, arcs_path: str, h3_res: int = DEFAULT_H3_RES) -> pd.DataFrame:
    """Kubicka 2015 node/arc graph -> road_segments rows (one per arc; segment_id = 0-based arc line number)."""
    return to_pandas(read_node_arc_table(nodes_path, arcs_path, h3_res))


def read_node_arc_table(nodes_path: str, arcs_path: str, h3_res: int = DEFAULT_H3_RES):
    """As read_node_arc_graph, as a pyarrow.Table (no pandas round trip)."""
    nodes = _read_columns(nodes_path, 2, np.float64, "nodes")
    arcs = _read_columns(arcs_path, 2, np.int64, "arcs")
    lon, lat = nodes[:, 0], nodes[:, 1]
    if len(nodes) and (np.abs(lat).max() > 90 or np.abs(lon).max() > 180):
        raise UserError(f"nodes file {nodes_path}: coordinates out of range (expected lon<TAB>lat in degrees)")
    src, dst = arcs[:, 0], arcs[:, 1]
    if len(arcs) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= len(nodes)):
        raise UserError(f"arcs file {arcs_path} refers to node ids outside 0..{len(nodes) - 1}")
    n = len(arcs)
    arc_id = np.arange(n, dtype=np.int64)
    reverse = reverse_of(src, dst, arc_id)
    offsets = np.arange(0, 2 * n + 1, 2, dtype=np.int64)
    glon = np.empty(2 * n)
    glat = np.empty(2 * n)
    glon[0::2], glon[1::2] = lon[src], lon[dst]
    glat[0::2], glat[1::2] = lat[src], lat[dst]
    cols = {
        "segment_id": arc_id,
        "osm_way_id": None,
        "from_node_id": src,
        "to_node_id": dst,
        "reverse_segment_id": reverse,
        "road_class": np.full(n, "unknown", dtype=object),
        "maxspeed_kph": np.full(n, np.nan),
        "name": None,
        "is_oneway": reverse < 0,
    }
    return segments_table(cols, offsets, glon, glat, h3_res)


def reverse_of(src: np.ndarray, dst: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Id of an arc running dst -> src (the lowest such id), -1 when none or for a loop."""
    n = len(src)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    m = int(max(src.max(), dst.max())) + 1
    key = src * m + dst
    order = np.lexsort((ids, key))
    ks = key[order]
    want = dst * m + src
    pos = np.minimum(np.searchsorted(ks, want, side="left"), n - 1)
    found = ks[pos] == want
    rev = np.where(found, np.asarray(ids, dtype=np.int64)[order][pos], -1)
    rev[src == dst] = -1  # a loop is not its own reverse
    return rev


def _as_arrow(df):
    import pyarrow as pa

    if isinstance(df, pa.Table):
        return df.select(ROAD_SEGMENTS.names).cast(ROAD_SEGMENTS.arrow_schema())
    missing = [c for c in ROAD_SEGMENTS.names if c not in df.columns]
    if missing:
        raise ValueError(f"road_segments frame lacks columns {missing}")
    return pa.Table.from_pandas(df[ROAD_SEGMENTS.names], schema=ROAD_SEGMENTS.arrow_schema(), preserve_index=False)


def write_road_segments(df, warehouse: str, h3_res: int, source: str) -> dict:
    """Replace the whole road_segments table (pandas or pyarrow) in one commit, then write `_partitions.json`;
    returns the _partitions.json content."""
    import h3
    import pyarrow.compute as pc

    from speedprofile import tables

    if wh.is_remote(warehouse):
        raise UserError("network build writes to a local warehouse path (copy it to object storage afterwards)")
    table = _as_arrow(df)
    table = table.sort_by([("partition", "ascending"), ("segment_id", "ascending")])
    parts = []
    part_col = table.column("partition")
    cells = pc.unique(part_col).to_pylist()
    # table is sorted by partition: contiguous runs
    bounds: Any = np.searchsorted(part_col.to_numpy().astype(str), np.asarray(cells, dtype=str), side="left") if cells else []
    ends = [*list(bounds[1:]), table.num_rows]
    for cell, lo, hi in zip(cells, bounds, ends, strict=True):
        chunk = table.slice(int(lo), int(hi - lo))
        clat, clon = h3.cell_to_latlng(cell)
        parts.append({
            "cell": cell,
            "segments": int(hi - lo),
            "length_km": round(float(pc.sum(chunk.column("length_m")).as_py() or 0.0) / 1000.0, 3),
            "lon": round(clon, 6),
            "lat": round(clat, 6),
        })
    meta = {"h3_res": int(h3_res), "source": source, "partitions": parts}
    tables.write_arrow(warehouse, ROAD_SEGMENTS, table, replace=[{}])  # a build replaces the whole network
    path = wh.partitions_file(warehouse)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return meta


def has_network(warehouse: str) -> bool:
    """Whether road_segments was ever committed in the warehouse (asks the catalog; never creates a warehouse)."""
    from speedprofile import tables

    return tables.committed_table(warehouse, ROAD_SEGMENTS) is not None


def load_road_segments_table(warehouse: str, partitions: Sequence[str] | None = None, columns: Sequence[str] | None = None):
    """road_segments as a pyarrow.Table (all partitions, or the listed cells; missing cells are absent), ordered
    by partition then segment_id."""
    from speedprofile import tables

    if not has_network(warehouse):
        raise UserError(f"no road network in warehouse {warehouse} (run `speedprofile network build` first)")
    names = list(columns) if columns is not None else ROAD_SEGMENTS.names
    table = tables.read_arrow(warehouse, ROAD_SEGMENTS, partitions=partitions)
    table = table.sort_by([("partition", "ascending"), ("segment_id", "ascending")])
    return table.select(names)


def load_road_segments(warehouse: str, partitions: Sequence[str] | None = None,
                       columns: Sequence[str] | None = None) -> pd.DataFrame:
    """road_segments as a pandas DataFrame (ROAD_SEGMENTS columns; geometry as numpy arrays per row)."""
    return to_pandas(load_road_segments_table(warehouse, partitions, columns))


def to_pandas(table) -> pd.DataFrame:
    """pyarrow road_segments -> pandas; nullable id columns become pandas Int64 (<NA> for null)."""
    df = table.to_pandas()
    for c in ("osm_way_id", "reverse_segment_id"):
        if c in df.columns:
            col = table.column(c)
            mask = col.is_null().to_numpy(zero_copy_only=False)
            values = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
            df[c] = pd.arrays.IntegerArray(values, mask)  # exact int64 (no float round trip)
    return df
