"""Spark transforms of ingest (DataFrame -> DataFrame); the per-trace logic lives in `kernel` (pure numpy/pandas).

Grain: `lines` = one input text line; `records` = one CSV/JSONL record with its fields as text; `parsed` = one
input record, validated (reason set = rejected); `trace_rows` = one probes row (owned or context fix) or one
rejected record with its reason. Text parsing and field validation run as Spark SQL expressions (no Python);
only the sequential per-trace step (dedupe, spikes, border cutting) runs in Python, over Arrow batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import reduce
from urllib.parse import unquote

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from schemas.probes import CONTEXT_FIXES, MAX_GAP_S
from schemas.rejected_probes import SPIKE_KPH
from speedprofile.grouped import whole_groups
from speedprofile.ingest import kernel
from speedprofile.ingest.formats import InputFile

LINES_DDL = "source_file STRING, source_row BIGINT, line STRING"
FIELDS = (*kernel.REQUIRED_FIELDS, *kernel.OPTIONAL_FIELDS)
RECORDS_DDL = (
    "source_file STRING, source_row BIGINT, raw STRING, "
    + ", ".join(f"{c} STRING" for c in FIELDS) + ", reason STRING, detail STRING"
)
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
TRACE_CHUNK_ROWS = 100_000  # rows per call of the per-trace kernel (whole traces; bounds a worker's memory)
MIDPOINTS_DDL = "segment_id BIGINT, mid_lon_deg DOUBLE, mid_lat_deg DOUBLE"
_PARSED_NAMES = [c.split()[0] for c in PARSED_DDL.split(", ")]
# A UTC offset (or Z) ends an ISO-8601 time whose instant is known; same rule as kernel._OFFSET_RE.
_OFFSET_SQL = "(?:[Zz]|[+-][0-9][0-9](?::?[0-9][0-9])?)$"
_MIN_S = kernel.MIN_TIME_UTC.timestamp()
_MAX_S = kernel.MAX_TIME_UTC.timestamp()


def normalize_path(uri: str) -> str:
    """Spark's file URI (`file:/a/b%20c`) -> the local path as listed (`/a/b c`); remote URIs unchanged."""
    if uri.startswith("file:"):
        path = unquote(uri[len("file:"):])
        while path.startswith("//"):
            path = path[1:]
        return path
    return uri


def read_text_lines(spark: SparkSession, files: list[InputFile]) -> DataFrame:
    """Every line of the given text files (gzip too) with its listed file path and 1-based line number.

    Split-parallel: a first, cheap native pass counts the lines of every file block; the line number is the
    block's offset in its file plus the row's position in the block (`monotonically_increasing_id` is stable
    between the two scans of the same files: same splits, same order).
    """
    paths = [f.path for f in files]

    def scan() -> DataFrame:
        return spark.read.text(paths).select(
            # bytes that are not UTF-8 become U+FFFD: Parquet and Arrow strings must be valid UTF-8
            F.make_valid_utf8(F.col("value")).alias("line"),
            F.col("_metadata.file_path").alias("file_uri"),
            F.col("_metadata.file_block_start").alias("block_start"),
            F.monotonically_increasing_id().alias("row_id"),
        )

    blocks = scan().groupBy("file_uri", "block_start").agg(F.min("row_id").alias("first_id"), F.count("*").alias("n"))
    rows = sorted(blocks.collect(), key=lambda r: (r["file_uri"], r["block_start"]))
    offsets, running, current = [], 0, None
    for r in rows:
        if r["file_uri"] != current:
            current, running = r["file_uri"], 0
        offsets.append((r["file_uri"], int(r["block_start"]), int(r["first_id"]) - running))
        running += int(r["n"])
    if not offsets:
        return spark.createDataFrame([], LINES_DDL)
    off_df = spark.createDataFrame(offsets, "file_uri STRING, block_start BIGINT, base_id BIGINT")
    # Spark spells local files as URIs (`file:/a/b%20c`): map them back to the paths as listed.
    pairs = [F.lit(x) for uri in sorted({r["file_uri"] for r in rows}) for x in (uri, normalize_path(uri))]
    return scan().join(F.broadcast(off_df), ["file_uri", "block_start"]).select(
        F.coalesce(F.create_map(*pairs)[F.col("file_uri")], F.col("file_uri")).alias("source_file"),
        (F.col("row_id") - F.col("base_id") + 1).alias("source_row"),
        "line",
    )


def _blank(line: Column) -> Column:
    return F.trim(line) == ""


def csv_records(lines: DataFrame, files: list[InputFile]) -> DataFrame:
    """Lines of CSV files -> records (RECORDS_DDL), one per line after the header; a line with another field
    count than its header (or a blank line) is `unparsable_line`. Files are parsed by header, fields by name."""
    by_header: dict[tuple[str, ...], list[str]] = {}
    for f in files:
        by_header.setdefault(tuple(f.header), []).append(f.path)
    frames = []
    for header, paths in by_header.items():
        width = len(header)
        schema = ", ".join(f"`c{i}` STRING" for i in range(width)) + ", `_corrupt` STRING"
        opts = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt", "escape": '"'}
        part = (lines.where(F.col("source_file").isin(paths) & (F.col("source_row") != 1))
                .select("*", F.from_csv(F.col("line"), schema, opts).alias("rec")))
        rec = F.col("rec")
        index = {name.strip(): i for i, name in enumerate(header)}
        blank = _blank(F.col("line"))
        bad = blank | rec["_corrupt"].isNotNull()
        n_fields = F.size(F.split(F.col("line"), ",", -1)).cast("string")
        detail = (F.when(blank, F.lit("blank line"))
                  .when(F.col("line").contains('"'), F.lit(f"malformed quoted field or field count, header has {width}"))
                  .otherwise(F.concat(n_fields, F.lit(f" fields, header has {width}"))))
        cols = []
        for name in FIELDS:
            i = index.get(name)
            v = F.lit(None).cast("string") if i is None else rec[f"c{i}"]
            if name == "trace_id":
                v = F.coalesce(v, F.lit(""))  # an empty CSV field is present but blank (Spark reads it as null)
            cols.append(F.when(~bad, v).alias(name))
        frames.append(part.select(
            "source_file", "source_row", F.col("line").alias("raw"), *cols,
            F.when(bad, F.lit("unparsable_line")).alias("reason"), F.when(bad, detail).alias("detail"),
        ))
    return reduce(DataFrame.unionByName, frames)


def jsonl_records(lines: DataFrame, files: list[InputFile]) -> DataFrame:
    """Lines of JSONL files -> records (RECORDS_DDL); anything but one JSON object per line is `unparsable_line`.
    Numbers become their JSON text, so they may also be given as strings."""
    schema = ", ".join(f"`{c}` STRING" for c in FIELDS) + ", `_corrupt` STRING"
    parsed = F.from_json(F.col("line"), schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"})
    rec = F.col("rec")
    text = F.trim(F.col("line"))
    blank = text == ""
    bad = blank | ~text.startswith("{") | ~text.endswith("}") | rec["_corrupt"].isNotNull() | rec.isNull()
    part = lines.where(F.col("source_file").isin([f.path for f in files])).select("*", parsed.alias("rec"))
    return part.select(
        "source_file", "source_row", F.col("line").alias("raw"),
        *[F.when(~bad, rec[c]).alias(c) for c in FIELDS],
        F.when(bad, F.lit("unparsable_line")).alias("reason"),
        F.when(bad, F.when(blank, F.lit("blank line")).otherwise(F.lit("invalid JSON or not a JSON object")))
        .alias("detail"),
    )


def _finite(x: Column) -> Column:
    return x.isNotNull() & ~F.isnan(x) & (F.abs(x) != F.lit(float("inf")))


def _number(text: Column) -> Column:
    # Spark turns a string into a double through Java's parser, which throws on text that is not a number, and an
    # exception per row costs about 1.5 CPU-µs (an ISO time tried as epoch seconds on every row of a file). Text
    # that cannot be a number (empty, or with a ':' as a time has) is not tried: it is null either way.
    t = F.trim(text)
    return F.when((t != "") & ~t.contains(":"), t.try_cast("double"))


def validate_records(records: DataFrame, max_time_utc: pd.Timestamp | None = None) -> DataFrame:
    """Records with text fields -> parsed records (PARSED_DDL): typed values and the reason of every bad one.

    Spark SQL version of `kernel.validate_records` (same checks, same order, first failure wins):
    unparsable_line (from the parser), missing_field, empty_trace_id, nan_coordinate, coordinate_out_of_range,
    unparsable_time / implausible_time, future_time (later than `max_time_utc`, when given). Times: ISO-8601 with
    a UTC offset or Z, epoch seconds (< 1e11) or ms.
    Computed in three projections so that each costly value (number parsing, regexes, time parsing) is
    evaluated once per row and then referenced by the checks.
    """
    typed = records.select(
        "source_file", "source_row", F.substring("raw", 1, kernel.RAW_MAX_CHARS).alias("raw"), "reason", "detail",
        "trace_id", "timestamp", "lon", "lat", F.trim("timestamp").alias("ts_text"),
        _number(F.col("lon")).alias("lon_deg"), _number(F.col("lat")).alias("lat_deg"),
        _number(F.col("timestamp")).alias("t_num"),
        *[_number(F.col(c)).alias(c) for c in kernel.OPTIONAL_FIELDS],
    )
    # Time: a finite number is epoch seconds (< 1e11) or milliseconds; otherwise ISO-8601 with an offset.
    numeric = _finite(F.col("t_num"))
    text = F.col("ts_text")
    # Spells a lower-case z and an hours-only offset as the cast expects; a time ending in Z (the common case) is
    # cast as it is, which is three times cheaper than casting the regexes' result.
    norm = F.when(text.endswith("Z"), text).otherwise(
        F.regexp_replace(F.regexp_replace(text, "z$", "Z"), "([+-][0-9][0-9])$", "$1:00"))
    timed = typed.select(
        *[c for c in typed.columns if c != "t_num"],
        numeric.alias("numeric"),
        F.when(F.abs("t_num") < kernel.EPOCH_MS_THRESHOLD, F.col("t_num")).otherwise(F.col("t_num") / 1000.0)
        .alias("secs"),
        (~numeric & text.rlike(_OFFSET_SQL)).alias("has_off"),
    ).select("*", F.when(F.col("has_off"), norm.try_cast("timestamp")).alias("iso"))
    tid, ts_text, lon_t, lat_t = (F.col(c) for c in kernel.REQUIRED_FIELDS)
    lon, lat, secs, iso = F.col("lon_deg"), F.col("lat_deg"), F.col("secs"), F.col("iso")
    num_ok = F.col("numeric") & (secs >= _MIN_S) & (secs < _MAX_S)
    iso_ok = iso.isNotNull() & (iso >= F.lit(kernel.MIN_TIME_UTC.to_pydatetime())) & (
        iso < F.lit(kernel.MAX_TIME_UTC.to_pydatetime()))
    ts = F.when(num_ok, F.timestamp_micros(F.bround(secs * 1e6).cast("long"))).when(iso_ok, iso)

    def missing(c: Column) -> Column:
        return c.isNull() | (F.trim(c) == "")

    checks: list[tuple[Column, str, Column]] = [
        (F.col("reason").isNotNull(), "", F.col("detail")),
        (tid.isNull(), "missing_field", F.lit("trace_id is missing")),
        (missing(ts_text), "missing_field", F.lit("timestamp is missing")),
        (missing(lon_t), "missing_field", F.lit("lon is missing")),
        (missing(lat_t), "missing_field", F.lit("lat is missing")),
        (F.trim(tid) == "", "empty_trace_id", F.lit("trace_id is blank")),
        (~_finite(lon) | ~_finite(lat), "nan_coordinate",
         F.concat(F.lit("lon="), lon_t, F.lit(" lat="), lat_t, F.lit(" not finite numbers"))),
        ((F.abs(lat) > 90) | (F.abs(lon) > 180) | ((lat == 0) & (lon == 0)), "coordinate_out_of_range",
         F.concat(F.lit("lon="), lon.cast("string"), F.lit(" lat="), lat.cast("string"))),
        (F.col("numeric") & ~num_ok, "implausible_time",
         F.concat(F.lit("epoch "), ts_text, F.lit(" is outside [2000, 2100)"))),
        (iso.isNotNull() & ~iso_ok, "implausible_time",
         F.concat(F.lit("time "), ts_text, F.lit(" is outside [2000, 2100)"))),
        (F.col("has_off") & iso.isNull(), "unparsable_time",
         F.concat(F.lit("timestamp '"), ts_text, F.lit("' is not valid ISO-8601"))),
        (~num_ok & ~iso_ok, "unparsable_time",
         F.concat(F.lit("timestamp '"), ts_text, F.lit("' is not ISO-8601 with a UTC offset nor epoch s/ms"))),
    ]
    if max_time_utc is not None:
        limit = pd.Timestamp(max_time_utc)
        limit = limit.tz_convert("UTC") if limit.tzinfo else limit.tz_localize("UTC")
        shown = kernel.future_detail(limit, limit).split(" is later than ")[1]
        checks.append((ts > F.lit(limit.to_pydatetime()), "future_time", F.concat(
            F.lit("time "), F.date_format(ts, "yyyy-MM-dd'T'HH:mm:ss'Z'"), F.lit(f" is later than {shown}"))))
    reason: Column = F.lit(None).cast("string")
    detail: Column = F.lit(None).cast("string")
    for cond, why, text_ in reversed(checks):
        reason = F.when(cond, F.col("reason") if not why else F.lit(why)).otherwise(reason)
        detail = F.when(cond, text_).otherwise(detail)
    out = timed.select(
        "source_file", "source_row", "raw", F.trim(tid).alias("trace_id"), ts.alias("timestamp_utc"),
        "lon_deg", "lat_deg", *[F.when(_finite(F.col(c)), F.col(c)).alias(c) for c in kernel.OPTIONAL_FIELDS],
        F.lit(None).cast("bigint").alias("prematched_segment_id"), reason.alias("reason"), detail.alias("detail"),
    )
    # The raw line is kept for parse-time rejects only: valid records do not carry it through the shuffle. (A
    # projection of its own, so the reason expression is not evaluated twice.)
    return out.withColumn("raw", F.when(F.col("reason").isNotNull(), F.col("raw")))


def _conform_parsed(df: pd.DataFrame) -> pd.DataFrame:
    df = df[list(kernel.PARSED_COLUMNS)].copy()
    df["timestamp_utc"] = df["timestamp_utc"].astype("datetime64[us, UTC]")
    return df


def parse_files(spark: SparkSession, files: list[InputFile], max_time_utc: pd.Timestamp | None = None) -> DataFrame:
    """Parquet / GPX / trips-json files -> parsed records (PARSED_DDL), each file parsed and checked by the pandas
    kernel in an executor task, streamed batch by batch (nothing read on the driver).

    Local files are opened by path; remote ones (s3a://) arrive through Spark's binaryFile source. The files were
    scanned before (`formats.scan_file`), so their parsers read them to the end.
    """
    from speedprofile.ingest import formats

    def parse(path: str, fmt: str, source) -> Iterator[pd.DataFrame]:
        for rec in formats.FILE_PARSERS[fmt](path, source):
            if len(rec):
                yield _conform_parsed(kernel.validate_records(rec, max_time_utc))

    frames = []
    local = [f for f in files if "://" not in f.path or f.path.startswith("file://")]
    remote = {f.path: f.format for f in files if f not in local}
    if local:
        def run_local(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for b in batches:
                for path, fmt in zip(b["path"], b["format"], strict=True):
                    if fmt == "parquet":
                        yield from parse(path, fmt, path)
                        continue
                    with formats.open_local(path) as fh:
                        yield from parse(path, fmt, fh)

        todo = spark.createDataFrame([(f.path, f.format) for f in local], "path STRING, format STRING")
        frames.append(todo.repartition(len(local)).mapInPandas(run_local, PARSED_DDL))
    if remote:
        import gzip
        import io

        def run_remote(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for b in batches:
                for uri, content in zip(b["path"], b["content"], strict=True):
                    path = next(p for p in remote if p == uri or uri.endswith(p.split("://", 1)[-1]))
                    data = bytes(content)
                    src = gzip.GzipFile(fileobj=io.BytesIO(data)) if data[:2] == b"\x1f\x8b" else io.BytesIO(data)
                    yield from parse(path, remote[path], src)

        blobs = spark.read.format("binaryFile").load(list(remote)).select("path", "content")
        frames.append(blobs.mapInPandas(run_remote, PARSED_DDL))
    if not frames:
        return spark.createDataFrame([], PARSED_DDL)
    return reduce(DataFrame.unionByName, frames)


def link_midpoints(road_segments: DataFrame) -> DataFrame:
    """road_segments -> (segment_id, mid_lon_deg, mid_lat_deg): the point at half of each segment's length."""

    def mids(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
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
    return j.select(*[cols[c].alias(c) if c in cols else F.col(c) for c in _PARSED_NAMES])


def split_into_pieces(
    parsed: DataFrame,
    h3_res: int,
    max_gap_s: float = MAX_GAP_S,
    context_fixes: int = CONTEXT_FIXES,
    spike_kph: float = SPIKE_KPH,
    num_partitions: int | None = None,
    network: np.ndarray | None = None,
    chunk_rows: int = TRACE_CHUNK_ROWS,
) -> DataFrame:
    """Parsed records -> trace rows (TRACE_OUT_DDL): per-trace dedupe, spikes and border cutting of the valid
    records, rejects passed through with their fix date as dt; valid fixes outside `network` (sorted uint64 H3
    cells, `kernel.network_area`) are rejected as `outside_network`.

    One shuffle by trace_id (into `num_partitions` partitions when given), sorted by trace, time and source
    order; each partition then streams through `kernel.trace_rows_arrow` in chunks of about `chunk_rows` rows
    holding whole traces (`grouped.whole_groups`; a trace must fit in a worker's memory).
    """
    import pyarrow as pa

    rules = {"max_gap_s": max_gap_s, "context_fixes": context_fixes, "spike_kph": spike_kph}
    schema = kernel.trace_out_arrow_schema()

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        # whole traces only: the rows of the last trace of a chunk may continue in the next batch
        for table in whole_groups(batches, ("trace_id",), chunk_rows):
            yield from kernel.trace_rows_arrow(table, h3_res, network, **rules).cast(schema).to_batches()

    shuffled = (parsed.repartition(num_partitions, "trace_id") if num_partitions
                else parsed.repartition("trace_id"))
    return (shuffled.sortWithinPartitions("trace_id", "timestamp_utc", "source_file", "source_row")
            .mapInArrow(run, TRACE_OUT_DDL))
