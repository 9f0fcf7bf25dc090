"""Data-quality gates run between stages by the Airflow DAGs: one partition-day at a time.

Each gate reads the stage's row accounting (`<W>/_metrics/<stage>/dt=<D>/partition=<P>.json`) and the Parquet
footers of the tables involved (row counts, column min/max statistics; no data pages, no Spark) and raises
`QualityError` with one readable line per broken rule. Standard library + pyarrow only (imported lazily).

Rules (thresholds in `Thresholds`):
- metrics present: the stage wrote its accounting file for the partition-day;
- row accounting: rows_in == rows_out + sum(rejected per reason), and rows_out equals the rows in the table;
- match rate: match_traces matched at least `min_match_rate` of its input (fixes or pieces, as reported);
- speeds in range: traversal speeds within [MIN_PLAUSIBLE_KPH, MAX_PLAUSIBLE_KPH], estimates within (0, max];
- no empty partitions where input exists: a stage whose input partition has rows must write rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from speedprofile import warehouse as wh

# Stage -> (input table, output table) as the gates see them.
STAGE_TABLES: dict[str, tuple[str, str]] = {
    "match_traces": ("probes", "segment_traversals"),
    "bucket_traversals": ("segment_traversals", "bucketed_traversals"),
    "build_histograms": ("bucketed_traversals", "speed_histograms"),
    "estimate_speeds": ("speed_histograms", "speed_estimates"),
}

# Accepted spellings of the accounting keys, first match wins (stages are free to pick their names; the gate
# names the keys it looked for when none is present).
ROWS_IN_KEYS = ("rows_in", "input_rows", "n_in", "in")
ROWS_OUT_KEYS = ("rows_out", "output_rows", "n_out", "out")
REJECTED_KEYS = ("rejected", "rejected_by_reason", "rejects", "dropped")
MATCHED_KEYS = ("matched", "rows_matched", "fixes_matched", "pieces_matched", "traces_matched")
MATCH_BASE_KEYS = ("match_input", "fixes_in", "pieces_in", "traces_in")
MATCH_RATE_KEYS = ("match_rate",)


class QualityError(Exception):
    """A gate failed: the message lists every broken rule, one per line."""


@dataclass(frozen=True)
class Thresholds:
    """Gate thresholds; the DAGs pass them from their params."""

    min_match_rate: float = 0.5  # fraction of the stage input that must be matched
    min_speed_kph: float = 0.5  # traversal speeds below this are implausible (schemas.segment_traversals)
    max_speed_kph: float = 200.0  # traversal and estimate speeds above this are implausible

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> Thresholds:
        p = params or {}
        return cls(**{k: float(p[k]) for k in ("min_match_rate", "min_speed_kph", "max_speed_kph") if k in p})


@dataclass
class GateResult:
    """What a gate looked at; logged by the task and returned as its XCom."""

    stage: str
    dt: str
    partition: str
    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        facts = ", ".join(f"{k}={v}" for k, v in self.facts.items())
        return f"{self.stage} dt={self.dt} partition={self.partition}: {facts}"


@dataclass(frozen=True)
class TableStats:
    """Rows and per-column min/max of one table partition, from Parquet footers."""

    files: int
    rows: int
    minmax: dict[str, tuple[Any, Any]]


# -- warehouse access (local paths, or any URI pyarrow.fs understands; s3a:// is read as s3://) ------------------


def _fs_and_path(path: str):
    import pyarrow.fs as pafs

    if not wh.is_remote(path):
        return pafs.LocalFileSystem(), os.path.abspath(path.removeprefix("file://"))
    if path.startswith("s3a://"):
        path = "s3://" + path.removeprefix("s3a://")
    return pafs.FileSystem.from_uri(path)


def read_json(path: str) -> dict | None:
    """A small JSON file (metrics) or None when it does not exist."""
    if not wh.is_remote(path):
        try:
            with open(path.removeprefix("file://")) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None
    import pyarrow.fs as pafs

    fs, p = _fs_and_path(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(p) as fh:
        return json.loads(fh.read().decode("utf-8"))


def table_stats(partition_dir: str, columns: tuple[str, ...] = ()) -> TableStats:
    """Row count and min/max of `columns` over every Parquet file below partition_dir (0 rows if missing)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, root = _fs_and_path(partition_dir)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return TableStats(0, 0, {})
    if info.type == pafs.FileType.File:
        files = [root]
    else:
        files = [
            f.path for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if f.type == pafs.FileType.File and f.base_name.endswith(".parquet")
            and not f.base_name.startswith((".", "_"))
        ]
    rows = 0
    minmax: dict[str, tuple[Any, Any]] = {}
    for path in files:
        with fs.open_input_file(path) as fh:
            meta = pq.ParquetFile(fh).metadata
        rows += meta.num_rows
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        for col in columns:
            if col not in names:
                continue
            idx = names.index(col)
            for rg in range(meta.num_row_groups):
                st = meta.row_group(rg).column(idx).statistics
                if st is None or not st.has_min_max or meta.row_group(rg).num_rows == 0:
                    continue
                lo, hi = minmax.get(col, (st.min, st.max))
                minmax[col] = (min(lo, st.min), max(hi, st.max))
    return TableStats(len(files), rows, minmax)


def partition_dir(warehouse: str, table: str, dt: str, partition: str, window_weeks: int | None = None) -> str:
    """Folder of one partition-day of `table` (the window partition for histograms)."""
    if table in ("probes", "segment_traversals", "bucketed_traversals"):
        return wh.partition_path(warehouse, table, dt=dt, partition=partition)
    if table == "speed_histograms":
        return wh.partition_path(warehouse, table, partition=partition, window=window_name(dt, window_weeks))
    return wh.partition_path(warehouse, table, partition=partition)


def window_name(dt: str, window_weeks: int | None) -> str:
    """`w<N>-<date>` (rolling window ending dt) or `d<date>` (the day's partial) as in schemas.speed_histograms."""
    return f"w{window_weeks}-{dt}" if window_weeks else f"d{dt}"


# -- accounting ---------------------------------------------------------------------------------------------------


def _first(metrics: dict, keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for k in keys:
        if k in metrics and metrics[k] is not None:
            return k, metrics[k]
    return None, None


def rejected_total(metrics: dict) -> tuple[int, dict[str, int]]:
    """Sum and per-reason counts of rejected rows: a {reason: n} dict under a REJECTED_KEYS key, else
    `rejected_<reason>` keys, else an int under a REJECTED_KEYS key."""
    _, val = _first(metrics, REJECTED_KEYS)
    if isinstance(val, dict):
        by_reason = {str(k): int(v) for k, v in val.items()}
    else:
        by_reason = {k.removeprefix("rejected_"): int(v) for k, v in metrics.items()
                     if k.startswith("rejected_") and k not in REJECTED_KEYS and isinstance(v, int | float)}
        if not by_reason and isinstance(val, int | float):
            by_reason = {"unspecified": int(val)}
    return sum(by_reason.values()), by_reason


def check_accounting(metrics: dict, result: GateResult) -> tuple[int | None, int | None]:
    """rows_in == rows_out + rejected; returns (rows_in, rows_out) as reported."""
    kin, rows_in = _first(metrics, ROWS_IN_KEYS)
    kout, rows_out = _first(metrics, ROWS_OUT_KEYS)
    if kin is None or kout is None:
        missing = [name for name, k in (("rows_in", kin), ("rows_out", kout)) if k is None]
        result.problems.append(
            f"row accounting: metrics have no {' / '.join(missing)} (looked for {ROWS_IN_KEYS} / {ROWS_OUT_KEYS}; "
            f"found keys {sorted(metrics)})"
        )
        return None, None
    rej, by_reason = rejected_total(metrics)
    result.facts.update(rows_in=int(rows_in), rows_out=int(rows_out), rejected=rej)
    if int(rows_in) != int(rows_out) + rej:
        result.problems.append(
            f"row accounting: rows_in {rows_in} != rows_out {rows_out} + rejected {rej} {by_reason} "
            f"(difference {int(rows_in) - int(rows_out) - rej} rows unaccounted)"
        )
    return int(rows_in), int(rows_out)


def match_rate(metrics: dict) -> float | None:
    """Matched share of match_traces' input: an explicit rate, else matched / base, else None."""
    _, rate = _first(metrics, MATCH_RATE_KEYS)
    if rate is not None:
        return float(rate)
    _, matched = _first(metrics, MATCHED_KEYS)
    _, base = _first(metrics, MATCH_BASE_KEYS)
    if matched is None or not base:
        return None
    return float(matched) / float(base)


# -- the gates ----------------------------------------------------------------------------------------------------


def gate(
    stage: str,
    warehouse: str,
    dt: str | date,
    partition: str,
    thresholds: Thresholds | None = None,
    window_weeks: int | None = None,
) -> GateResult:
    """Check one stage's output for one partition-day; raises QualityError listing every broken rule."""
    if stage not in STAGE_TABLES:
        raise ValueError(f"no quality gate for stage {stage!r}; known: {', '.join(STAGE_TABLES)}")
    th = thresholds or Thresholds()
    dt = str(dt)
    res = GateResult(stage, dt, partition)
    in_table, out_table = STAGE_TABLES[stage]
    mpath = wh.metrics_path(warehouse, stage, dt, partition)
    metrics = read_json(mpath)
    if metrics is None:
        res.problems.append(f"metrics missing: {stage} wrote no row accounting at {mpath}")
    speed_cols = ("speed_kph",) if out_table in ("segment_traversals", "speed_estimates") else ()
    extra_cols = ("tow_bucket",) if out_table == "bucketed_traversals" else ()
    in_stats = table_stats(partition_dir(warehouse, in_table, dt, partition, None))
    out_stats = table_stats(partition_dir(warehouse, out_table, dt, partition, window_weeks), speed_cols + extra_cols)
    if in_table == "speed_histograms":
        # estimate_speeds reads the rolling window build_histograms wrote for this dt.
        in_stats = table_stats(partition_dir(warehouse, in_table, dt, partition, window_weeks))
    res.facts.update(input_rows_in_table=in_stats.rows, output_rows_in_table=out_stats.rows)

    if metrics is not None:
        _, rows_out = check_accounting(metrics, res)
        if rows_out is not None and stage != "build_histograms" and rows_out != out_stats.rows:
            res.problems.append(
                f"row accounting: metrics say rows_out {rows_out} but {out_table} holds {out_stats.rows} rows "
                f"for dt={dt} partition={partition}"
            )
        if stage == "match_traces":
            rate = match_rate(metrics)
            if rate is None:
                res.problems.append(
                    f"match rate: metrics report no match_rate and no matched/base counts (looked for "
                    f"{MATCH_RATE_KEYS}, {MATCHED_KEYS} / {MATCH_BASE_KEYS}; found keys {sorted(metrics)})"
                )
            else:
                res.facts["match_rate"] = round(rate, 4)
                if in_stats.rows > 0 and rate < th.min_match_rate:
                    res.problems.append(
                        f"match rate {rate:.1%} is below the threshold {th.min_match_rate:.0%} "
                        f"({in_stats.rows} probe rows in dt={dt} partition={partition})"
                    )

    if in_stats.rows > 0 and out_stats.rows == 0:
        res.problems.append(
            f"empty output: {in_table} has {in_stats.rows} rows for dt={dt} partition={partition} "
            f"but {stage} wrote no {out_table} rows"
        )
    if "speed_kph" in out_stats.minmax:
        lo, hi = out_stats.minmax["speed_kph"]
        res.facts.update(min_speed_kph=round(lo, 3), max_speed_kph=round(hi, 3))
        low_ok = lo >= th.min_speed_kph if out_table == "segment_traversals" else lo > 0
        if not low_ok or hi > th.max_speed_kph:
            bound = f"[{th.min_speed_kph}, {th.max_speed_kph}]" if out_table == "segment_traversals" \
                else f"(0, {th.max_speed_kph}]"
            res.problems.append(f"speeds out of range: {out_table}.speed_kph spans {lo:.2f}..{hi:.2f} km/h, "
                                f"allowed {bound}")
    if "tow_bucket" in out_stats.minmax:
        lo, hi = out_stats.minmax["tow_bucket"]
        if lo < 0 or hi > 2015:
            res.problems.append(f"tow_bucket out of range: {out_table}.tow_bucket spans {lo}..{hi}, allowed 0..2015")

    if res.problems:
        raise QualityError(
            f"quality gate after {stage} failed for dt={dt} partition={partition}:\n  - "
            + "\n  - ".join(res.problems)
        )
    return res


@dataclass(frozen=True)
class ProbesStatus:
    """Whether ingest has delivered dt, and how many probe rows the partition got."""

    day_ingested: bool
    partition_rows: int
    evidence: str


def probes_status(warehouse: str, dt: str | date, partition: str) -> ProbesStatus:
    """Ingest delivered dt when `probes/dt=<D>/` exists or an ingest metrics file names dt."""
    import pyarrow.fs as pafs

    dt = str(dt)
    rows = table_stats(wh.partition_path(warehouse, "probes", dt=dt, partition=partition)).rows
    day_dir = wh.partition_path(warehouse, "probes", dt=dt)
    fs, p = _fs_and_path(day_dir)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        return ProbesStatus(True, rows, day_dir)
    for stage in ("ingest_probes", "ingest"):
        for part in (partition, None):
            path = wh.metrics_path(warehouse, stage, dt, part)
            if read_json(path) is not None:
                return ProbesStatus(True, rows, path)
    return ProbesStatus(False, rows, f"no {day_dir}/ and no ingest metrics for dt={dt}")
