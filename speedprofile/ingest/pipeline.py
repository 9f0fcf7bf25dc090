"""The ingest job: scan input files one by one, parse, clean and cut traces, write `probes` / `rejected_probes`.

Per file: each input file is scanned as a stream (`formats.scan_file`: hash, limits, format); a file that fails
is refused as a whole into `rejected_files` with a reason, and the other files go on. The run fails only when
no file could be ingested.

Idempotency, two levels. The unit of replacement is one input file, keyed by the SHA-256 of its bytes (`src` =
first 16 hex digits, a column of `probes` and `rejected_probes`): one ingest replaces the rows of its files' `src`
values in one Iceberg commit per table (speedprofile.tables), so re-ingesting the same bytes replaces what they
wrote before, and a run killed before its commits leaves both tables as they were. Across files, the unit is the fix: a fix whose (trace_id, timestamp_utc, lon, lat) is already
in `probes` (written from any other file) is rejected as `already_ingested`; one with the same trace and time
but another position (a correction) as `conflicting_fix`: the fix delivered first stays.
Row accounting per dt: `<warehouse>/_ingest/counts/dt=<D>/<src>.json` per file, summed into
`_metrics/ingest_probes/dt=<D>/all.json` (dt=unknown for rejects whose time could not be read).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import reduce
from typing import BinaryIO, cast

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from schemas import PROBES, REJECTED_FILES, REJECTED_PROBES
from schemas.rejected_probes import FUTURE_SKEW_S, REASONS
from speedprofile import spark as sp
from speedprofile import storage, tables
from speedprofile import warehouse as wh
from speedprofile.errors import UserError
from speedprofile.ingest import formats, kernel, transforms
from speedprofile.ingest.formats import FileRejected, IngestLimits, InputFile

STAGE = "ingest_probes"
BYTES_PER_TRACE_PARTITION = 128 << 20
ARROW_BATCH_ROWS = 100_000  # rows per Arrow batch between the JVM and the per-trace kernel
UNKNOWN_DT = "unknown"  # metrics label for rejected rows without a readable time (Hive default dt partition)
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


@dataclass(frozen=True)
class RejectedFile:
    """One input file refused as a whole (a `rejected_files` row)."""

    path: str
    reason: str
    detail: str
    size_bytes: int | None = None

    @property
    def key(self) -> str:
        """File name key in rejected_files: the same path refused again replaces its row."""
        return hashlib.sha256(self.path.encode()).hexdigest()[:16]

    def line(self) -> str:
        return f"{self.path}: {self.detail} ({self.reason}; quarantined in rejected_files)"


@dataclass
class IngestResult:
    """Row accounting of one ingest run: rows_in = rows_kept + sum(rejected.values())."""

    files: int
    rows_in: int
    rows_kept: int
    context_rows: int
    rejected: dict[str, int]
    by_dt: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    ignored_files: list[str] = field(default_factory=list)
    duplicate_files: list[str] = field(default_factory=list)
    rejected_files: list[RejectedFile] = field(default_factory=list)

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    def summary_lines(self) -> list[str]:
        """One summary line, then one line per rejection reason with a non-zero count and per refused file."""
        lines = [
            f"ingested {self.files} file(s): {self.rows_in} rows in, {self.rows_kept} kept, "
            f"{self.rows_rejected} rejected, {self.context_rows} context copies; "
            f"{self.seconds:.1f} s, {self.rows_per_second:,.0f} rows/s"
        ]
        lines += [f"  rejected {reason}: {n}" for reason, n in self.rejected.items() if n]
        lines += [f"  refused file {r.line()}" for r in self.rejected_files]
        if self.ignored_files:
            lines.append(f"  ignored {len(self.ignored_files)} file(s) with unknown extensions in directories")
        if self.duplicate_files:
            lines.append(f"  skipped {len(self.duplicate_files)} file(s) with the same content as another input")
        return lines


def landing_path(warehouse: str, day: str) -> str:
    """Folder Airflow's ingest task reads for one day: `<warehouse>/landing/dt=<day>/`."""
    return wh.join(warehouse, "landing", f"dt={day}")


def partition_list(spark: SparkSession | None, warehouse: str) -> dict:
    """The warehouse's partition list (road_segments/_partitions.json): {"h3_res": int, "partitions": [...]}."""
    path = wh.partitions_file(warehouse)
    try:
        if wh.is_remote(path):
            doc = json.loads(storage.read_text(path))
        else:
            doc = wh.read_partitions(warehouse)
        int(doc["h3_res"])
        [p["cell"] for p in doc.get("partitions", [])]
        return doc
    except FileNotFoundError:
        raise UserError(f"no {path}: build the road network first (speedprofile network build)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a valid partition list ({exc})") from exc


def h3_resolution(spark: SparkSession | None, warehouse: str) -> int:
    """H3 resolution of the warehouse partitions (road_segments/_partitions.json)."""
    return int(partition_list(spark, warehouse)["h3_res"])


def list_inputs(spark: SparkSession | None, paths: list[str]) -> tuple[list[str], list[str]]:
    """Files named or found (recursively) under the given paths -> (files, ignored files).

    In directories, hidden and `_`-prefixed entries are skipped and only known extensions are taken; files
    named explicitly are always taken (their format is sniffed when the extension does not tell it).
    """
    files: list[str] = []
    ignored: list[str] = []
    for p in paths:
        if wh.is_remote(p):
            if storage.is_file(p):
                files.append(p)
                continue
            found = storage.list_files(p)
            if not found and not storage.exists(p):
                raise UserError(f"{p}: no such file or directory")
            base = p.rstrip("/")
            candidates = [f for f in found
                          if not any(formats.is_hidden(part) for part in f[len(base):].split("/") if part)]
        else:
            local = p.removeprefix("file://")
            if os.path.isfile(local):
                files.append(os.path.abspath(local))
                continue
            if not os.path.isdir(local):
                raise UserError(f"{p}: no such file or directory")
            candidates = []
            for root, dirs, names in os.walk(local):
                dirs[:] = sorted(d for d in dirs if not formats.is_hidden(d))
                candidates += [os.path.abspath(os.path.join(root, n)) for n in sorted(names) if not formats.is_hidden(n)]
        for f in candidates:
            (files if formats.known_extension(f) else ignored).append(f)
    seen: set[str] = set()
    unique = [f for f in files if not (f in seen or seen.add(f))]  # type: ignore[func-returns-value]
    if not unique:
        raise UserError(f"no input files found under {', '.join(paths)}")
    return unique, ignored


def describe_inputs(
    spark: SparkSession | None, paths: list[str], fmt: str = "auto", limits: IngestLimits | None = None,
) -> tuple[list[InputFile], list[RejectedFile]]:
    """Scan every file once, streaming (format, limits, content hash) -> (accepted files, refused files)."""
    limits = limits or IngestLimits()
    files: list[InputFile] = []
    refused: list[RejectedFile] = []
    for p in paths:
        size: int | None = None
        stream: BinaryIO
        try:
            if wh.is_remote(p):
                size = storage.size(p)
                stream = cast(BinaryIO, storage.open_input(p))
            else:
                local = p.removeprefix("file://")
                size = os.path.getsize(local)
                stream = open(local, "rb")
            with stream:
                found = formats.scan_file(p, stream, size, limits, fmt)
        except FileRejected as exc:
            refused.append(RejectedFile(p, exc.reason, exc.detail, size))
            continue
        except OSError as exc:
            refused.append(RejectedFile(p, "unreadable_file", f"cannot read file ({exc.strerror or exc})", size))
            continue
        files.append(InputFile(path=p, format=found.format, header=found.header, sha=found.sha256[:16],
                               size=found.size_bytes, data_bytes=found.data_bytes))
    return files, refused


def parse_inputs(spark: SparkSession, files: list[InputFile], max_time_utc: pd.Timestamp | None = None) -> DataFrame:
    """All input files -> one parsed frame (PARSED_DDL).

    CSV and JSONL are read and validated by Spark (native line reader, `from_csv` / `from_json`, SQL checks);
    Parquet, GPX and trips-json are parsed file by file in executor tasks and validated by the pandas kernel.
    """
    frames: list[DataFrame] = []
    text = [f for f in files if f.format in formats.TEXT_FORMATS]
    if text:
        lines = transforms.read_text_lines(spark, text)
        records = []
        csv = [f for f in text if f.format == "csv"]
        jsonl = [f for f in text if f.format == "jsonl"]
        if csv:
            records.append(transforms.csv_records(lines, csv))
        if jsonl:
            records.append(transforms.jsonl_records(lines, jsonl))
        frames.append(transforms.validate_records(reduce(DataFrame.unionByName, records), max_time_utc))
    others = [f for f in files if f.format not in formats.TEXT_FORMATS]
    if others:
        frames.append(transforms.parse_files(spark, others, max_time_utc))
    if not frames:
        return spark.createDataFrame([], transforms.PARSED_DDL)
    return reduce(DataFrame.unionByName, frames)


def _with_src(df: DataFrame, files: list[InputFile]) -> DataFrame:
    """Add `src` (content hash prefix of the row's input file) by a broadcast join on source_file."""
    spark = df.sparkSession
    srcs = spark.createDataFrame([(f.path, f.sha) for f in files], "source_file STRING, src STRING")
    return df.join(F.broadcast(srcs), "source_file", "left")


def _count_rows(rows: DataFrame) -> tuple[dict[str, dict[str, dict]], dict[tuple, int]]:
    """Counts per src and dt (rows_in, kept, context, rejected per reason, kept per partition), and the rows each
    `probes` folder and source gets: {(dt, partition, src): rows, context copies included}."""
    agg = rows.groupBy("src", "dt", "partition", "reason", "is_context").count().collect()
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    folders: dict[tuple, int] = defaultdict(int)
    for r in agg:
        dt = str(r["dt"]) if r["dt"] is not None else UNKNOWN_DT
        c = out[r["src"]].setdefault(dt, _empty_counts())
        n = int(r["count"])
        if r["reason"] is not None:
            c["rejected"][r["reason"]] += n
            c["rows_rejected"] += n
            c["rows_in"] += n
        elif r["is_context"]:
            c["context_rows"] += n
            folders[(r["dt"], r["partition"], r["src"])] += n
        else:
            folders[(r["dt"], r["partition"], r["src"])] += n
            c["rows_kept"] += n
            c["rows_in"] += n
            c["kept_by_partition"][r["partition"]] = c["kept_by_partition"].get(r["partition"], 0) + n
    return out, dict(folders)


def pack_folders(sizes: dict[tuple, int], n_tasks: int) -> dict[tuple, int]:
    """Folder key -> task (0..n_tasks-1): the folders packed into n_tasks bins of about equal rows (largest first,
    each into the emptiest bin; no bin exceeds the mean by more than one folder)."""
    import heapq

    heap = [(0, b) for b in range(n_tasks)]
    packed = {}
    for key, n in sorted(sizes.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        load, b = heapq.heappop(heap)
        packed[key] = b
        heapq.heappush(heap, (load + n, b))
    return packed


def balanced_bins(spark: SparkSession, packed: dict[tuple, int], n_tasks: int) -> DataFrame:
    """(dt, partition, src, _bin) for the write of `probes`: each folder in the task `pack_folders` gave it.

    `_bin` is a number whose Spark hash (Murmur3, the hash of `repartition`) falls on its bin, so
    `repartition(n_tasks, "_bin")` puts each bin in its own task. Hashing the folder keys themselves instead left
    some of a few dozen folders' tasks with several times the rows of others; sampled ranges
    (`repartitionByRange`) balanced them but read the cached rows once more to sample them (27 s at 85 M)."""
    rows = [(*key, b) for key, b in packed.items()]
    folders = spark.createDataFrame(rows, "dt DATE, partition STRING, src STRING, _task INT")
    # the smallest id hashing onto each task (64 ids per task: every task gets one), computed within the write's plan
    numbers = spark.range(0, 64 * n_tasks).groupBy(F.pmod(F.hash("id"), F.lit(n_tasks)).alias("_task")).agg(
        F.min("id").alias("_bin"))
    return folders.join(numbers, "_task").drop("_task")


def _empty_counts() -> dict:
    return {"rows_in": 0, "rows_kept": 0, "rows_rejected": 0, "context_rows": 0,
            "rejected": dict.fromkeys(REASONS, 0), "kept_by_partition": {}}


def _add_counts(total: dict, c: dict) -> None:
    for k in ("rows_in", "rows_kept", "rows_rejected", "context_rows"):
        total[k] += c[k]
    for k, v in c["rejected"].items():
        total["rejected"][k] = total["rejected"].get(k, 0) + v
    for k, v in c["kept_by_partition"].items():
        total["kept_by_partition"][k] = total["kept_by_partition"].get(k, 0) + v


def _write_dt_metrics(spark: SparkSession, warehouse: str, dts: set[str]) -> None:
    """Sum the per-file counts of each dt into `_metrics/ingest_probes/dt=<D>/all.json`."""
    for dt in sorted(dts):
        folder = wh.join(warehouse, "_ingest", "counts", f"dt={dt}")
        total = _empty_counts()
        names = sorted(n for n in sp.list_dir(spark, folder) if n.endswith(".json"))
        for name in names:
            _add_counts(total, json.loads(sp.read_text(spark, wh.join(folder, name)))["counts"])
        total["files"] = len(names)
        sp.write_metrics(spark, warehouse, STAGE, dt, None, total)


def _waves_of(spark: SparkSession, total_bytes: int) -> int:
    """One task per BYTES_PER_TRACE_PARTITION of `total_bytes`, in whole waves over the cores."""
    return sp.whole_waves(spark, max(1, -(-total_bytes // BYTES_PER_TRACE_PARTITION)))


def _ingest_tasks(spark: SparkSession, files: list[InputFile]) -> int:
    """Tasks of the per-trace step and of the write of `probes`: one per BYTES_PER_TRACE_PARTITION of input, in
    whole waves over the cores (every core busy to the end). Not capped by spark.sql.shuffle.partitions: the
    step's result is cached, and a cached partition read back from disk is loaded whole into the JVM heap, so a
    large input needs more, not larger, partitions."""
    return _waves_of(spark, sum(max(f.data_bytes, f.size) for f in files))


def _split_bytes(spark: SparkSession, files: list[InputFile]) -> int:
    """Largest read split of the text inputs: at most BYTES_PER_TRACE_PARTITION, and small enough that the splits
    fill whole waves over the cores (3 splits of 128 MB on 2 cores would leave one core idle for a third of the
    parse; 4 of 96 MB do not)."""
    total = sum(f.size for f in files if f.format in formats.TEXT_FORMATS)
    return max(1 << 20, -(-total // _waves_of(spark, total)))


@dataclass
class Prepared:
    """Checked inputs of one run: partitions, files (unique content) and what was set aside or refused."""

    h3_res: int
    network: np.ndarray  # sorted uint64 H3 cells where fixes are kept (kernel.network_area)
    files: list[InputFile]
    ignored: list[str]
    duplicates: list[InputFile]
    refused: list[RejectedFile]


def prepare(
    spark: SparkSession | None, warehouse: str, paths: list[str], fmt: str = "auto",
    limits: IngestLimits | None = None,
) -> Prepared:
    """Check the warehouse and scan every input file before any Spark work (no session needed for local paths).

    Missing paths and a warehouse without a network are errors; a bad file is only refused (Prepared.refused).
    """
    doc = partition_list(spark, warehouse)
    listed, ignored = list_inputs(spark, paths)
    accepted, refused = describe_inputs(spark, listed, fmt, limits)
    files: list[InputFile] = []
    duplicates: list[InputFile] = []
    shas: set[str] = set()
    for f in accepted:
        (duplicates if f.sha in shas else files).append(f)
        shas.add(f.sha)
    network = kernel.network_area(p["cell"] for p in doc.get("partitions", []))
    return Prepared(int(doc["h3_res"]), network, files, ignored, duplicates, refused)


def record_refused(spark: SparkSession | None, warehouse: str, refused: list[RejectedFile],
                   accepted: list[InputFile], at: pd.Timestamp) -> None:
    """One `rejected_files` row per refused file, replacing an earlier refusal of the same path, and no row for
    paths that are accepted now: one commit."""
    import pyarrow as pa

    paths = sorted({r.path for r in refused} | {f.path for f in accepted})
    if not paths:
        return
    table = pa.table({
        "source_file": [r.path for r in refused], "reason": [r.reason for r in refused],
        "detail": [r.detail for r in refused], "size_bytes": [r.size_bytes for r in refused],
        "rejected_at_utc": pa.array([at.to_pydatetime()] * len(refused), pa.timestamp("us", tz="UTC")),
    }, schema=REJECTED_FILES.arrow_schema())
    tables.write_arrow(warehouse, REJECTED_FILES, table, [{"source_file": p} for p in paths])


def refused_error(refused: list[RejectedFile]) -> UserError:
    """The one-line error when no input file could be ingested."""
    if len(refused) == 1:
        return UserError(refused[0].line())
    return UserError(f"all {len(refused)} input files were refused (see rejected_files); first: {refused[0].line()}")


def _existing_fixes(spark: SparkSession, warehouse: str, dts: set[str], own: list[str]) -> DataFrame | None:
    """Owned fixes already in `probes` on the given days and the day before each (a piece keeps the date of its
    first fix), except those of the sources being replaced (`own` content keys); None if there are none."""
    days: set[str] = set()
    for d in dts:
        try:
            day = date.fromisoformat(d)
        except ValueError:
            continue
        days |= {str(day), str(day - timedelta(days=1))}
    if not days or not tables.has_rows(warehouse, PROBES, sorted(days), excluding={"src": own}):
        return None
    df = tables.read(spark, warehouse, PROBES, dates=sorted(days)).where(~F.col("is_context"))
    if own:
        df = df.where(~F.col("src").isin(own))
    return df.select("trace_id", "timestamp_utc", "lon_deg", "lat_deg", "piece")


def mark_already_ingested(rows: DataFrame, existing: DataFrame) -> DataFrame:
    """Trace rows checked against fixes already in `probes`: a fix at the same trace and time is rejected,
    as `already_ingested` when at the same position, else as `conflicting_fix` (the stored fix stays); its
    context copies are dropped. New pieces of a stored trace are numbered after its stored pieces."""
    keys = existing.groupBy("trace_id", "timestamp_utc").agg(
        F.first("lon_deg").alias("_x_lon"), F.first("lat_deg").alias("_x_lat"))
    pieces = existing.groupBy("trace_id").agg(F.max("piece").alias("_x_piece"))
    j = rows.join(keys, ["trace_id", "timestamp_utc"], "left").join(F.broadcast(pieces), "trace_id", "left")
    valid = F.col("reason").isNull()
    hit = valid & F.col("_x_lon").isNotNull()
    same = (F.col("lon_deg") == F.col("_x_lon")) & (F.col("lat_deg") == F.col("_x_lat"))
    owned_hit = hit & ~F.col("is_context")
    where = F.concat(F.lit(" in probes (lon="), F.col("_x_lon").cast("string"), F.lit(" lat="),
                     F.col("_x_lat").cast("string"), F.lit(")"))
    j = j.where(~(hit & F.col("is_context")))
    cols = {
        "reason": F.when(owned_hit & same, F.lit("already_ingested"))
        .when(owned_hit, F.lit("conflicting_fix")).otherwise(F.col("reason")),
        "detail": F.when(owned_hit & same, F.concat(F.lit("same fix already"), where))
        .when(owned_hit, F.concat(F.lit("same time, other position than the fix"), where))
        .otherwise(F.col("detail")),
        "piece": F.when(owned_hit, F.lit(None).cast("int"))
        .when(valid & F.col("_x_piece").isNotNull(), F.col("piece") + F.col("_x_piece") + 1)
        .otherwise(F.col("piece")),
        "is_context": F.when(owned_hit, F.lit(None).cast("boolean")).otherwise(F.col("is_context")),
        "partition": F.when(owned_hit, F.lit(None).cast("string")).otherwise(F.col("partition")),
        "dt": F.when(owned_hit, F.to_date("timestamp_utc")).otherwise(F.col("dt")),
    }
    return j.select(*[cols[c].alias(c) if c in cols else F.col(c) for c in rows.columns])


def ingest(
    spark: SparkSession, warehouse: str, paths: list[str], fmt: str = "auto", prepared: Prepared | None = None,
    *, limits: IngestLimits | None = None, now: pd.Timestamp | None = None, future_skew_s: float = FUTURE_SKEW_S,
) -> IngestResult:
    """Ingest the files named or found under `paths` into `probes` / `rejected_probes` of the warehouse.

    `now` is the run's clock (default: the wall clock at the start); fixes later than now + future_skew_s are
    rejected as `future_time`. Files that fail a check are refused into `rejected_files`; UserError when no file
    is left to ingest.
    """
    t0 = time.perf_counter()
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    now = now.tz_convert("UTC") if now.tzinfo else now.tz_localize("UTC")
    prep = prepared or prepare(spark, warehouse, paths, fmt, limits)
    files, ignored, duplicates = prep.files, prep.ignored, prep.duplicates
    record_refused(spark, warehouse, prep.refused, files + duplicates, now)
    if not files:
        raise refused_error(prep.refused)
    conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(ARROW_BATCH_ROWS),
            "spark.sql.files.maxPartitionBytes": str(_split_bytes(spark, files))}
    with sp.session_conf(spark, conf):
        counts = _run(spark, warehouse, prep, now + pd.Timedelta(seconds=future_skew_s))
    dts: set[str] = set()
    for f in files:
        per_dt = counts.get(f.sha, {})
        for dt, c in per_dt.items():
            sp.write_text(spark, wh.join(warehouse, "_ingest", "counts", f"dt={dt}", f"{f.sha}.json"),
                          json.dumps({"source_file": f.path, "counts": c}, indent=2, sort_keys=True))
        dts |= set(per_dt)
        sp.write_text(spark, wh.join(warehouse, "_ingest", "files", f"{f.sha}.json"), json.dumps(
            {"source_file": f.path, "format": f.format, "sha256_prefix": f.sha, "dts": sorted(per_dt)}, indent=2))
    _write_dt_metrics(spark, warehouse, dts)
    total = _empty_counts()
    by_dt: dict[str, dict] = {}
    for f in files:
        for dt, c in counts.get(f.sha, {}).items():
            _add_counts(total, c)
            _add_counts(by_dt.setdefault(dt, _empty_counts()), c)
    return IngestResult(
        files=len(files), rows_in=total["rows_in"], rows_kept=total["rows_kept"],
        context_rows=total["context_rows"], rejected={k: v for k, v in total["rejected"].items()},
        by_dt=by_dt, seconds=time.perf_counter() - t0, ignored_files=ignored,
        duplicate_files=[f.path for f in duplicates], rejected_files=list(prep.refused),
    )


def _run(spark: SparkSession, warehouse: str, prep: Prepared, max_time_utc: pd.Timestamp
         ) -> dict[str, dict[str, dict]]:
    """Parse, cut, check against stored probes, replace the rows of these sources: counts per src and dt."""
    files = prep.files
    parsed = parse_inputs(spark, files, max_time_utc)
    if any(f.format == "trips-json" for f in files):
        segments = sp.read_table(spark, warehouse, "road_segments")
        parsed = transforms.fill_link_coordinates(parsed, transforms.link_midpoints(segments))
    n_tasks = _ingest_tasks(spark, files)
    pieces = transforms.split_into_pieces(parsed, prep.h3_res, num_partitions=n_tasks, network=prep.network)
    rows = _with_src(pieces, files).persist()
    try:
        counts, folders = _count_rows(rows)
        touched = {dt for per_dt in counts.values() for dt in per_dt}
        existing = _existing_fixes(spark, warehouse, touched, [f.sha for f in files])
        if existing is not None:
            # Materialised, with its lineage cut: the later write to `probes` (which `existing` reads) would
            # otherwise drop a cached copy and make the next write parse every input file again.
            checked = mark_already_ingested(rows, existing).localCheckpoint(eager=True)
            rows.unpersist()
            rows = checked
            counts, folders = _count_rows(rows)
        probes = rows.where(F.col("reason").isNull()).select(
            *[F.col(c.name).cast(PROBES.spark_schema()[c.name].dataType) for c in PROBES.columns])
        rejected = rows.where(F.col("reason").isNotNull()).select(
            *[F.col(c.name).cast(REJECTED_PROBES.spark_schema()[c.name].dataType) for c in REJECTED_PROBES.columns])
        # One file per (folder, source file): fewer, larger files for the readers (per-file costs dominate at ~1k
        # rows per folder), and a later re-ingest of one source replaces whole files of it. As many tasks as the
        # per-trace step: each task sorts its rows by folder before writing, and 16 tasks (the shuffle default)
        # at 85 M rows sorted 5.6 M rows each, spilling 21 GB. Folders packed into tasks by their counted rows; a
        # task with few folders writes them with a file open each, without sorting its rows first.
        replace = [{"src": f.sha} for f in files]
        packed = pack_folders(folders, n_tasks)
        bins = F.broadcast(balanced_bins(spark, packed, n_tasks))
        probes = probes.join(bins, ["dt", "partition", "src"], "left").repartition(n_tasks, "_bin")
        per_task = max(Counter(packed.values()).values(), default=0)
        tables.write(probes, warehouse, PROBES, replace, partitions_per_task=per_task)
        tables.write(rejected.repartition("dt", "src"), warehouse, REJECTED_PROBES, replace)
    finally:
        rows.unpersist()
    return counts
