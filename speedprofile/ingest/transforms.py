"""Spark transforms of ingest (DataFrame -> DataFrame); the row logic lives in `kernel` (pure pandas).

Grain: `lines` = one input text line; `parsed` = one input record, validated (reason set = rejected);
`trace_rows` = one probes row (owned or context fix) or one rejected record with its reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import unquote

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from schemas.probes import CONTEXT_FIXES, MAX_GAP_S
from schemas.rejected_probes import SPIKE_KPH
from speedprofile.ingest import kernel
from speedprofile.ingest.formats import InputFile

LINES_DDL = "source_file STRING, source_row BIGINT, line STRING"
PARSED_DDL = (
    "source_file STRING, source_row BIGINT, raw STRING, trace_id STRING, timestamp_utc TIMESTAMP, "
    "lon_deg DOUBLE, lat_deg DOUBLE, speed_kph DOUBLE, heading_deg DOUBLE, accuracy_m DOUBLE, "
    "prematched_segment_id BIGINT, reason STRING, detail STRING"
)
TRACE_OUT_DDL = (
    "trace_id STRING, piece INT, timestamp_utc TIMESTAMP, lon_deg DOUBLE, lat_deg DOUBLE, speed_kph DOUBLE, "
    "heading_deg DOUBLE, accuracy_m DOUBLE, prematched_segment_id BIGINT, is_context BOOLEAN, "
    "source_file STRING, source_row BIGINT, dt DATE, partition STRING, raw STRING, reason STRING, detail STRING"
)
MIDPOINTS_DDL = "segment_id BIGINT, mid_lon_deg DOUBLE, mid_lat_deg DOUBLE"


def normalize_path(uri: str) -> str:
    """Spark's file URI (`file:/a/b%20c`) -> the local path as listed (`/a/b c`); remote URIs unchanged."""
    if uri.startswith("file:"):
        path = unquote(uri[len("file:"):])
        while path.startswith("//"):
            path = path[1:]
        return path
    return uri


def read_text_lines(spark: SparkSession, paths: list[str]) -> tuple[DataFrame, DataFrame]:
    """Every line of the given text files (gzip too) with its file and 1-based line number, split-parallel.

    Line numbers come from each file block's first row id plus the line counts of the file's earlier blocks.
    Returns (lines, cached): `cached` is the persisted raw scan (row ids must not be recomputed); unpersist it
    once the lines have been consumed.
    """
    raw = (
        spark.read.text(paths)
        .select(
            F.col("value").alias("line"),
            F.col("_metadata.file_path").alias("file_uri"),
            F.col("_metadata.file_block_start").alias("block_start"),
            F.monotonically_increasing_id().alias("row_id"),
        )
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    blocks = raw.groupBy("file_uri", "block_start").agg(F.min("row_id").alias("first_id"), F.count("*").alias("n"))
    rows = sorted(blocks.collect(), key=lambda r: (r["file_uri"], r["block_start"]))
    offsets, running, current = [], 0, None
    for r in rows:
        if r["file_uri"] != current:
            current, running = r["file_uri"], 0
        offsets.append((r["file_uri"], int(r["block_start"]), int(r["first_id"]), running))
        running += int(r["n"])
    off_df = spark.createDataFrame(offsets, "file_uri STRING, block_start BIGINT, first_id BIGINT, offset BIGINT")
    return raw.join(F.broadcast(off_df), ["file_uri", "block_start"]).select(
        F.col("file_uri").alias("source_file"),
        (F.col("offset") + F.col("row_id") - F.col("first_id") + 1).alias("source_row"),
        "line",
    ), raw


def parse_text_lines(lines: DataFrame, files: list[InputFile]) -> DataFrame:
    """Lines of CSV/JSONL files -> parsed records (PARSED_DDL); CSV header lines (row 1) are not records."""
    spec = {f.path: (f.format, list(f.header)) for f in files}

    def parse(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            batch = batch.assign(source_file=batch["source_file"].map(normalize_path))
            for path, group in batch.groupby("source_file", sort=False):
                fmt, header = spec[path]
                if fmt == "csv":
                    group = group[group["source_row"] != 1]
                    rec = kernel.parse_csv_lines(group["line"].tolist(), header, path, group["source_row"].tolist())
                else:
                    rec = kernel.parse_jsonl_lines(group["line"].tolist(), path, group["source_row"].tolist())
                if len(rec):
                    yield _conform_parsed(kernel.validate_records(rec))

    return lines.mapInPandas(parse, PARSED_DDL)


def _conform_parsed(df: pd.DataFrame) -> pd.DataFrame:
    df = df[list(kernel.PARSED_COLUMNS)].copy()
    df["timestamp_utc"] = df["timestamp_utc"].astype("datetime64[us, UTC]")
    return df


def parsed_from_records(spark: SparkSession, records: pd.DataFrame) -> DataFrame:
    """Record frame parsed on the driver (Parquet/GPX/trips-json) -> parsed records (PARSED_DDL)."""
    if not len(records):
        return spark.createDataFrame([], PARSED_DDL)
    return spark.createDataFrame(_conform_parsed(kernel.validate_records(records)), PARSED_DDL)


def link_midpoints(road_segments: DataFrame) -> DataFrame:
    """road_segments -> (segment_id, mid_lon_deg, mid_lat_deg): the point at half of each segment's length."""

    def mids(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for b in batches:
            yield kernel.segment_midpoints(b["segment_id"], b["geom_lon_deg"], b["geom_lat_deg"])

    return road_segments.select("segment_id", "geom_lon_deg", "geom_lat_deg").mapInPandas(mids, MIDPOINTS_DDL)


def fill_link_coordinates(parsed: DataFrame, midpoints: DataFrame) -> DataFrame:
    """Pre-matched records: link id must be a road_segments segment_id (else `unknown_link`); fill absent
    coordinates with the segment midpoint."""
    mids = midpoints.withColumnRenamed("segment_id", "prematched_segment_id")
    j = parsed.join(F.broadcast(mids), "prematched_segment_id", "left")
    unknown = F.col("reason").isNull() & F.col("prematched_segment_id").isNotNull() & F.col("mid_lon_deg").isNull()
    missing_xy = F.col("lon_deg").isNull() | F.col("lat_deg").isNull()
    cols = {
        "reason": F.when(unknown, F.lit("unknown_link")).otherwise(F.col("reason")),
        "detail": F.when(unknown, F.concat(F.lit("link id "), F.col("prematched_segment_id").cast("string"),
                                           F.lit(" not in road_segments"))).otherwise(F.col("detail")),
        "lon_deg": F.when(missing_xy, F.col("mid_lon_deg")).otherwise(F.col("lon_deg")),
        "lat_deg": F.when(missing_xy, F.col("mid_lat_deg")).otherwise(F.col("lat_deg")),
    }
    names = [c.split()[0] for c in PARSED_DDL.split(", ")]
    return j.select(*[cols[c].alias(c) if c in cols else F.col(c) for c in names])


def split_into_pieces(
    parsed: DataFrame,
    h3_res: int,
    max_gap_s: float = MAX_GAP_S,
    context_fixes: int = CONTEXT_FIXES,
    spike_kph: float = SPIKE_KPH,
    num_partitions: int | None = None,
) -> DataFrame:
    """Parsed records -> trace rows (TRACE_OUT_DDL): per-trace dedupe, spikes and border cutting for valid
    records (grouped by trace_id, in `num_partitions` shuffle partitions when given), parse-time rejects passed
    through with their fix date as dt."""

    def per_trace(group: pd.DataFrame) -> pd.DataFrame:
        return kernel.process_trace(
            group, h3_res, max_gap_s=max_gap_s, context_fixes=context_fixes, spike_kph=spike_kph
        )

    def rejects(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for b in batches:
            yield kernel.rejects_from_parsed(b)

    valid = parsed.where(F.col("reason").isNull())
    if num_partitions:
        valid = valid.repartition(num_partitions, "trace_id")
    good = valid.groupBy("trace_id").applyInPandas(per_trace, TRACE_OUT_DDL)
    bad = parsed.where(F.col("reason").isNotNull()).mapInPandas(rejects, TRACE_OUT_DDL)
    return good.unionByName(bad)
