"""Spark transforms of match_traces: probes (one row per fix) -> matched traversal rows + fix accounting.

Grain in: one GPS fix of a trace piece (probes). Grain out: one row per kept traversal (kind='traversal') plus, per
task, one row per partition-day (kind='stats') whose `stats` sum the traversal counts per reject reason on the
partition's segments and the fix accounting of the pieces homed there.
Times UTC, metres, km/h.

Border rule (see docs/matching.md): a job for partitions P reads the pieces homed in P and in their ring-1
neighbours (a piece's owned fixes stay within ring-1 of its home), matches each piece on the network of its home
cell plus a ring-`HALO_K` halo, and keeps traversals of segments whose partition is in P. The time rule of the
probes table (a traversal belongs to the piece whose owned time span contains its enter time) then makes every
traversal appear exactly once across all partitions' jobs, without any job writing outside its partitions.

The network reaches the Python workers inside the task function (Arrow IPC bytes of the road_segments rows the job
needs, read by the driver through Spark, so any Spark-readable warehouse works; Spark ships a large function once,
as a broadcast, and a Spark Connect server does the same); each worker decodes it once per job token and builds the
routing structures of a home cell once, reusing them for every piece homed there.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from schemas.segment_traversals import SEGMENT_TRAVERSALS
from speedprofile.grouped import whole_groups
from speedprofile.matching.kernel import _NAT, FIX_STATUSES, Matcher, MatchParams
from speedprofile.matching.network import NETWORK_COLUMNS

HALO_K = 2        # network halo around a piece's home cell, in H3 grid steps
READ_RING = 1     # pieces homed this many grid steps away can traverse a partition's segments
_CACHE_SIZE = 16  # home-cell matchers kept per Python worker
_MATCHERS: OrderedDict = OrderedDict()
_TABLES: OrderedDict = OrderedDict()  # broadcast token -> decoded network table (latest two)

RESULT_DDL = (
    "kind STRING, trace_id STRING, piece INT, dt DATE, home_partition STRING, partition STRING, seq INT, "
    "segment_id BIGINT, enter_time_utc TIMESTAMP, exit_time_utc TIMESTAMP, duration_s DOUBLE, traversed_m DOUBLE, "
    "speed_kph DOUBLE, is_complete BOOLEAN, n_fixes INT, match_source STRING, confidence DOUBLE, "
    "reject_reason STRING, stats MAP<STRING, BIGINT>"
)
_TS = pa.timestamp("us", tz="UTC")
RESULT_ARROW = pa.schema([
    ("kind", pa.string()), ("trace_id", pa.string()), ("piece", pa.int32()), ("dt", pa.date32()),
    ("home_partition", pa.string()), ("partition", pa.string()), ("seq", pa.int32()), ("segment_id", pa.int64()),
    ("enter_time_utc", _TS), ("exit_time_utc", _TS), ("duration_s", pa.float64()), ("traversed_m", pa.float64()),
    ("speed_kph", pa.float64()), ("is_complete", pa.bool_()), ("n_fixes", pa.int32()), ("match_source", pa.string()),
    ("confidence", pa.float64()), ("reject_reason", pa.string()), ("stats", pa.map_(pa.string(), pa.int64())),
])
PIECE_KEYS = ("dt", "partition", "trace_id", "piece")  # one trace piece: the unit the kernel matches
MATCH_TASK_FIXES = 1_000_000  # input fixes per matching task beyond two tasks per core (match_tasks)
MATCH_CHUNK_ROWS = 50_000  # a task matches the complete pieces of about this many fixes at a time (bounded memory)
_PROBE_COLUMNS = ["dt", "partition", "trace_id", "piece", "timestamp_utc", "lon_deg", "lat_deg", "speed_kph",
                  "prematched_segment_id", "is_context", "source_file", "source_row"]
_SOURCE_ORDER = ("source_file", "source_row")  # the order of a piece's fixes (the source's), sorted on only
_WIRE_COLUMNS = [c for c in _PROBE_COLUMNS if c not in _SOURCE_ORDER]  # what the Spark job sends to the workers


def _disk(cell: str, k: int) -> list[str]:
    import h3

    try:
        return sorted(h3.grid_disk(cell, k))
    except (ValueError, TypeError, h3.H3BaseException):
        return [cell]  # not an H3 cell: just that partition


def read_cells(partitions: Iterable[str]) -> list[str]:
    """Home cells whose pieces can traverse the given partitions' segments (the partitions and their ring-1)."""
    return sorted({c for p in partitions for c in _disk(p, READ_RING)})


def network_cells(partitions: Iterable[str]) -> list[str]:
    """road_segments partitions any piece read for `partitions` is matched on (its home cell plus the halo)."""
    return sorted({c for h in read_cells(partitions) for c in _disk(h, HALO_K)})


class Network:
    """The road_segments rows a job needs, as Arrow IPC bytes, and a token naming them in the workers' caches."""

    def __init__(self, token: str, data: bytes) -> None:
        self.token, self.value = token, data

    def destroy(self) -> None:
        self.value = b""


def network_broadcast(spark: SparkSession, warehouse: str, partitions: Iterable[str]) -> tuple[str, Network]:
    """(token, Network): the road_segments rows of `network_cells`, read through Spark.

    Rows are ordered by (partition, segment_id), the order `network build` writes them in, so every job builds
    the same routing structures for a home cell.
    """
    from speedprofile.errors import UserError
    from speedprofile.network.graph import has_network
    from speedprofile.spark import read_table

    if not has_network(warehouse):  # asks the catalog: the table exists but was never committed
        raise UserError(f"no road network in warehouse {warehouse} (run `speedprofile network build` first)")
    segs = read_table(spark, warehouse, "road_segments", partitions=network_cells(partitions))
    table = segs.select(*NETWORK_COLUMNS).toArrow()
    table = table.sort_by([("partition", "ascending"), ("segment_id", "ascending")])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    token = uuid.uuid4().hex
    return token, Network(token, sink.getvalue().to_pybytes())


def matcher_for(token: str, network, home: str, params: MatchParams) -> Matcher:
    """Matcher on the home cell plus its halo, from the broadcast network; built once per worker and cached."""
    key = (token, home, params)
    m = _MATCHERS.get(key)
    if m is not None:
        _MATCHERS.move_to_end(key)
        return m
    table = _TABLES.get(token)
    if table is None:
        table = pa.ipc.open_stream(network.value).read_all()
        _TABLES[token] = table
        while len(_TABLES) > 2:
            _TABLES.popitem(last=False)
    sub = table.filter(pc.is_in(table.column("partition"), value_set=pa.array(_disk(home, HALO_K), pa.string())))
    m = Matcher(sub, params)
    _MATCHERS[key] = m
    while len(_MATCHERS) > _CACHE_SIZE:
        _MATCHERS.popitem(last=False)
    return m


def _emit_mask(matcher: Matcher, emit: frozenset) -> np.ndarray:
    """Per network segment of the matcher: is its partition one the job writes (cached on the matcher)."""
    cached = getattr(matcher, "_emit_mask", None)
    if cached is None or cached[0] is not emit:
        mask = np.array([p in emit for p in matcher.net.seg_partition.tolist()], dtype=np.bool_)
        cached = (emit, mask)
        matcher._emit_mask = cached  # type: ignore[attr-defined]
    return cached[1]


def _np(col: pa.ChunkedArray | pa.Array, dtype, null) -> np.ndarray:
    """Arrow column -> numpy array of dtype with nulls replaced by `null`."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        col = col.fill_null(pa.scalar(null, col.type))
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype)


class _Out:
    """Column buffers of the traversal rows of one task, turned into one Arrow batch at the end."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []   # input row of each traversal's piece (for trace_id, piece, dt, home)
        self.cols: dict[str, list] = {c: [] for c in ("partition", "seq", "segment_id", "_enter_us", "_exit_us",
                                                       "duration_s", "traversed_m", "speed_kph", "is_complete",
                                                       "n_fixes", "match_source", "confidence", "reject_reason")}

    def add(self, row: int, trav: dict) -> None:
        self.rows.append(np.full(len(trav["seq"]), row, np.int64))
        for c, buf in self.cols.items():
            buf.append(trav[c])

    def batch(self, table: pa.Table) -> pa.RecordBatch | None:
        if not self.rows:
            return None
        rows = pa.array(np.concatenate(self.rows))
        c = {k: np.concatenate(v) for k, v in self.cols.items()}
        n = len(rows)
        arrays = {
            "kind": pa.array(np.full(n, "traversal", dtype=object), pa.string()),
            "trace_id": table.column("trace_id").take(rows), "piece": table.column("piece").take(rows),
            "dt": table.column("dt").take(rows), "home_partition": table.column("partition").take(rows),
            "partition": pa.array(c["partition"], pa.string()), "seq": pa.array(c["seq"], pa.int32()),
            "segment_id": pa.array(c["segment_id"], pa.int64()),
            "enter_time_utc": pa.array(c["_enter_us"], pa.int64()).cast(_TS),
            "exit_time_utc": pa.array(c["_exit_us"], pa.int64()).cast(_TS),
            # NaN -> null, as pandas -> Arrow did for these columns
            "duration_s": pa.array(c["duration_s"], pa.float64(), from_pandas=True),
            "traversed_m": pa.array(c["traversed_m"], pa.float64(), from_pandas=True),
            "speed_kph": pa.array(c["speed_kph"], pa.float64(), from_pandas=True),
            "is_complete": pa.array(c["is_complete"], pa.bool_()), "n_fixes": pa.array(c["n_fixes"], pa.int32()),
            "match_source": pa.array(c["match_source"], pa.string()),
            "confidence": pa.array(c["confidence"], pa.float64()),
            "reject_reason": pa.array(c["reject_reason"], pa.string()),
            "stats": pa.nulls(n, RESULT_ARROW.field("stats").type),
        }
        return pa.RecordBatch.from_arrays([arrays[f.name].combine_chunks() if isinstance(arrays[f.name], pa.ChunkedArray)
                                           else arrays[f.name] for f in RESULT_ARROW], schema=RESULT_ARROW)


def _stats_batch(stats: dict) -> pa.RecordBatch:
    """One row per (dt, home partition) with the summed per-piece accounting."""
    keys = list(stats)
    n = len(keys)
    arrays = {f.name: pa.nulls(n, f.type) for f in RESULT_ARROW}
    arrays["kind"] = pa.array(["stats"] * n, pa.string())
    arrays["dt"] = pa.array([k[0] for k in keys], pa.date32())
    arrays["home_partition"] = arrays["partition"] = pa.array([k[1] for k in keys], pa.string())
    arrays["stats"] = pa.array([list(stats[k].items()) for k in keys], RESULT_ARROW.field("stats").type)
    return pa.RecordBatch.from_arrays([arrays[f.name] for f in RESULT_ARROW], schema=RESULT_ARROW)


def match_table(table: pa.Table, token: str, network, emit: frozenset, params: MatchParams,
                presorted: bool = False) -> list[pa.RecordBatch]:
    """Match every trace piece of an Arrow table of probes (whole pieces only) -> result batches (RESULT_ARROW).

    Pieces are cut by sorting on (dt, partition, trace_id, piece, source_file, source_row): the fixes of a piece in
    the order the source gave them, which is how the kernel takes them. `presorted`: the rows are in that order
    already (the Spark job sorts them in the JVM and sends no source columns).
    """
    if table.num_rows == 0:
        return []
    if presorted:
        table = table.select(_WIRE_COLUMNS).combine_chunks()
    else:
        table = table.select(_PROBE_COLUMNS).combine_chunks()
        idx = pc.sort_indices(table, sort_keys=[(c, "ascending") for c in (*PIECE_KEYS, *_SOURCE_ORDER)])
        table = table.take(idx)
    dt = _np(table.column("dt").cast(pa.int32()), np.int64, 0)
    piece = _np(table.column("piece"), np.int64, -1)
    home_codes = _np(table.column("partition").dictionary_encode().combine_chunks().indices, np.int64, -1)
    tid_codes = _np(table.column("trace_id").dictionary_encode().combine_chunks().indices, np.int64, -1)
    new = np.ones(len(dt), bool)
    new[1:] = ((dt[1:] != dt[:-1]) | (home_codes[1:] != home_codes[:-1]) | (tid_codes[1:] != tid_codes[:-1])
               | (piece[1:] != piece[:-1]))
    starts = np.nonzero(new)[0]
    ends = np.append(starts[1:], len(dt))
    t_us = _np(table.column("timestamp_utc").cast(pa.int64()), np.int64, _NAT)
    lon = _np(table.column("lon_deg"), np.float64, np.nan)
    lat = _np(table.column("lat_deg"), np.float64, np.nan)
    ctx_col = table.column("is_context")
    ctx = _np(ctx_col, bool, False)
    pm_col = table.column("prematched_segment_id")
    pm_has = ~_np(pm_col.is_null(), bool, True)
    pm_ids = _np(pm_col, np.int64, 0)
    speeds = _np(table.column("speed_kph"), np.float64, np.nan)
    # per piece, not per fix: a date's to_pylist builds a Python object per row (a tenth of the workers' time)
    first = pa.array(starts, pa.int64())
    homes = table.column("partition").take(first).to_pylist()
    dts = table.column("dt").take(first).to_pylist()
    out = _Out()
    stats: dict = {}
    statuses = np.array(FIX_STATUSES, dtype=object)
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        home, day = homes[i], dts[i]
        owned = ~ctx[a:b]
        n_owned = int(owned.sum())
        st: dict[str, int] = {"pieces": 1, "fixes_in": n_owned, "context_fixes": (b - a) - n_owned}
        try:
            matcher = matcher_for(token, network, home, params)
            has = pm_has[a:b]
            res = matcher.match_arrays(t_us[a:b], lon[a:b], lat[a:b], ctx[a:b], pm_ids[a:b] if has.any() else None,
                                       has, speeds[a:b])
            counts = (res.status[owned][:, None] == statuses[None, :]).sum(axis=0)
            for s, v in zip(FIX_STATUSES, counts.tolist(), strict=True):
                st[f"fixes_{s}"] = v
            st["pieces_broken"] = int(sum(res.breaks.values()) > 0)
            for k, v in res.breaks.items():
                st[f"breaks_{k}"] = int(v)
            trav = res.traversals
            if trav is not None:
                sidx = matcher.net.index_of(trav["segment_id"])
                seg_part = np.full(len(sidx), None, dtype=object)
                seg_part[sidx >= 0] = matcher.net.seg_partition[sidx[sidx >= 0]]
                reason = trav["reject_reason"].copy()
                reason[(reason == None) & ~trav["owned"]] = "owned_by_other_piece"  # noqa: E711
                on_emit = np.zeros(len(sidx), np.bool_)
                on_emit[sidx >= 0] = _emit_mask(matcher, emit)[sidx[sidx >= 0]]
                # every traversal on an emitted partition is counted (kept or per reason); kept ones are output
                if on_emit.any():
                    keys_, n_ = np.unique(np.char.add(np.char.add(seg_part[on_emit].astype(str), "|"),
                                                      np.where(reason[on_emit] == None, "",  # noqa: E711
                                                               reason[on_emit]).astype(str)), return_counts=True)
                    for key_, c_ in zip(keys_.tolist(), n_.tolist(), strict=True):
                        p_, r_ = key_.split("|", 1)
                        acc = stats.setdefault((day, p_), {})
                        k_ = "traversals:" + r_
                        acc[k_] = acc.get(k_, 0) + c_
                keep = on_emit & (reason == None)  # noqa: E711
                if keep.any():
                    trav = {k: v[keep] for k, v in trav.items()}
                    trav["partition"], trav["reject_reason"] = seg_part[keep], reason[keep]
                    out.add(a, trav)
        except Exception as exc:  # a bad piece must never kill the job: count it and move on
            st = {"pieces": 1, "fixes_in": n_owned, "context_fixes": (b - a) - n_owned,
                  "fixes_kernel_error": n_owned, "pieces_kernel_error": 1, "kernel_error_" + type(exc).__name__: 1}
        if home in emit:
            acc = stats.setdefault((day, home), {})
            for k, v in st.items():
                acc[k] = acc.get(k, 0) + v
    batches = []
    tb = out.batch(table)
    if tb is not None:
        batches.append(tb)
    if stats:
        batches.append(_stats_batch(stats))
    return batches


def match_tasks(spark: SparkSession, fixes: int = 0) -> int:
    """Tasks of the matching stage: two per core (load balance), and one per MATCH_TASK_FIXES of input beyond that,
    rounded up to whole waves over the cores.

    Each task pays a fixed cost (a Python round trip, one cached block, one output file per partition written),
    while matching a piece costs milliseconds; the result is cached, so adaptive execution cannot coalesce it. A
    task's cached block must stay small: a block read back from disk is loaded whole into the JVM heap."""
    from speedprofile.spark import default_parallelism, whole_waves

    floor = min(int(spark.conf.get("spark.sql.shuffle.partitions") or 200), 2 * default_parallelism(spark))
    return whole_waves(spark, max(1, floor, -(-fixes // MATCH_TASK_FIXES)))


def match_traces(probes: DataFrame, network: tuple[str, Network], partitions: Iterable[str],
                 params: MatchParams | None = None, chunk_rows: int = MATCH_CHUNK_ROWS,
                 n_tasks: int | None = None) -> DataFrame:
    """probes -> result rows (RESULT_DDL), persisted: one shuffle puts each piece's fixes in one task, which
    matches all its pieces in one Arrow pass. `network` comes from `network_broadcast` for the same partitions.
    The first action computes and caches the result (`result_counts`); later ones read the cache."""
    emit = frozenset(partitions)
    params = params or MatchParams()
    token, net = network
    bc = Network(token, net.value)  # a copy travels with the function (the caller's is destroyed after the job)

    def fn(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # a task gets whole pieces (the repartition keys), sorted by piece: it matches the complete pieces of about
        # chunk_rows fixes at a time, so its memory does not grow with its input
        for table in whole_groups(batches, PIECE_KEYS, chunk_rows):
            yield from match_table(table, token, bc, emit, params, presorted=True)

    # sorted in the JVM down to the source order within a piece, whose columns then stay in the JVM
    keyed = (probes.select(*_PROBE_COLUMNS)
             .repartition(n_tasks or match_tasks(probes.sparkSession), *PIECE_KEYS)
             .sortWithinPartitions(*PIECE_KEYS, *_SOURCE_ORDER)
             .select(*_WIRE_COLUMNS))
    return keyed.mapInArrow(fn, RESULT_DDL).persist(StorageLevel.MEMORY_AND_DISK)


def result_counts(result: DataFrame) -> dict[tuple[str, str], dict[str, int]]:
    """{(dt, partition): {key: n}} summed over the tasks' stats rows: `traversals:<reason>` counts of the matched
    traversals on the partition's segments ('' = kept) and the fix accounting of the pieces homed there.

    The first action on the result: it computes (and caches) the matching; the stats rows are a few per task."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for r in result.where(F.col("kind") == "stats").select("dt", "partition", "stats").collect():
        acc = counts.setdefault((str(r["dt"]), r["partition"]), {})
        for k, v in r["stats"].items():
            acc[k] = acc.get(k, 0) + int(v)
    return counts


def traversal_rows(result: DataFrame) -> DataFrame:
    """Kept traversals in the segment_traversals schema."""
    return result.where(F.col("kind") == "traversal").select(*SEGMENT_TRAVERSALS.names)
