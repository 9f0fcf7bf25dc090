"""Aggregation transforms (DataFrame -> DataFrame): bucketing, salted histogram partials, window merge, estimation.

Time basis: instants UTC; `tow_bucket` is the road's local time of week (5-minute buckets, Sunday 00:00 = 0).
Speeds km/h, durations s, lengths m. Only job modules know paths and flags.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from schemas.bucketed_traversals import BUCKET_MINUTES, BUCKETED_TRAVERSALS, N_BUCKETS
from schemas.segment_traversals import MAX_PLAUSIBLE_KPH, MIN_CONFIDENCE, MIN_PLAUSIBLE_KPH
from schemas.speed_estimates import MIN_TRACES, SOURCES, SPEED_ESTIMATES
from speedprofile.aggregate import kernels as K
from speedprofile.grouped import whole_groups

HIST_KEYS = ("partition", "segment_id", "tow_bucket")
SUM_COLUMNS = ("n_obs", "n_traces", "sum_speed_kph", "sum_duration_s", "sum_traversed_m")


# ---------------------------------------------------------------- bucket_traversals

def tag_rejects(traversals: DataFrame, segments: DataFrame, valid_timezones: Sequence[str]) -> DataFrame:
    """Join each traversal with its segment's time zone and name the first failed check in `reject_reason`.

    `reject_reason` is null for rows that will be bucketed. Order of checks = order of REJECT_REASONS.
    """
    seg = segments.select("segment_id", F.col("partition").alias("_seg_partition"), "timezone")
    df = traversals.join(F.broadcast(seg), "segment_id", "left")
    reason = (
        F.when(F.col("trace_id").isNull() | F.col("enter_time_utc").isNull() | F.col("exit_time_utc").isNull()
               | F.col("is_complete").isNull(), "missing_field")
        .when(~F.col("is_complete"), "partial")
        .when(F.col("duration_s").isNull() | (F.col("duration_s") <= 0)
              | (F.col("exit_time_utc") <= F.col("enter_time_utc")), "duration_nonpositive")
        .when(F.col("speed_kph").isNull() | F.isnan("speed_kph") | (F.col("speed_kph") < MIN_PLAUSIBLE_KPH)
              | (F.col("speed_kph") > MAX_PLAUSIBLE_KPH), "speed_implausible")
        .when(F.col("confidence").isNull() | F.isnan("confidence") | (F.col("confidence") < MIN_CONFIDENCE),
              "low_confidence")
        .when(F.col("_seg_partition").isNull(), "unknown_segment")
        .when(~F.col("timezone").isin(list(valid_timezones)) | F.col("timezone").isNull(), "unknown_timezone")
    )
    return df.withColumn("reject_reason", reason)


def _offset_string(offset_s: Column) -> Column:
    sign = F.when(offset_s < 0, F.lit("-")).otherwise(F.lit("+"))
    a = F.abs(offset_s)
    return F.concat(sign, F.lpad((a / 3600).cast("int").cast("string"), 2, "0"), F.lit(":"),
                    F.lpad(((a % 3600) / 60).cast("int").cast("string"), 2, "0"))


def bucket_rows(tagged: DataFrame) -> DataFrame:
    """Kept rows (reject_reason null) with midpoint, local time, tow_bucket and day type; schema order.

    Arithmetic on epoch microseconds, so the result does not depend on the session time zone.
    `from_utc_timestamp` applies the zone's rules at that instant (DST-correct).
    """
    mid_us = F.floor((F.unix_micros("enter_time_utc") + F.unix_micros("exit_time_utc")) / 2).cast("long")
    df = tagged.where(F.col("reject_reason").isNull()).withColumn("midpoint_time_utc", F.timestamp_micros(mid_us))
    local_us = F.unix_micros(F.from_utc_timestamp("midpoint_time_utc", F.col("timezone")))
    df = df.withColumn("_local_s", F.floor(local_us / 1_000_000).cast("long"))
    df = df.withColumn("_offset_s", F.col("_local_s") - F.floor(mid_us / 1_000_000))
    days = F.floor(F.col("_local_s") / 86400)
    dow = F.pmod(days + 4, F.lit(7))  # 1970-01-01 was a Thursday: days since Sunday
    bucket = (dow * (N_BUCKETS // 7) + F.floor(F.pmod(F.col("_local_s"), F.lit(86400)) / (BUCKET_MINUTES * 60)))
    df = df.withColumn("tow_bucket", bucket.cast("short"))
    df = df.withColumn("day_type", F.when(dow == 0, "sunday").when(dow == 6, "saturday").otherwise("weekday"))
    local_str = F.date_format(F.timestamp_seconds(F.col("_local_s")), "yyyy-MM-dd'T'HH:mm:ss")
    df = df.withColumn("local_time", F.concat(local_str, _offset_string(F.col("_offset_s"))))
    return df.select(*[F.col(c).cast(BUCKETED_TRAVERSALS.spark_schema()[c].dataType) for c in BUCKETED_TRAVERSALS.names])


# ---------------------------------------------------------------- build_histograms

HOT_KEY_SAMPLE_ROWS = 200_000  # hot-key detection counts a sample of about this many rows


def hot_keys(df: DataFrame, share: float, salt_buckets: int | None, shuffle_partitions: int,
             keys: Sequence[str] = ("dt", *HIST_KEYS), total_rows: int | None = None) -> DataFrame:
    """Keys holding >= share of the rows, with the number of salts to split each into.

    Detection is a cheap count pass over a Bernoulli sample of ~HOT_KEY_SAMPLE_ROWS rows when total_rows is given
    (all rows otherwise); a key at 1 % of the rows then has ~2000 sampled rows, so detection is reliable.
    With salt_buckets None ('auto') a hot key gets ceil(rows / (total / shuffle_partitions)) salts (>= 2, <= 512):
    enough pieces for none to exceed an average task.
    """
    fraction = 1.0 if not total_rows else min(1.0, HOT_KEY_SAMPLE_ROWS / total_rows)
    sample = df if fraction >= 1.0 else df.sample(fraction=fraction, seed=17)
    counts = sample.groupBy(*keys).agg((F.count(F.lit(1)) / F.lit(fraction)).alias("_rows"))
    if total_rows is None:
        total_rows = counts.agg(F.sum("_rows")).first()[0] or 0
    per_task = max(total_rows / max(shuffle_partitions, 1), 1.0)
    hot = counts.where(F.col("_rows") >= F.lit(max(share * total_rows, 2.0)))
    if salt_buckets is not None:
        n = F.lit(int(salt_buckets))
    else:
        n = F.least(F.greatest(F.ceil(F.col("_rows") / per_task), F.lit(2)), F.lit(512))
    rows = hot.withColumn("n_salts", n.cast("int")).collect()  # few rows: at most 1/share keys
    schema = f"{', '.join(f'{k} {df.schema[k].dataType.simpleString()}' for k in keys)}, _rows double, n_salts int"
    return df.sparkSession.createDataFrame(rows, schema)


HIST_INPUT = ("trace_id", "speed_kph", "duration_s", "traversed_m")
HIST_OUTPUT_DDL = ("bin_ids array<smallint>, bin_counts array<bigint>, n_obs bigint, n_traces bigint, "
                   "sum_speed_kph double, sum_duration_s double, sum_traversed_m double")


def _per_key(df: DataFrame, keys: Sequence[str], kernel, n_tasks: int | None = None) -> DataFrame:
    """Hash-distribute rows by key and run an Arrow kernel on each task's rows at once (every row of a key is in
    one task): one shuffle, no per-row Python. Without n_tasks, adaptive execution sizes the tasks (a small
    partition-day is one or two Python tasks, not spark.sql.shuffle.partitions of them)."""
    import pyarrow as pa

    schema = f"{', '.join(f'{k} {df.schema[k].dataType.simpleString()}' for k in keys)}, {HIST_OUTPUT_DDL}"
    key_tuple = tuple(keys)

    def run(batches):
        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        out = kernel(pa.Table.from_batches(batches), key_tuple)
        if out is not None:
            yield from out.to_batches()

    keyed = df.repartition(n_tasks, *keys) if n_tasks else df.repartition(*keys)
    return keyed.mapInArrow(run, schema)


def histogram_partials(bucketed: DataFrame, hot: DataFrame | None = None,
                       keys: Sequence[str] = ("dt", *HIST_KEYS)) -> DataFrame:
    """Sparse histogram per key over bucketed traversals (kernels.histogram_table); hot keys in two phases.

    Without `hot`: one shuffle by key, then the Arrow kernel. With `hot` (keys + n_salts): a hot key's rows are
    spread over n_salts salts, salt = pmod(xxhash64(trace_id), n_salts), so one trace's rows share a salt and the
    distinct-trace counts of the salts add up exactly; phase 1 aggregates per (key, salt), phase 2 merges the
    salted partials (kernels.merge_histogram_table). The salted result equals the unsalted one.
    Output: keys, bin_ids, bin_counts (SPEED_BIN_EDGES_KPH), n_obs, n_traces, sum_speed_kph, sum_duration_s,
    sum_traversed_m.
    """
    df = bucketed.select(*keys, *HIST_INPUT)
    if hot is None:
        return _per_key(df, keys, K.histogram_table)
    df = df.join(F.broadcast(hot.select(*keys, "n_salts")), list(keys), "left")
    df = df.withColumn("salt", F.when(F.col("n_salts").isNotNull(), F.pmod(F.xxhash64("trace_id"), F.col("n_salts")))
                       .otherwise(F.lit(-1)).cast("int")).drop("n_salts")
    phase1 = _per_key(df, (*keys, "salt"), K.histogram_table)
    return merge_histograms(phase1.drop("salt"), keys)


def merge_histograms(hist: DataFrame, keys: Sequence[str] = HIST_KEYS) -> DataFrame:
    """Monoid merge of histogram rows sharing a key: counts of equal bins add up, and so does every count/sum."""
    return _per_key(hist.select(*keys, "bin_ids", "bin_counts", *SUM_COLUMNS), keys, K.merge_histogram_table)


# ---------------------------------------------------------------- estimate_speeds

ESTIMATE_CHUNK_ROWS = 50_000  # histogram rows a task estimates at a time (about 40 MB of dense bins)
ESTIMATE_COLUMNS = [c for c in SPEED_ESTIMATES.names if c not in ("window",)]


def class_priors(hist: DataFrame, segments: DataFrame, min_traces: int = MIN_TRACES) -> dict[tuple[str, str], K.Prior]:
    """Road-class prior per (partition, road_class) from the pooled window histograms of the class (small: collected)."""
    cls = segments.select("segment_id", "road_class")
    pooled = (hist.join(cls, "segment_id", "left").fillna({"road_class": "unknown"})
              .withColumn("_hour", (F.col("tow_bucket") % (N_BUCKETS // 7)) / (60 // BUCKET_MINUTES))
              .withColumn("_hour", F.floor("_hour").cast("int"))
              .withColumn("tow_bucket", (F.col("_hour") * (60 // BUCKET_MINUTES)).cast("short")))
    pooled = merge_histograms(pooled, keys=("partition", "road_class", "tow_bucket")).toPandas()
    priors: dict[tuple[str, str], K.Prior] = {}
    for (part, rc), g in pooled.groupby(["partition", "road_class"]):
        priors[(part, rc)] = K.class_prior(rc, g, min_traces)
    return priors


def estimate(hist: DataFrame, segments: DataFrame, priors: dict[tuple[str, str], K.Prior], window: str,
             min_traces: int = MIN_TRACES, n_tasks: int | None = None,
             chunk_rows: int = ESTIMATE_CHUNK_ROWS) -> DataFrame:
    """All 2016 bucket estimates of every segment with any histogram row, as run-length rows (kernels.estimate_runs:
    one row per run of consecutive buckets with one estimate).

    Rows are hash-distributed by (partition, segment_id) into n_tasks (default: sized by adaptive execution) and
    sorted by segment; each task runs the vectorised kernels.iter_estimate_columns on whole segments of about
    chunk_rows histogram rows at a time (one numpy pass per block of segments, not one Python call per segment).
    """
    import numpy as np
    import pyarrow as pa

    cls = segments.select("segment_id", "road_class")
    df = (hist.join(cls, "segment_id", "left").fillna({"road_class": "unknown"})
          .select("partition", "segment_id", "road_class", "tow_bucket", "bin_ids", "bin_counts", *SUM_COLUMNS))
    df = df.repartition(n_tasks, "partition", "segment_id") if n_tasks else df.repartition("partition", "segment_id")
    out_schema = SPEED_ESTIMATES.spark_schema()
    arrow_schema = SPEED_ESTIMATES.arrow_schema()
    nullable = ("p15_kph", "p85_kph", "mean_kph", "harmonic_mean_kph")
    sources = pa.array(SOURCES, pa.string())

    def run(batches):
        # rows sorted by segment: whole segments of about chunk_rows histogram rows at a time (bounded memory)
        for table in whole_groups(batches, ("partition", "segment_id"), chunk_rows):
            table = table.combine_chunks()
            counts = K.dense_from_flat(*K.sparse_entries(table), table.num_rows)
            pdf = table.drop(["bin_ids", "bin_counts"]).to_pandas()
            for part, idx in pdf.groupby("partition", sort=True).indices.items():
                g = pdf.iloc[idx]
                classes = dict(zip(g["segment_id"], g["road_class"], strict=True))
                seg_priors = {int(s): priors.get((part, rc)) or K.class_prior(rc, None, min_traces)
                              for s, rc in classes.items()}
                for dense in K.iter_estimate_columns(g, seg_priors, min_traces, counts=counts[idx]):
                    cols = K.estimate_runs(dense)
                    n = len(cols["segment_id"])
                    arrays = []
                    for f in arrow_schema:
                        if f.name in ("window", "partition"):
                            value = window if f.name == "window" else part
                            arrays.append(pa.repeat(pa.scalar(value, pa.string()), n))
                        elif f.name == "source":
                            codes = cols["source_code"]
                            arrays.append(pa.DictionaryArray.from_arrays(codes, sources).cast(pa.string()))
                        else:
                            v = cols[f.name]
                            arrays.append(pa.array(v, f.type, mask=np.isnan(v) if f.name in nullable else None))
                    yield pa.RecordBatch.from_arrays(arrays, schema=arrow_schema)

    return df.sortWithinPartitions("partition", "segment_id").mapInArrow(run, schema=out_schema)


def run_end() -> Column:
    """The bucket after a speed_estimates row's run (a row written before runs, without tow_bucket_end: its bucket
    + 1)."""
    return F.coalesce(F.col("tow_bucket_end").cast("int"), F.col("tow_bucket").cast("int") + 1)


def dense_estimates(est: DataFrame) -> DataFrame:
    """speed_estimates rows (runs) as one row per segment x tow_bucket (each a run of one bucket)."""
    buckets = F.sequence(F.col("tow_bucket").cast("short"), (run_end() - 1).cast("short"))
    return (est.withColumn("tow_bucket", F.explode(buckets))
            .withColumn("tow_bucket_end", (F.col("tow_bucket") + 1).cast("short"))
            .select(*est.columns))
