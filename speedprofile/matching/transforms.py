"""Spark transforms of match_traces: probes (one row per fix) -> matched traversal rows + per-piece accounting.

Grain in: one GPS fix of a trace piece (probes). Grain out: one row per traversal (kind='traversal') plus one
row per trace piece (kind='piece') carrying its fix accounting in `stats`. Times UTC, metres, km/h.

Border rule (see docs/matching.md): a job for partitions P reads the pieces homed in P and in their ring-1
neighbours (a piece's owned fixes stay within ring-1 of its home), matches each piece on the network of its home
cell plus a ring-`HALO_K` halo, and keeps traversals of segments whose partition is in P. The time rule of the
probes table (a traversal belongs to the piece whose owned time span contains its enter time) then makes every
traversal appear exactly once across all partitions' jobs, without any job writing outside its partitions.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from schemas.segment_traversals import SEGMENT_TRAVERSALS
from speedprofile.matching.kernel import FIX_STATUSES, Matcher, MatchParams

HALO_K = 2        # network halo around a piece's home cell, in H3 grid steps
READ_RING = 1     # pieces homed this many grid steps away can traverse a partition's segments
_CACHE_SIZE = 8   # networks kept per Python worker (one per home cell)
_NETWORKS: OrderedDict = OrderedDict()

RESULT_DDL = (
    "kind STRING, trace_id STRING, piece INT, dt DATE, home_partition STRING, partition STRING, seq INT, "
    "segment_id BIGINT, enter_time_utc TIMESTAMP, exit_time_utc TIMESTAMP, duration_s DOUBLE, traversed_m DOUBLE, "
    "speed_kph DOUBLE, is_complete BOOLEAN, n_fixes INT, match_source STRING, reject_reason STRING, "
    "stats MAP<STRING, BIGINT>"
)
_RESULT_COLS = ["kind", "trace_id", "piece", "dt", "home_partition", "partition", "seq", "segment_id",
                "enter_time_utc", "exit_time_utc", "duration_s", "traversed_m", "speed_kph", "is_complete", "n_fixes",
                "match_source", "reject_reason", "stats"]


def read_cells(partitions: Iterable[str]) -> list[str]:
    """Home cells whose pieces can traverse the given partitions' segments (the partitions and their ring-1)."""
    import h3

    cells: set[str] = set()
    for p in partitions:
        try:
            cells.update(h3.grid_disk(p, READ_RING))
        except (ValueError, TypeError, h3.H3BaseException):
            cells.add(p)  # not an H3 cell: read just that partition
    return sorted(cells)


def network_for(warehouse: str, home: str, params: MatchParams) -> Matcher:
    """Matcher on the home cell's network plus its halo; built once per Python worker and cached (LRU)."""
    key = (warehouse, home, params)
    m = _NETWORKS.get(key)
    if m is not None:
        _NETWORKS.move_to_end(key)
        return m
    import h3

    from speedprofile.network.graph import load_road_segments_table

    try:
        cells = sorted(h3.grid_disk(home, HALO_K))
    except (ValueError, TypeError, h3.H3BaseException):
        cells = [home]
    cols = ["segment_id", "from_node_id", "to_node_id", "reverse_segment_id", "length_m", "geom_lon_deg",
            "geom_lat_deg", "partition"]
    table = load_road_segments_table(warehouse, cells, cols)
    m = Matcher(table, params)
    _NETWORKS[key] = m
    while len(_NETWORKS) > _CACHE_SIZE:
        _NETWORKS.popitem(last=False)
    return m


def match_piece(pdf: pd.DataFrame, warehouse: str, emit: frozenset, params: MatchParams) -> pd.DataFrame:
    """Kernel call for one trace piece (all its fixes): traversal rows on `emit` partitions + one accounting row."""
    first = pdf.iloc[0]
    trace_id, piece, dt, home = first["trace_id"], int(first["piece"]), first["dt"], first["partition"]
    owned = ~(pdf["is_context"].to_numpy(object) == True)  # noqa: E712  (null = owned)
    stats: dict[str, int] = {"pieces": 1, "fixes_in": int(owned.sum()), "context_fixes": int((~owned).sum())}
    try:
        matcher = network_for(warehouse, home, params)
        res = matcher.match(pdf.reset_index(drop=True))
        status = res.points.status  # aligned with pdf's rows
        for s in FIX_STATUSES:
            stats[f"fixes_{s}"] = int(((status == s) & owned).sum())
        stats["pieces_broken"] = int(sum(res.points.breaks.values()) > 0)
        for k, v in res.points.breaks.items():
            stats[f"breaks_{k}"] = int(v)
        trav = res.traversals
        if len(trav):
            idx = matcher.net.index_of(trav["segment_id"].to_numpy())
            seg_part = np.where(idx >= 0, matcher.net.seg_partition[np.maximum(idx, 0)], None)
            reason = trav["reject_reason"].to_numpy(object).copy()
            reason[(reason == None) & ~trav["owned"].to_numpy(bool)] = "owned_by_other_piece"  # noqa: E711
            trav = trav.assign(partition=seg_part, reject_reason=reason)
            trav = trav[trav["partition"].isin(emit)]
    except Exception as exc:  # a bad piece must never kill the job: count it and move on
        stats = {"pieces": 1, "fixes_in": int(owned.sum()), "context_fixes": int((~owned).sum()),
                 "fixes_kernel_error": int(owned.sum()), "pieces_kernel_error": 1}
        stats["kernel_error_" + type(exc).__name__] = 1
        trav = pd.DataFrame()
    rows = []
    if len(trav):
        t = trav.drop(columns=["owned"]).assign(kind="traversal", trace_id=trace_id, piece=piece, dt=dt,
                                                home_partition=home, stats=None)
        rows.append(t)
    if home in emit:
        rows.append(pd.DataFrame([{"kind": "piece", "trace_id": trace_id, "piece": piece, "dt": dt,
                                   "home_partition": home, "partition": home, "stats": stats}]))
    if not rows:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in _RESULT_COLS})  # object dtype: an empty float column cannot be cast to DATE
    out = pd.concat(rows, ignore_index=True) if len(rows) > 1 else rows[0]
    for c in _RESULT_COLS:
        if c not in out.columns:
            out[c] = None
    return out[_RESULT_COLS]


def match_traces(probes: DataFrame, warehouse: str, partitions: Iterable[str],
                 params: MatchParams | None = None) -> DataFrame:
    """probes -> result rows (RESULT_DDL): one shuffle groups each piece's fixes; the kernel runs per piece."""
    emit = frozenset(partitions)
    params = params or MatchParams()

    def fn(pdf: pd.DataFrame) -> pd.DataFrame:
        return match_piece(pdf, warehouse, emit, params)

    return probes.groupBy("dt", "partition", "trace_id", "piece").applyInPandas(fn, RESULT_DDL)


def traversal_rows(result: DataFrame) -> DataFrame:
    """Emitted traversals in the segment_traversals schema (kept rows only)."""
    kept = result.where((F.col("kind") == "traversal") & F.col("reject_reason").isNull())
    return kept.select(*SEGMENT_TRAVERSALS.names)


def traversal_counts(result: DataFrame) -> DataFrame:
    """(dt, partition, reject_reason, n) over all matched traversals of the emitted partitions (null = kept)."""
    return (result.where(F.col("kind") == "traversal")
            .groupBy("dt", "partition", "reject_reason").count())


def piece_counts(result: DataFrame) -> DataFrame:
    """(dt, partition, key, n): the per-piece accounting summed per home partition-day."""
    return (result.where(F.col("kind") == "piece")
            .select("dt", "partition", F.explode("stats").alias("key", "n"))
            .groupBy("dt", "partition", "key").agg(F.sum("n").alias("n")))
