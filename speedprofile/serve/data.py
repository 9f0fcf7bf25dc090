"""Warehouse reads for serving: speed_estimates and road_segments through speedprofile.tables (no Spark).

Grain: speed_estimates is stored as runs of buckets (schemas.speed_estimates) and read here as one segment x
tow_bucket; road_segments one directed segment with its polyline
(WGS84 degrees). Missing tables are a one-line UserError.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from schemas import TABLES
from schemas.road_segments import ROAD_SEGMENTS
from schemas.speed_estimates import SPEED_ESTIMATES
from speedprofile import warehouse as wh
from speedprofile.errors import UserError

SEGMENT_COLUMNS = [c for c in ROAD_SEGMENTS.names if c != "is_oneway"]


def _require_local(warehouse: str) -> None:
    if wh.is_remote(warehouse):
        raise UserError(f"serving reads a local warehouse; {warehouse} is remote (sync it locally first)")


def _partition_counts(warehouse: str, table: str) -> dict[tuple, int] | None:
    """Rows per partition-key tuple of a table from its catalog metadata (no data read); None when the table was
    never committed (a local warehouse without a catalog is not created by asking)."""
    from speedprofile import tables

    tbl = tables.committed_table(warehouse, table)
    if tbl is None:
        return None
    keys = TABLES[table].partition_by
    return {tuple(str(r["partition"][k]) for k in keys): int(r["record_count"])
            for r in tbl.inspect.partitions().to_pylist() if r["record_count"]}


def estimate_partitions(warehouse: str) -> list[str]:
    """Partition cells present in speed_estimates (sorted)."""
    _require_local(warehouse)
    counts = _partition_counts(warehouse, SPEED_ESTIMATES.name)
    if counts is None:
        raise UserError(f"no speed_estimates in warehouse {warehouse} (run the pipeline first: speedprofile run)")
    return sorted(k[0] for k in counts)


def load_estimates(warehouse: str, partitions: Sequence[str] | None = None,
                   buckets: Sequence[int] | None = None, segment_ids: Sequence[int] | None = None,
                   columns: Sequence[str] | None = None) -> pd.DataFrame:
    """speed_estimates as one row per segment x tow_bucket (optionally only some partitions / tow_buckets / segments)
    as pandas, ordered by partition, segment_id, tow_bucket."""
    from speedprofile import tables

    cells = estimate_partitions(warehouse)
    if partitions is not None:
        unknown = sorted(set(partitions) - set(cells))
        if unknown:
            raise UserError(f"partition(s) {', '.join(unknown)} not in speed_estimates (have: {', '.join(cells) or 'none'})")
        cells = [c for c in cells if c in set(partitions)]
    names = list(columns) if columns is not None else SPEED_ESTIMATES.names
    if not cells:
        return SPEED_ESTIMATES.arrow_schema().empty_table().select(names).to_pandas()
    extra: dict[str, list[int]] = {}
    if segment_ids is not None:
        extra["segment_id"] = [int(s) for s in segment_ids]
    read = list(dict.fromkeys([*names, "partition", "segment_id", "tow_bucket", "tow_bucket_end"]))
    t = tables.read_arrow(warehouse, SPEED_ESTIMATES, partitions=cells, extra_keys=extra, columns=read)
    return dense_rows(t, buckets).select(names).to_pandas()


def dense_rows(runs, buckets: Sequence[int] | None = None):
    """speed_estimates rows (an Arrow table of runs) as one row per segment x tow_bucket (optionally only the listed
    buckets), ordered by partition, segment_id, tow_bucket; each row's tow_bucket_end is its bucket + 1."""
    import pyarrow as pa

    from speedprofile.aggregate.kernels import run_buckets

    end = runs.column("tow_bucket_end").fill_null(-1).to_numpy()
    rows, bucket = run_buckets(runs.column("tow_bucket").to_numpy(), end,
                               None if buckets is None else [int(b) for b in buckets])
    t = runs.take(pa.array(rows, pa.int64()))
    i = t.column_names.index("tow_bucket")
    t = t.set_column(i, t.schema.field(i), pa.array(bucket, t.schema.field(i).type))
    j = t.column_names.index("tow_bucket_end")
    t = t.set_column(j, t.schema.field(j), pa.array(bucket + 1, t.schema.field(j).type))
    return t.sort_by([("partition", "ascending"), ("segment_id", "ascending"), ("tow_bucket", "ascending")])


def load_segments(warehouse: str, partitions: Sequence[str] | None = None,
                  columns: Sequence[str] | None = None) -> pd.DataFrame:
    """road_segments as pandas (geometry columns hold numpy arrays of degrees); UserError when absent."""
    _require_local(warehouse)
    from speedprofile.network.graph import load_road_segments_table

    table = load_road_segments_table(warehouse, partitions, columns or SEGMENT_COLUMNS)
    df = table.to_pandas()
    for c in ("osm_way_id", "reverse_segment_id"):
        if c in df.columns:
            df[c] = df[c].astype("Int64")
    return df


def polyline_xy(lon: np.ndarray, lat: np.ndarray, lat0: float) -> tuple[np.ndarray, np.ndarray]:
    """Local equirectangular metres around latitude lat0 (good to <0.1% over a city)."""
    r = 6_371_008.8
    return np.radians(lon) * r * np.cos(np.radians(lat0)), np.radians(lat) * r


def point_segment_distance_m(segments: pd.DataFrame, lon: float, lat: float) -> np.ndarray:
    """Distance in metres from (lon, lat) to each segment's polyline (vectorised over all vertex pairs)."""
    lons = segments["geom_lon_deg"].to_numpy()
    lats = segments["geom_lat_deg"].to_numpy()
    counts = np.array([len(a) for a in lons])
    if len(counts) == 0:
        return np.zeros(0)
    flon = np.concatenate(lons).astype(float)
    flat = np.concatenate(lats).astype(float)
    x, y = polyline_xy(flon, flat, lat)
    px, py = polyline_xy(np.array([lon]), np.array([lat]), lat)
    starts = np.cumsum(counts) - counts
    last = np.zeros(len(flon), dtype=bool)
    last[np.cumsum(counts) - 1] = True
    ax, ay, bx, by = x[:-1], y[:-1], x[1:], y[1:]
    dx, dy = bx - ax, by - ay
    den = dx * dx + dy * dy
    t = np.where(den > 0, ((px - ax) * dx + (py - ay) * dy) / np.where(den > 0, den, 1), 0).clip(0, 1)
    d = np.hypot(ax + t * dx - px, ay + t * dy - py)
    d = np.where(last[:-1], np.inf, d)  # pairs spanning two segments are not edges
    d = np.append(d, np.inf)
    seg_of_vertex = np.repeat(np.arange(len(counts)), counts)
    out = np.full(len(counts), np.inf)
    np.minimum.at(out, seg_of_vertex, d)
    single = counts == 1  # degenerate one-vertex geometry: distance to that vertex
    if single.any():
        out[single] = np.hypot(x[starts[single]] - px, y[starts[single]] - py)
    return out


def own_traces(warehouse: str, partition: str, window: str, segment_id: int, bucket: int) -> int | None:
    """The segment's own distinct traces in one bucket of the histogram window its estimate came from: 0 when the
    window has no histogram row for it, None when that window is not in the warehouse (nothing to tell)."""
    from speedprofile import tables

    if wh.is_remote(warehouse):
        return None
    counts = _partition_counts(warehouse, "speed_histograms") or {}
    if not counts.get((str(partition), str(window))):
        return None
    t = tables.read_arrow(warehouse, "speed_histograms", partitions=[partition],
                          extra_keys={"window": [window], "segment_id": [int(segment_id)], "tow_bucket": [int(bucket)]},
                          columns=["n_traces"])
    return int(sum(v for v in t.column("n_traces").to_pylist() if v is not None))
