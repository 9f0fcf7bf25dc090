"""The ingest job: list and sniff input files, parse, clean and cut traces, write `probes` / `rejected_probes`.

Idempotency unit = one input file, keyed by the SHA-256 of its bytes (`src` = first 16 hex digits). Its output
files are named `src-<src>-<part>.parquet` inside the Hive partition folders, and a manifest
`<warehouse>/_ingest/files/<src>.json` lists them: re-ingesting the same content first deletes what it wrote
before, so the same file never doubles rows, while another file for the same day adds to it.
Row accounting per dt: `<warehouse>/_ingest/counts/dt=<D>/<src>.json` per file, summed into
`_metrics/ingest_probes/dt=<D>/all.json` (dt=unknown for rejects whose time could not be read).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from functools import reduce

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from schemas import PROBES, REJECTED_PROBES
from schemas.rejected_probes import REASONS
from speedprofile import spark as sp
from speedprofile import warehouse as wh
from speedprofile.errors import UserError
from speedprofile.ingest import formats, transforms
from speedprofile.ingest.formats import InputFile

STAGE = "ingest_probes"
HEAD_BYTES = 65536
BYTES_PER_TRACE_PARTITION = 32 << 20
UNKNOWN_DT = "unknown"  # metrics label for rejected rows without a readable time (Hive default dt partition)
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


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

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    def summary_lines(self) -> list[str]:
        """One summary line, then one line per rejection reason with a non-zero count."""
        lines = [
            f"ingested {self.files} file(s): {self.rows_in} rows in, {self.rows_kept} kept, "
            f"{self.rows_rejected} rejected, {self.context_rows} context copies; "
            f"{self.seconds:.1f} s, {self.rows_per_second:,.0f} rows/s"
        ]
        lines += [f"  rejected {reason}: {n}" for reason, n in self.rejected.items() if n]
        if self.ignored_files:
            lines.append(f"  ignored {len(self.ignored_files)} file(s) with unknown extensions in directories")
        if self.duplicate_files:
            lines.append(f"  skipped {len(self.duplicate_files)} file(s) with the same content as another input")
        return lines


def landing_path(warehouse: str, day: str) -> str:
    """Folder Airflow's ingest task reads for one day: `<warehouse>/landing/dt=<day>/`."""
    return wh.join(warehouse, "landing", f"dt={day}")


def h3_resolution(spark: SparkSession | None, warehouse: str) -> int:
    """H3 resolution of the warehouse partitions (road_segments/_partitions.json)."""
    path = wh.partitions_file(warehouse)
    try:
        if wh.is_remote(path):
            if spark is None:
                raise UserError(f"reading {path} needs a Spark session")
            if not sp.exists(spark, path):
                raise FileNotFoundError(path)
            doc = json.loads(sp.read_text(spark, path))
        else:
            doc = wh.read_partitions(warehouse)
        return int(doc["h3_res"])
    except FileNotFoundError:
        raise UserError(f"no {path}: build the road network first (speedprofile network build)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a valid partition list ({exc})") from exc


def list_inputs(spark: SparkSession | None, paths: list[str]) -> tuple[list[str], list[str]]:
    """Files named or found (recursively) under the given paths -> (files, ignored files).

    In directories, hidden and `_`-prefixed entries are skipped and only known extensions are taken; files
    named explicitly are always taken (their format is sniffed when the extension does not tell it).
    """
    files: list[str] = []
    ignored: list[str] = []
    for p in paths:
        if wh.is_remote(p):
            if spark is None:
                raise UserError(f"listing {p} needs a Spark session")
            fs, hpath = sp._fs(spark, p)
            if not fs.exists(hpath):
                raise UserError(f"{p}: no such file or directory")
            if fs.getFileStatus(hpath).isFile():
                files.append(p)
                continue
            it = fs.listFiles(hpath, True)
            found = []
            while it.hasNext():
                found.append(str(it.next().getPath().toString()))
            candidates = sorted(found)
            base = p.rstrip("/")
            candidates = [f for f in candidates
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


def _local_head_and_hash(path: str) -> tuple[bytes, str]:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        first = fh.read(1 << 20)
        h.update(first)
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    if first[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                head = gz.read(HEAD_BYTES)
        except (OSError, EOFError) as exc:
            raise UserError(f"{path}: cannot decompress ({exc})") from exc
    else:
        head = first[:HEAD_BYTES]
    return head, h.hexdigest()


def _remote_heads_and_hashes(spark: SparkSession | None, paths: list[str]) -> dict[str, tuple[bytes, str]]:
    if not paths:
        return {}
    if spark is None:
        raise UserError("reading remote inputs needs a Spark session")
    rows = (
        spark.read.format("binaryFile").load(paths)
        .select("path", F.expr(f"substring(content, 1, {HEAD_BYTES})").alias("head"), F.sha2("content", 256).alias("sha"))
        .collect()
    )
    out = {}
    for r in rows:
        head = bytes(r["head"])
        if head[:2] == b"\x1f\x8b":
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, HEAD_BYTES)
        out[r["path"]] = (head, r["sha"])
    return out


def _read_bytes(spark: SparkSession, path: str) -> bytes:
    if not wh.is_remote(path):
        with open(path, "rb") as fh:
            return formats.decompress(path, fh.read())
    row = spark.read.format("binaryFile").load(path).select("content").first()
    return formats.decompress(path, bytes(row["content"]))


def describe_inputs(spark: SparkSession | None, paths: list[str], fmt: str = "auto") -> list[InputFile]:
    """Detect and check the format of every file (one-line UserError for a wrong or unreadable file)."""
    remote = _remote_heads_and_hashes(spark, [p for p in paths if wh.is_remote(p)])
    out = []
    for p in paths:
        if wh.is_remote(p):
            key = next((k for k in remote if k == p or k.endswith(p.split("://", 1)[-1])), None)
            if key is None:
                raise UserError(f"{p}: cannot read file")
            head, sha = remote[key]
        else:
            try:
                head, sha = _local_head_and_hash(p)
            except OSError as exc:
                raise UserError(f"{p}: cannot read file ({exc.strerror or exc})") from exc
        f = formats.sniff_format(p, head, fmt)
        header: tuple[str, ...] = ()
        if f == "csv":
            text = head.decode("utf-8", "replace")
            if not text.strip():
                raise UserError(f"{p}: file is empty")
            header = formats.check_csv_header(p, text.splitlines()[0])
        elif f == "jsonl":
            formats.check_jsonl_head(p, head)
        elif f == "parquet" and head[:4] != b"PAR1":
            raise UserError(f"{p}: not a Parquet file (no PAR1 magic)")
        elif f == "gpx" and b"<gpx" not in head:
            raise UserError(f"{p}: not a GPX file (no <gpx> element)")
        elif f == "trips-json" and not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
            raise UserError(f"{p}: not a trips-json file (does not start with a JSON object)")
        size = os.path.getsize(p) if not wh.is_remote(p) else 0
        out.append(InputFile(path=p, format=f, header=header, sha=sha[:16], size=size))
    return out


def parse_inputs(spark: SparkSession, files: list[InputFile]) -> DataFrame:
    """All input files -> one parsed frame (PARSED_DDL).

    CSV and JSONL are read and validated by Spark (native line reader, `from_csv` / `from_json`, SQL checks);
    Parquet, GPX and trips-json are parsed per file on the driver and validated by the pandas kernel.
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
        frames.append(transforms.validate_records(reduce(DataFrame.unionByName, records)))
    parsed_here = [formats.FILE_PARSERS[f.format](f.path, _read_bytes(spark, f.path))
                   for f in files if f.format not in formats.TEXT_FORMATS]
    parsed_here = [r for r in parsed_here if len(r)]
    if parsed_here:
        frames.append(transforms.parsed_from_records(spark, pd.concat(parsed_here, ignore_index=True)))
    if not frames:
        return spark.createDataFrame([], transforms.PARSED_DDL)
    return reduce(DataFrame.unionByName, frames)


def _with_src(df: DataFrame, files: list[InputFile]) -> DataFrame:
    pairs = []
    for f in files:
        pairs += [F.lit(f.path), F.lit(f.sha)]
    return df.withColumn("src", F.create_map(*pairs)[F.col("source_file")])


def _stage_dir(warehouse: str, files: list[InputFile]) -> str:
    batch = hashlib.sha256("".join(sorted(f.sha for f in files)).encode()).hexdigest()[:16]
    return wh.join(warehouse, "_staging", STAGE, batch)


class _Files:
    """The few file operations of the staging/move step: plain `os` calls for a local warehouse (one Python call
    per file instead of several JVM round trips), Hadoop FileSystem for remote ones (s3a://)."""

    def __init__(self, spark: SparkSession, warehouse: str):
        self.spark = spark
        self.local = not wh.is_remote(warehouse)
        self._fs = None if self.local else sp._fs(spark, warehouse)[0]

    @staticmethod
    def _p(path: str) -> str:
        return path.removeprefix("file://")

    def _h(self, path: str):
        return self.spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path)

    def list_recursive(self, root: str) -> list[str]:
        if self.local:
            out = []
            for d, _, names in os.walk(self._p(root)):
                out += [os.path.join(d, n) for n in names]
            return sorted(out)
        if not self._fs.exists(self._h(root)):
            return []
        it = self._fs.listFiles(self._h(root), True)
        out = []
        while it.hasNext():
            out.append(str(it.next().getPath().toString()))
        return out

    def list_dir(self, path: str) -> list[str]:
        if self.local:
            return os.listdir(self._p(path)) if os.path.isdir(self._p(path)) else []
        return sp.list_dir(self.spark, path)

    def delete(self, path: str) -> None:
        if not self.local:
            sp.delete(self.spark, path)
        elif os.path.isdir(self._p(path)):
            shutil.rmtree(self._p(path))
        elif os.path.lexists(self._p(path)):
            os.remove(self._p(path))

    def move(self, src: str, dest: str) -> None:
        if self.local:
            os.makedirs(os.path.dirname(self._p(dest)), exist_ok=True)
            os.replace(self._p(src), self._p(dest))  # the Hadoop .crc side file is left behind (optional)
            return
        hdest = self._h(dest)
        self._fs.mkdirs(hdest.getParent())
        if self._fs.exists(hdest):
            self._fs.delete(hdest, False)
        if not self._fs.rename(self._h(src), hdest):
            raise UserError(f"could not move {src} to {dest}")


def _staged_parts(path: str, stage: str) -> list[str]:
    """Path of a staged file below the stage folder: [table, k=v, ..., file name]."""
    batch = stage.rstrip("/").rsplit("/", 1)[-1]
    parts = path.split("/")
    i = len(parts) - 1 - parts[::-1].index(batch)
    return parts[i + 1:]


def _move_staged(fs: _Files, staged: list[str], warehouse: str, stage: str, table: str) -> dict[str, list[str]]:
    """Move `<stage>/<table>/k=v/.../src=S/part-*.parquet` to `<table>/k=v/.../src-S-part-*.parquet`."""
    moved: dict[str, list[str]] = defaultdict(list)
    for f in staged:
        table_, *parts = _staged_parts(f, stage)
        if table_ != table:
            continue
        name = parts[-1]
        if not name.endswith(".parquet") or formats.is_hidden(name):
            continue
        keys = [p for p in parts[:-1] if not p.startswith("src=")]
        src = next(p for p in parts[:-1] if p.startswith("src="))[4:]
        dest = wh.join(warehouse, table, *keys, f"src-{src}-{name}")
        fs.move(f, dest)
        moved[src].append(dest)
    return moved


def _delete_previous(fs: _Files, warehouse: str, src: str, new_dirs: set[str]) -> None:
    """Delete what an earlier ingest of the same content wrote (manifest + `src-<src>-` files in new_dirs)."""
    manifest = wh.join(warehouse, "_ingest", "files", f"{src}.json")
    old: dict = {}
    if sp.exists(fs.spark, manifest):
        old = json.loads(sp.read_text(fs.spark, manifest))
    for path in old.get("written", []):
        fs.delete(path)
    for dt in old.get("dts", []):
        fs.delete(wh.join(warehouse, "_ingest", "counts", f"dt={dt}", f"{src}.json"))
    dirs = set(new_dirs) | {p.rsplit("/", 1)[0] for p in old.get("written", [])}
    prefix = f"src-{src}-"
    for d in dirs:
        for name in fs.list_dir(d):
            if name.startswith(prefix) or name.startswith(f".{prefix}"):
                fs.delete(wh.join(d, name))


def _count_rows(rows: DataFrame) -> dict[str, dict[str, dict]]:
    """Counts per src and dt: rows_in, kept, context, rejected per reason, kept per partition."""
    agg = rows.groupBy("src", "dt", "partition", "reason", "is_context").count().collect()
    out: dict[str, dict[str, dict]] = defaultdict(dict)
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
        else:
            c["rows_kept"] += n
            c["rows_in"] += n
            c["kept_by_partition"][r["partition"]] = c["kept_by_partition"].get(r["partition"], 0) + n
    return out


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


def _trace_partitions(spark: SparkSession, files: list[InputFile]) -> int:
    """Shuffle partitions for the per-trace step: one per BYTES_PER_TRACE_PARTITION of input, at least the
    default parallelism (every core busy), at most spark.sql.shuffle.partitions (the cached result keeps this
    partitioning, so it must not be 200 for a tiny batch)."""
    cap = int(spark.conf.get("spark.sql.shuffle.partitions", "200"))
    floor = min(cap, spark.sparkContext.defaultParallelism)
    if any(f.size == 0 and wh.is_remote(f.path) for f in files):
        return cap
    total = sum(f.size for f in files)
    return max(floor, min(cap, -(-total // BYTES_PER_TRACE_PARTITION)))


@dataclass
class Prepared:
    """Checked inputs of one run: partition resolution, files (unique content) and what was set aside."""

    h3_res: int
    files: list[InputFile]
    ignored: list[str]
    duplicates: list[InputFile]


def prepare(spark: SparkSession | None, warehouse: str, paths: list[str], fmt: str = "auto") -> Prepared:
    """Check the warehouse and every input file before any Spark work (no session needed for local paths)."""
    h3_res = h3_resolution(spark, warehouse)
    listed, ignored = list_inputs(spark, paths)
    files: list[InputFile] = []
    duplicates: list[InputFile] = []
    shas: set[str] = set()
    for f in describe_inputs(spark, listed, fmt):
        (duplicates if f.sha in shas else files).append(f)
        shas.add(f.sha)
    return Prepared(h3_res, files, ignored, duplicates)


def ingest(
    spark: SparkSession, warehouse: str, paths: list[str], fmt: str = "auto", prepared: Prepared | None = None
) -> IngestResult:
    """Ingest the files named or found under `paths` into `probes` / `rejected_probes` of the warehouse."""
    t0 = time.perf_counter()
    prep = prepared or prepare(spark, warehouse, paths, fmt)
    h3_res, files, ignored, duplicates = prep.h3_res, prep.files, prep.ignored, prep.duplicates
    parsed = parse_inputs(spark, files)
    if any(f.format == "trips-json" for f in files):
        segments = sp.read_table(spark, warehouse, "road_segments")
        parsed = transforms.fill_link_coordinates(parsed, transforms.link_midpoints(segments))
    rows = _with_src(transforms.split_into_pieces(parsed, h3_res, num_partitions=_trace_partitions(spark, files)),
                     files).persist()
    try:
        counts = _count_rows(rows)
        stage = _stage_dir(warehouse, files)
        sp.delete(spark, stage)
        probes = rows.where(F.col("reason").isNull()).select(
            *[F.col(c.name).cast(PROBES.spark_schema()[c.name].dataType) for c in PROBES.columns], "src")
        rejected = rows.where(F.col("reason").isNotNull()).select(
            *[F.col(c.name).cast(REJECTED_PROBES.spark_schema()[c.name].dataType) for c in REJECTED_PROBES.columns],
            "src")
        # One file per output folder (not one per task and folder): fewer, larger files for the readers. The
        # staging folder was just deleted, so a plain append (no dynamic-overwrite renames) is enough.
        (probes.repartition("dt", "partition", "src").sortWithinPartitions("trace_id", "piece", "timestamp_utc")
         .write.mode("append").partitionBy("dt", "partition", "src").parquet(wh.join(stage, "probes")))
        (rejected.repartition("dt", "src")
         .write.mode("append").partitionBy("dt", "src").parquet(wh.join(stage, "rejected_probes")))
    finally:
        rows.unpersist()
    # Replace, per source file, what an earlier ingest of the same content wrote; then move the new files in.
    fs = _Files(spark, warehouse)
    staged = fs.list_recursive(stage)
    new_dirs: dict[str, set[str]] = defaultdict(set)
    for f in staged:
        table, *parts = _staged_parts(f, stage)
        if table in ("probes", "rejected_probes"):
            src = next((p[4:] for p in parts[:-1] if p.startswith("src=")), None)
            if src:
                new_dirs[src].add(wh.join(warehouse, table, *[p for p in parts[:-1] if not p.startswith("src=")]))
    for f in files:
        _delete_previous(fs, warehouse, f.sha, new_dirs.get(f.sha, set()))
    moved: dict[str, list[str]] = defaultdict(list)
    for table in ("probes", "rejected_probes"):
        for src, paths_ in _move_staged(fs, staged, warehouse, stage, table).items():
            moved[src] += paths_
    fs.delete(stage)
    dts: set[str] = set()
    for f in files:
        per_dt = counts.get(f.sha, {})
        for dt, c in per_dt.items():
            sp.write_text(spark, wh.join(warehouse, "_ingest", "counts", f"dt={dt}", f"{f.sha}.json"),
                          json.dumps({"source_file": f.path, "counts": c}, indent=2, sort_keys=True))
        dts |= set(per_dt)
        sp.write_text(spark, wh.join(warehouse, "_ingest", "files", f"{f.sha}.json"), json.dumps(
            {"source_file": f.path, "format": f.format, "sha256_prefix": f.sha, "dts": sorted(per_dt),
             "written": sorted(moved.get(f.sha, []))}, indent=2))
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
        duplicate_files=[f.path for f in duplicates],
    )
