"""Aggregation kernels (pure Python/numpy/pandas, no pyspark): time-of-week bucketing, speed histograms and the
estimator with its back-off chain (blocks of segments at once).

Time basis: instants are UTC; buckets are local wall-clock time of the road (IANA zone), 5 minutes, Sunday 00:00
local = bucket 0. Speeds in km/h, durations in seconds, lengths in metres.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from schemas.bucketed_traversals import BUCKET_MINUTES, N_BUCKETS
from schemas.speed_estimates import MIN_TRACES, SOURCES
from schemas.speed_histograms import N_SPEED_BINS, SPEED_BIN_EDGES_KPH

BUCKETS_PER_DAY = 24 * 60 // BUCKET_MINUTES  # 288
BUCKETS_PER_HOUR = 60 // BUCKET_MINUTES  # 12
EDGES = np.asarray(SPEED_BIN_EDGES_KPH, dtype=float)
BIN_WIDTH = float(EDGES[1] - EDGES[0])
if not np.allclose(np.diff(EDGES), BIN_WIDTH):  # the Spark transform computes bins arithmetically
    raise ValueError("SPEED_BIN_EDGES_KPH must be uniform")

# Back-off and estimator parameters (docs/estimation.md explains each one).
NEIGHBOUR_RADIUS = 2  # level 1 pools buckets b-2..b+2 (25 minutes), wrapping around the week
# An observed bucket's statistics come from its histogram and its neighbours' b-2..b+2 weighted 1-2-3-2-1 (wrapping
# around the week): traffic varies smoothly at the 5-minute scale and a symmetric kernel cancels a linear trend, so
# the extra traversals cut the noise of a few drivers' median without shifting it (docs/estimation.md, "Temporal
# kernel"). Integer weights keep the pooled counts exact. (1,) is a bucket's own histogram alone.
OBSERVED_KERNEL = (1, 2, 3, 2, 1)
NIGHT_HOURS = (22, 23, 0, 1, 2, 3, 4)  # local hours whose speeds define free flow (22:00-05:00)
FREE_FLOW_QUANTILE = 0.85
OUTLIER_FACTOR = 3.0  # bins entirely below median/3 or above median*3 are dropped before the statistics
CONFIDENCE_TRACE_SCALE = 5.0  # confidence grows as 1 - exp(-n_traces / 5)
SOURCE_WEIGHT = {  # confidence multiplier per back-off level
    "observed": 1.0, "neighbour_buckets": 0.8, "hour_daytype": 0.6, "segment_week": 0.4, "road_class_prior": 0.2,
}
DEFAULT_PRIOR_CONFIDENCE = 0.05  # the default class table has no data behind it
# Prior speeds used when a road class has fewer than k traces in the partition (typical urban free-ish flow).
DEFAULT_CLASS_SPEED_KPH = {
    "motorway": 100.0, "trunk": 80.0, "primary": 50.0, "secondary": 45.0, "tertiary": 40.0,
    "motorway_link": 60.0, "trunk_link": 50.0, "primary_link": 40.0, "secondary_link": 35.0, "tertiary_link": 30.0,
    "unclassified": 35.0, "residential": 30.0, "living_street": 15.0, "service": 20.0, "road": 30.0, "unknown": 35.0,
}
assert set(SOURCE_WEIGHT) == set(SOURCES)


# ---------------------------------------------------------------- time bucketing

def midpoint_utc(enter: datetime, exit_: datetime) -> datetime:
    """Midpoint of a traversal (the instant that decides its bucket)."""
    return enter + (exit_ - enter) / 2


def tow_bucket_of_local(local: datetime) -> int:
    """Bucket 0..2015 of a local wall-clock time: Sunday 00:00-00:05 = 0, Saturday 23:55-24:00 = 2015."""
    days_since_sunday = (local.weekday() + 1) % 7  # weekday(): Monday = 0 .. Sunday = 6
    return days_since_sunday * BUCKETS_PER_DAY + (local.hour * 60 + local.minute) // BUCKET_MINUTES


def day_type_of_bucket(bucket: int) -> str:
    """'sunday' (day 0), 'saturday' (day 6) or 'weekday' for a tow_bucket."""
    day = bucket // BUCKETS_PER_DAY
    return "sunday" if day == 0 else "saturday" if day == 6 else "weekday"


def bucket_instant(instant_utc: datetime, timezone: str) -> dict:
    """Local time (ISO with offset), tow_bucket and day_type of one UTC instant on a road in `timezone`."""
    if instant_utc.tzinfo is None:
        instant_utc = instant_utc.replace(tzinfo=UTC)
    local = instant_utc.astimezone(ZoneInfo(timezone))
    bucket = tow_bucket_of_local(local)
    return {
        "local_time": local.replace(microsecond=0).isoformat(),
        "tow_bucket": bucket,
        "day_type": day_type_of_bucket(bucket),
    }


def is_valid_timezone(name: str | None) -> bool:
    """True when `name` is an IANA zone known to this Python (and so to the JVM's tz database)."""
    if not name:
        return False
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return False
    return True


# ---------------------------------------------------------------- histograms (a commutative monoid)

def speed_bin(speed_kph: np.ndarray | float) -> np.ndarray:
    """Index of the speed bin [lo, hi) of each speed; the last bin is open-ended, negatives go to bin 0."""
    idx = np.floor(np.asarray(speed_kph, dtype=float) / BIN_WIDTH).astype(np.int64)
    return np.clip(idx, 0, N_SPEED_BINS - 1)


HIST_BINS = ("bin_ids", "bin_counts")
HIST_SUMS = ("n_obs", "n_traces", "sum_speed_kph", "sum_duration_s", "sum_traversed_m")


def sparse_bins(dense: np.ndarray | list) -> tuple[list[int], list[int]]:
    """(bin_ids, bin_counts) of a dense per-bin count vector: the bins holding observations, ascending."""
    c = np.asarray(dense, dtype=np.int64)
    ids = np.flatnonzero(c)
    return ids.tolist(), c[ids].tolist()


def dense_from_flat(row: np.ndarray, bin_ids: np.ndarray, bin_counts: np.ndarray, n_rows: int) -> np.ndarray:
    """(n_rows, N_SPEED_BINS) int64 counts from flattened sparse entries (row index, bin, count) of many rows."""
    row = np.asarray(row, dtype=np.int64)
    ids = np.asarray(bin_ids, dtype=np.int64)
    cnt = np.asarray(bin_counts, dtype=np.int64)
    if len(ids) != len(cnt) or len(ids) != len(row):
        raise ValueError("speed_histograms: bin_ids and bin_counts must have the same length in every row")
    if len(ids) and (ids.min() < 0 or ids.max() >= N_SPEED_BINS):
        raise ValueError(f"speed_histograms: bin_ids must lie in 0..{N_SPEED_BINS - 1}")
    out = np.zeros((n_rows, N_SPEED_BINS), dtype=np.int64)
    np.add.at(out, (row, ids), cnt)
    return out


def dense_counts(bin_ids, bin_counts) -> np.ndarray:
    """(rows, N_SPEED_BINS) int64 counts from per-row sparse lists (e.g. the two list columns of a pandas frame)."""
    ids = [np.asarray(x, dtype=np.int64) for x in bin_ids]
    cnt = [np.asarray(x, dtype=np.int64) for x in bin_counts]
    if any(len(a) != len(b) for a, b in zip(ids, cnt, strict=True)):
        raise ValueError("speed_histograms: bin_ids and bin_counts must have the same length in every row")
    lens = np.fromiter((len(a) for a in ids), dtype=np.int64, count=len(ids))
    def flat(xs):
        return (np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64))
    return dense_from_flat(np.repeat(np.arange(len(ids)), lens), flat(ids), flat(cnt), len(ids))


# ---------------------------------------------------------------- Arrow kernels (one Spark task's rows)

def _key_codes(col) -> np.ndarray:
    """Integer codes of one key column (pyarrow): the values for integers/dates, dictionary indices otherwise."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if col.null_count:
        raise ValueError("histogram keys must not be null")
    if pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
    if pa.types.is_date(col.type):
        return np.asarray(col.cast(pa.int32()).to_numpy(zero_copy_only=False), dtype=np.int64)
    if isinstance(col, pa.ChunkedArray):  # one dictionary for the whole column, whatever the batches
        col = col.combine_chunks()
    return np.asarray(pc.dictionary_encode(col).indices.to_numpy(zero_copy_only=False), dtype=np.int64)


def _group_rows(table, keys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by key: (order, key id per sorted row, position of each key's first sorted row)."""
    codes = [_key_codes(table.column(k)) for k in keys]
    order = np.lexsort(codes[::-1]) if codes else np.arange(table.num_rows)
    n = table.num_rows
    new = np.zeros(n, dtype=bool)
    if n:
        new[0] = True
    for c in codes:
        s = c[order]
        new[1:] |= s[1:] != s[:-1]
    kid = np.cumsum(new) - 1
    return order, kid, np.flatnonzero(new)


def sparse_entries(table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flattened (row index, bin, count) entries of the bin_ids/bin_counts lists of a histogram table (pyarrow),
    validated: no null lists, equal lengths per row, bins in 0..N_SPEED_BINS-1."""
    import pyarrow.compute as pc

    ids_col = table.column("bin_ids").combine_chunks()
    cnt_col = table.column("bin_counts").combine_chunks()
    if ids_col.null_count or cnt_col.null_count:
        raise ValueError("speed_histograms: bin_ids and bin_counts must not be null")
    if not np.array_equal(pc.list_value_length(ids_col).to_numpy(zero_copy_only=False),
                          pc.list_value_length(cnt_col).to_numpy(zero_copy_only=False)):
        raise ValueError("speed_histograms: bin_ids and bin_counts must have the same length in every row")
    parent = np.asarray(pc.list_parent_indices(ids_col).to_numpy(zero_copy_only=False), dtype=np.int64)
    ids = np.asarray(pc.list_flatten(ids_col).to_numpy(zero_copy_only=False), dtype=np.int64)
    cnt = np.asarray(pc.list_flatten(cnt_col).to_numpy(zero_copy_only=False), dtype=np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= N_SPEED_BINS):
        raise ValueError(f"speed_histograms: bin_ids must lie in 0..{N_SPEED_BINS - 1}")
    return parent, ids, cnt


def _histogram_batch(table, keys, order, first, codes, counts, sums):
    """Assemble one output table: key columns, sparse bins from (kid*N_SPEED_BINS + bin) codes, sums."""
    import pyarrow as pa

    n_keys = len(first)
    off = np.zeros(n_keys + 1, dtype=np.int32)
    np.cumsum(np.bincount(codes // N_SPEED_BINS, minlength=n_keys), out=off[1:])
    cols = {k: table.column(k).take(pa.array(order[first])) for k in keys}
    cols["bin_ids"] = pa.ListArray.from_arrays(pa.array(off), pa.array((codes % N_SPEED_BINS).astype(np.int16)))
    cols["bin_counts"] = pa.ListArray.from_arrays(pa.array(off), pa.array(counts.astype(np.int64)))
    for c, v in sums.items():
        cols[c] = pa.array(v.astype(np.int64) if c.startswith("n_") else v.astype(np.float64))
    return pa.table(cols)


def histogram_table(table, keys: tuple[str, ...]):
    """Histogram rows per key of bucketed traversals (a pyarrow Table holding every row of its keys).

    Needs keys, trace_id (string, or an int64 code per trace), speed_kph, duration_s, traversed_m. Output: keys,
    bin_ids, bin_counts, HIST_SUMS, one row per key; n_traces counts distinct trace_id values per key.
    """

    if table.num_rows == 0:
        return None
    order, kid, first = _group_rows(table, keys)
    n_keys = len(first)
    def col(c):
        return (np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=float)[order])
    speed = col("speed_kph")
    codes, counts = np.unique(kid * N_SPEED_BINS + speed_bin(speed), return_counts=True)
    traces = table.column("trace_id")
    if traces.null_count:
        raise ValueError("histogram input: trace_id must not be null")
    trace = _key_codes(traces)[order]
    by_trace = np.lexsort((trace, kid))  # rows of a key stay contiguous; equal traces become adjacent
    k, tr = kid[by_trace], trace[by_trace]
    first_of_trace = np.ones(len(k), dtype=bool)
    first_of_trace[1:] = (k[1:] != k[:-1]) | (tr[1:] != tr[:-1])
    sums = {
        "n_obs": np.bincount(kid, minlength=n_keys),
        "n_traces": np.bincount(k[first_of_trace], minlength=n_keys),
        "sum_speed_kph": np.bincount(kid, weights=speed, minlength=n_keys),
        "sum_duration_s": np.bincount(kid, weights=col("duration_s"), minlength=n_keys),
        "sum_traversed_m": np.bincount(kid, weights=col("traversed_m"), minlength=n_keys),
    }
    return _histogram_batch(table, keys, order, first, codes, counts, sums)


def merge_histogram_table(table, keys: tuple[str, ...]):
    """Monoid merge of histogram rows (a pyarrow Table holding every row of its keys): one row per key."""

    if table.num_rows == 0:
        return None
    order, kid, first = _group_rows(table, keys)
    n_keys = len(first)
    parent, ids, cnt = sparse_entries(table)
    row_kid = np.empty(table.num_rows, dtype=np.int64)
    row_kid[order] = kid
    codes, inverse = np.unique(row_kid[parent] * N_SPEED_BINS + ids, return_inverse=True)
    # float64 accumulation is exact for integer totals below 2**53
    counts = np.rint(np.bincount(inverse, weights=cnt.astype(float), minlength=len(codes))).astype(np.int64)
    sums = {}
    for c in HIST_SUMS:
        v = np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=float)
        acc = np.bincount(row_kid, weights=v, minlength=n_keys)
        sums[c] = np.rint(acc).astype(np.int64) if c.startswith("n_") else acc
    return _histogram_batch(table, keys, order, first, codes, counts, sums)


# ---------------------------------------------------------------- statistics on one histogram

def _quantiles_cum(c: np.ndarray, cum: np.ndarray, q: float) -> np.ndarray:
    """q-quantile of each row given float counts c and their row-wise cumulative sums cum."""
    n = cum[:, -1] if cum.shape[1] else np.zeros(len(c))
    target = q * n
    i = np.argmax(cum >= target[:, None] - 1e-9, axis=1)  # first bin whose cumulative count reaches the rank
    r = np.arange(len(c))
    ci = c[r, i]
    before = cum[r, i] - ci
    frac = np.divide(target - before, ci, out=np.zeros_like(target), where=ci > 0)
    out = EDGES[i] + np.clip(frac, 0.0, 1.0) * BIN_WIDTH
    return np.where(n > 0, out, np.nan)


def quantiles_rows(counts: np.ndarray, q: float) -> np.ndarray:
    """q-quantile of each row of binned counts (rows x bins), linear inside the bin; NaN for empty rows."""
    c = np.atleast_2d(np.asarray(counts, dtype=float))
    return _quantiles_cum(c, np.cumsum(c, axis=1), q)


def quantile_from_bins(counts: np.ndarray, q: float) -> float:
    """q-quantile of one binned sample, interpolating linearly inside the bin (NaN for an empty histogram)."""
    return float(quantiles_rows(np.asarray(counts)[None, :], q)[0])


def trim_rows(counts: np.ndarray) -> np.ndarray:
    """Per row, drop bins lying entirely below median/OUTLIER_FACTOR or entirely above median*OUTLIER_FACTOR."""
    c = np.atleast_2d(np.asarray(counts, dtype=np.int64))
    med = quantiles_rows(c, 0.5)[:, None]
    keep = ((EDGES + BIN_WIDTH)[None, :] > med / OUTLIER_FACTOR) & (EDGES[None, :] < med * OUTLIER_FACTOR)
    keep |= np.isnan(med)
    return np.where(keep, c, 0)


def trim_outliers(counts: np.ndarray) -> np.ndarray:
    """trim_rows for one histogram."""
    return trim_rows(np.asarray(counts)[None, :])[0]


@dataclass
class Stats:
    """Statistics of one (possibly pooled) histogram after outlier trimming."""

    median: float
    p15: float
    p85: float
    mean: float
    harmonic_mean: float
    n_obs: int
    n_traces: int


def stats_rows(counts, n_obs, n_traces, sum_speed, sum_duration, sum_m) -> dict[str, np.ndarray]:
    """Row-wise statistics: median/p15/p85 from the outlier-trimmed bins; mean and space-mean speed from the exact
    sums, or from the kept bins' midpoints when outliers were trimmed (the sums include them; error < BIN_WIDTH/2).
    n_obs/n_traces are reported untrimmed."""
    c = np.atleast_2d(np.asarray(counts, dtype=np.int64))
    n_obs, sum_speed, sum_duration, sum_m = (np.atleast_1d(np.asarray(x, dtype=float))
                                              for x in (n_obs, sum_speed, sum_duration, sum_m))
    kept = trim_rows(c)
    dropped = (c - kept).sum(axis=1) > 0
    n_kept = kept.sum(axis=1).astype(float)
    mids = EDGES + BIN_WIDTH / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(dropped, (kept * mids).sum(axis=1) / n_kept, sum_speed / n_obs)
        hm = np.where(dropped, n_kept / (kept / mids).sum(axis=1), sum_m / sum_duration * 3.6)
    hm = np.where(np.isfinite(hm) & (hm > 0), hm, np.nan)
    mean = np.where(np.isfinite(mean), mean, np.nan)
    kf = kept.astype(float)
    cum = np.cumsum(kf, axis=1)
    return {"median": _quantiles_cum(kf, cum, 0.5), "p15": _quantiles_cum(kf, cum, 0.15),
            "p85": _quantiles_cum(kf, cum, 0.85),
            "mean": mean, "harmonic_mean": hm, "n_obs": n_obs.astype(np.int64),
            "n_traces": np.atleast_1d(np.asarray(n_traces)).astype(np.int64)}


def histogram_stats(counts, n_obs, n_traces, sum_speed, sum_duration, sum_m) -> Stats:
    """stats_rows for one histogram."""
    r = stats_rows(np.asarray(counts)[None, :], n_obs, n_traces, sum_speed, sum_duration, sum_m)
    return Stats(**{k: (int(v[0]) if k.startswith("n_") else float(v[0])) for k, v in r.items()})


def confidence_rows(source_weight: np.ndarray, n_traces, p15, median, p85) -> np.ndarray:
    """0..1: SOURCE_WEIGHT[source] * (1 - exp(-n_traces/5)) / (1 + (p85 - p15) / median)."""
    n = np.asarray(n_traces, dtype=float)
    med = np.asarray(median, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.maximum(np.asarray(p85, dtype=float) - np.asarray(p15, dtype=float), 0.0) / med
    spread = np.where(np.isfinite(spread), spread, 1.0)
    c = np.asarray(source_weight, dtype=float) * (1.0 - np.exp(-n / CONFIDENCE_TRACE_SCALE)) / (1.0 + spread)
    return np.clip(np.where((n > 0) & np.isfinite(med) & (med > 0), c, 0.0), 0.0, 1.0)


def confidence(source: str, n_traces: int, p15: float, median: float, p85: float) -> float:
    """Confidence of one estimate (confidence_rows); DEFAULT_PRIOR_CONFIDENCE for the data-less default prior."""
    if source == "road_class_prior" and not n_traces:
        return DEFAULT_PRIOR_CONFIDENCE
    return float(confidence_rows(np.array([SOURCE_WEIGHT[source]]), [n_traces], [p15], [median], [p85])[0])


# ---------------------------------------------------------------- per-segment estimation with back-off

@dataclass
class Prior:
    """Road-class prior of one partition: pooled class statistics (when >= k traces), else the default table."""

    speed: float
    p15: float = math.nan
    p85: float = math.nan
    mean: float = math.nan
    harmonic_mean: float = math.nan
    free_flow: float = math.nan
    n_obs: int = 0
    n_traces: int = 0


def class_prior(road_class: str, hist: pd.DataFrame | None, min_traces: int = MIN_TRACES) -> Prior:
    """Prior for a road class from its pooled histograms in the partition (rows of any buckets), else defaults."""
    default = DEFAULT_CLASS_SPEED_KPH.get(road_class, DEFAULT_CLASS_SPEED_KPH["unknown"])
    if hist is None or hist.empty or int(hist["n_traces"].sum()) < min_traces:
        return Prior(speed=default, free_flow=default)
    arrays = _arrays(hist)
    st = histogram_stats(arrays["counts"].sum(0), *(float(arrays[c].sum()) for c in HIST_SUMS))
    night = np.isin(arrays["hour"], NIGHT_HOURS)
    ff = default
    if int(arrays["n_traces"][night].sum()) >= min_traces:
        ff = quantile_from_bins(trim_outliers(arrays["counts"][night].sum(0)), FREE_FLOW_QUANTILE)
    return Prior(st.median, st.p15, st.p85, st.mean, st.harmonic_mean, ff, st.n_obs, st.n_traces)


def _arrays(hist: pd.DataFrame) -> dict[str, np.ndarray]:
    return {
        "counts": dense_counts(hist["bin_ids"], hist["bin_counts"]),
        "hour": (hist["tow_bucket"].to_numpy() % BUCKETS_PER_DAY) // BUCKETS_PER_HOUR,
        **{c: hist[c].to_numpy(dtype=float) for c in HIST_SUMS},
    }


LEVELS = SOURCES[:-1]  # the data levels; the prior closes the chain


# ---------------------------------------------------------------- vectorised estimation (many segments at once)

ESTIMATE_CHUNK_SEGMENTS = 32  # segments per block: arrays stay cache-sized (256 measured slower); 2016 rows out each
_HOUR_OF_BUCKET = (np.arange(N_BUCKETS) % BUCKETS_PER_DAY) // BUCKETS_PER_HOUR
_DAYTYPE_OF_BUCKET = np.select([np.arange(N_BUCKETS) // BUCKETS_PER_DAY == 0,
                                np.arange(N_BUCKETS) // BUCKETS_PER_DAY == 6], [0, 2], 1)
_POOL_OF_BUCKET = _DAYTYPE_OF_BUCKET * 24 + _HOUR_OF_BUCKET  # 0..71: (day type, local hour) pool of a bucket
_NIGHT_BUCKET = np.isin(_HOUR_OF_BUCKET, NIGHT_HOURS)


def _pool_hour_daytype(x: np.ndarray) -> np.ndarray:
    """(S, 2016) -> (S, 2016): per bucket, the sum over the same local hour of its day-type pool."""
    s = x.shape[0]
    by_hour = x.reshape(s, 7, 24, BUCKETS_PER_HOUR).sum(axis=3)  # (S, 7, 24)
    pooled = np.empty_like(by_hour)
    pooled[:, 0], pooled[:, 6] = by_hour[:, 0], by_hour[:, 6]
    pooled[:, 1:6] = by_hour[:, 1:6].sum(axis=1, keepdims=True)
    return np.repeat(pooled, BUCKETS_PER_HOUR, axis=2).reshape(x.shape)


def _group_sum(key: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum of value rows per integer key 0..n_groups-1 (rows in key order are summed sequentially)."""
    out = np.zeros((n_groups, *values.shape[1:]), dtype=values.dtype)
    if len(key):
        order = np.argsort(key, kind="stable")
        k = key[order]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        out[k[starts]] = np.add.reduceat(values[order], starts, axis=0)
    return out


def check_kernel(kernel: tuple[int, ...]) -> tuple[int, ...]:
    """The observed-bucket kernel, validated: odd length, symmetric, positive integer weights."""
    k = tuple(int(w) for w in kernel)
    if len(k) % 2 != 1 or k != k[::-1] or min(k) < 1 or any(w != v for w, v in zip(k, kernel, strict=True)) \
            or len(k) > N_BUCKETS:
        raise ValueError(f"observed kernel {kernel!r}: need an odd number of symmetric positive integer weights")
    return k


def _kernel_pool(ext: dict[str, np.ndarray], idx: np.ndarray, si: np.ndarray, bi: np.ndarray,
                 kernel: tuple[int, ...]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Kernel-weighted histograms and sums of buckets bi-r..bi+r of segments si (wrapping around the week), and the
    window's unweighted n_obs/n_traces (what the estimate reports)."""
    r = len(kernel) // 2
    weighted: dict[str, np.ndarray] = {}
    counted: dict[str, np.ndarray] = {}
    for o, w in zip(range(-r, r + 1), kernel, strict=True):
        rows = idx[si, (bi + o) % N_BUCKETS]
        for k, v in ext.items():
            x = v[rows]
            weighted[k] = x * w if k not in weighted else weighted[k] + x * w
        for k in ("n_obs", "n_traces"):
            counted[k] = ext[k][rows] if k not in counted else counted[k] + ext[k][rows]
    return weighted, counted


def _estimate_block(local: np.ndarray, b: np.ndarray, rows: dict[str, np.ndarray], priors: list[Prior],
                    min_traces: int, kernel: tuple[int, ...] = OBSERVED_KERNEL) -> dict[str, np.ndarray]:
    """Back-off chain for S segments at once. local/b: segment index 0..S-1 and bucket of each histogram row;
    rows: counts (rows, bins) and HIST_SUMS (rows,). Returns (S, 2016) arrays per output column + free_flow (S,)."""
    s = len(priors)
    keys = ("counts", *HIST_SUMS)
    # the row of each (segment, bucket), or the all-zero row appended at the end
    ext = {k: np.concatenate([v, np.zeros((1, *v.shape[1:]), dtype=v.dtype)]) for k, v in rows.items()}
    zero = len(local)
    idx = np.full((s, N_BUCKETS), zero, dtype=np.int64)
    idx[local, b] = np.arange(len(local))
    nt = ext["n_traces"][idx].astype(np.int64)  # (S, 2016)

    nt_level = (
        nt,
        sum(np.roll(nt, -o, axis=1) for o in range(-NEIGHBOUR_RADIUS, NEIGHBOUR_RADIUS + 1)),
        _pool_hour_daytype(nt),
        np.broadcast_to(nt.sum(axis=1, keepdims=True), nt.shape),
    )
    level = np.full((s, N_BUCKETS), len(LEVELS), dtype=np.int64)  # index into SOURCES; len(LEVELS) = prior
    for i in reversed(range(len(LEVELS))):
        level = np.where(nt_level[i] >= min_traces, i, level)

    cols = ("median", "p15", "p85", "mean", "harmonic_mean", "n_obs", "n_traces", "confidence")
    out = {c: np.full((s, N_BUCKETS), np.nan) for c in cols}

    def put(li: int, pooled: dict[str, np.ndarray], where: tuple[np.ndarray, np.ndarray], pick: np.ndarray,
            counted: dict[str, np.ndarray] | None = None) -> None:
        st = stats_rows(pooled["counts"], *(pooled[c] for c in HIST_SUMS))
        for c, v in (counted or {}).items():  # weighted statistics, unweighted window counts
            st[c] = v.astype(np.int64)
        st["confidence"] = confidence_rows(np.full(len(st["median"]), SOURCE_WEIGHT[LEVELS[li]]), st["n_traces"],
                                           st["p15"], st["median"], st["p85"])
        for c in cols:
            out[c][where] = st[c][pick]

    si, bi = np.nonzero(level == 0)  # observed: the bucket's own row and its kernel neighbours
    if len(si):
        weighted, counted = _kernel_pool(ext, idx, si, bi, kernel)
        put(0, weighted, (si, bi), np.arange(len(si)), counted)
    si, bi = np.nonzero(level == 1)  # neighbours b-R..b+R, wrapping around the week
    if len(si):
        pooled, _ = _kernel_pool(ext, idx, si, bi, (1,) * (2 * NEIGHBOUR_RADIUS + 1))
        put(1, pooled, (si, bi), np.arange(len(si)))
    si, bi = np.nonzero(level == 2)  # (segment, day type, hour) pools: one statistic per pool used
    if len(si):
        pool_key = local * 72 + _POOL_OF_BUCKET[b]
        used, pick = np.unique(si * 72 + _POOL_OF_BUCKET[bi], return_inverse=True)
        sel = np.isin(pool_key, used)
        pooled = {k: _group_sum(np.searchsorted(used, pool_key[sel]), rows[k][sel], len(used)) for k in keys}
        put(2, pooled, (si, bi), pick)
    si, bi = np.nonzero(level == 3)  # the segment's week
    if len(si):
        pooled = {k: _group_sum(local, rows[k], s) for k in keys}
        put(3, pooled, (si, bi), si)
    pv = np.array([[p.speed, p.p15, p.p85, p.mean, p.harmonic_mean, p.n_obs, p.n_traces,
                    confidence("road_class_prior", p.n_traces, p.p15, p.speed, p.p85)] for p in priors], dtype=float)
    w = level == len(LEVELS)
    for j, c in enumerate(cols):
        out[c] = np.where(w, pv[:, j][:, None], out[c])

    # free flow: p85 of the trimmed night histogram when it has >= k traces, else the prior's
    night = _NIGHT_BUCKET[b]
    night_ok = _group_sum(local[night], rows["n_traces"][night], s) >= min_traces
    ff = quantiles_rows(trim_rows(_group_sum(local[night], rows["counts"][night], s)), FREE_FLOW_QUANTILE)
    ff = np.where(night_ok, ff, np.array([p.free_flow for p in priors], dtype=float))
    return {"level": level, "free_flow": ff, **out}


ESTIMATE_OUTPUT_COLUMNS = ("segment_id", "tow_bucket", "speed_kph", "p15_kph", "p85_kph", "mean_kph",
                           "harmonic_mean_kph", "n_obs", "n_traces", "confidence", "free_flow_kph", "source")


def estimate_segments(hist: pd.DataFrame, priors: dict[int, Prior], min_traces: int = MIN_TRACES,
                      counts: np.ndarray | None = None, chunk: int = ESTIMATE_CHUNK_SEGMENTS,
                      kernel: tuple[int, ...] = OBSERVED_KERNEL) -> pd.DataFrame:
    """All 2016 bucket estimates of every segment in `hist` (iter_estimate_segments, concatenated)."""
    frames = list(iter_estimate_segments(hist, priors, min_traces, counts, chunk, kernel))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(ESTIMATE_OUTPUT_COLUMNS))


def iter_estimate_segments(hist: pd.DataFrame, priors: dict[int, Prior], min_traces: int = MIN_TRACES,
                           counts: np.ndarray | None = None, chunk: int = ESTIMATE_CHUNK_SEGMENTS,
                           kernel: tuple[int, ...] = OBSERVED_KERNEL):
    """All 2016 bucket estimates of every segment in `hist`, one DataFrame (ESTIMATE_OUTPUT_COLUMNS) per block of
    `chunk` segments (iter_estimate_columns with `source` as its name)."""
    sources = np.asarray(SOURCES, dtype=object)
    for cols in iter_estimate_columns(hist, priors, min_traces, counts, chunk, kernel):
        cols["source"] = sources[cols.pop("source_code")].astype(str)
        yield pd.DataFrame(cols)


def iter_estimate_columns(hist: pd.DataFrame, priors: dict[int, Prior], min_traces: int = MIN_TRACES,
                          counts: np.ndarray | None = None, chunk: int = ESTIMATE_CHUNK_SEGMENTS,
                          kernel: tuple[int, ...] = OBSERVED_KERNEL):
    """All 2016 bucket estimates of every segment in `hist`, a block of segments per numpy pass.

    A bucket is 'observed' only when its own histogram has >= min_traces distinct traces; its statistics are those of
    the `kernel`-weighted histograms of its window (OBSERVED_KERNEL: b-2..b+2 weighted 1-2-3-2-1), its n_obs/n_traces
    the window's. Otherwise the first level of the chain neighbour_buckets -> hour_daytype -> segment_week whose
    pooled histogram (sum of the member buckets' histograms) has >= min_traces traces is used, else the road-class
    prior.
    hist: one row per (segment_id, tow_bucket) with bin_ids/bin_counts (or `counts`, the dense (rows, bins) array) and
    HIST_SUMS; priors: Prior per segment_id. Yields, per block of `chunk` segments, the ESTIMATE_OUTPUT_COLUMNS as
    numpy arrays ordered by segment_id, tow_bucket, with `source_code` (index into SOURCES) instead of `source`.
    (tests/reference_kernels.estimate_segment is the one-segment reference it is tested against.)
    """
    kernel = check_kernel(kernel)
    seg = hist["segment_id"].to_numpy(dtype=np.int64)
    b = hist["tow_bucket"].to_numpy(dtype=np.int64)
    if ((b < 0) | (b >= N_BUCKETS)).any():
        raise ValueError("tow_bucket out of range")
    if counts is None:
        counts = dense_counts(hist["bin_ids"], hist["bin_counts"])
    seg_ids, seg_idx = np.unique(seg, return_inverse=True)
    if len(np.unique(seg_idx * N_BUCKETS + b)) != len(b):
        raise ValueError("duplicate (segment_id, tow_bucket) histogram rows: merge them first")
    order = np.lexsort((b, seg_idx))
    seg_idx, b, counts = seg_idx[order], b[order], np.asarray(counts, dtype=np.int64)[order]
    sums = {c: hist[c].to_numpy(dtype=float)[order] for c in HIST_SUMS}
    for lo in range(0, len(seg_ids), chunk):
        ids = seg_ids[lo:lo + chunk]
        r0, r1 = np.searchsorted(seg_idx, [lo, lo + chunk])
        rows = {"counts": counts[r0:r1], **{c: v[r0:r1] for c, v in sums.items()}}
        r = _estimate_block(seg_idx[r0:r1] - lo, b[r0:r1], rows, [priors[int(i)] for i in ids], min_traces, kernel)
        n = len(ids) * N_BUCKETS
        yield {
            "segment_id": np.repeat(ids, N_BUCKETS),
            "tow_bucket": np.tile(np.arange(N_BUCKETS, dtype=np.int16), len(ids)),
            "speed_kph": r["median"].reshape(n), "p15_kph": r["p15"].reshape(n), "p85_kph": r["p85"].reshape(n),
            "mean_kph": r["mean"].reshape(n), "harmonic_mean_kph": r["harmonic_mean"].reshape(n),
            "n_obs": r["n_obs"].reshape(n).astype(np.int64), "n_traces": r["n_traces"].reshape(n).astype(np.int64),
            "confidence": r["confidence"].reshape(n), "free_flow_kph": np.repeat(r["free_flow"], N_BUCKETS),
            "source_code": r["level"].reshape(n).astype(np.int8),
        }


# -- run-length rows: what speed_estimates stores ---------------------------------------------------------------------

RUN_VALUE_COLUMNS = ("speed_kph", "p15_kph", "p85_kph", "mean_kph", "harmonic_mean_kph", "n_obs", "n_traces",
                     "confidence", "free_flow_kph", "source_code")


def estimate_runs(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dense estimate columns (iter_estimate_columns: whole segments, ordered by segment_id, tow_bucket) as run-length
    rows: one row per run of consecutive buckets of a segment whose RUN_VALUE_COLUMNS are all equal (NaN equal to
    NaN), with the run's first bucket as `tow_bucket` and the bucket after its last as `tow_bucket_end`.

    Back-off levels pool whole hours or the whole week, so their buckets repeat one estimate; only observed and
    neighbour-bucket estimates change from bucket to bucket."""
    seg = cols["segment_id"]
    n = len(seg)
    start = np.ones(n, dtype=bool)
    if n > 1:
        start[1:] = seg[1:] != seg[:-1]
        for name in RUN_VALUE_COLUMNS:
            v = cols[name]
            differs = v[1:] != v[:-1]
            if v.dtype.kind == "f":
                differs &= ~(np.isnan(v[1:]) & np.isnan(v[:-1]))
            start[1:] |= differs
    first = np.flatnonzero(start)
    last = np.append(first[1:], n) - 1
    b = cols["tow_bucket"]
    out = {k: v[first] for k, v in cols.items()}
    out["tow_bucket_end"] = (b[last].astype(np.int32) + 1).astype(np.int16)
    return out


def run_buckets(first: np.ndarray, end: np.ndarray, buckets: Sequence[int] | np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Expand run-length rows to buckets: (row, tow_bucket) pairs, row-major, for every bucket in [first, end) of each
    row (end missing (-1 or NaN): a one-bucket row, as stored before runs), or only those in `buckets`.

    A row that is not a run inside the week (first outside 0..2015, end <= first or > 2016) is passed through once as
    its own first bucket, so that the checks of whoever reads it see it rather than losing it here."""
    first = np.asarray(first, dtype=np.int64)
    end = np.asarray(end, dtype=float)
    end = np.where(np.isnan(end) | (end < 0), first + 1, end).astype(np.int64)
    valid = (first >= 0) & (first < N_BUCKETS) & (end > first) & (end <= N_BUCKETS)
    grid = np.arange(N_BUCKETS, dtype=np.int64) if buckets is None else np.unique(np.asarray(buckets, dtype=np.int64))
    lo = np.searchsorted(grid, first, "left")
    n = np.where(valid, np.searchsorted(grid, end, "left") - lo, 0)
    n += ~valid & (True if buckets is None else np.isin(first, grid))
    rows = np.repeat(np.arange(len(first)), n)
    offsets = np.cumsum(n) - n
    at = np.minimum(lo[rows] + (np.arange(len(rows)) - offsets[rows]), max(len(grid) - 1, 0))
    bucket = np.where(valid[rows], grid[at] if len(grid) else first[rows], first[rows])
    return rows, bucket
