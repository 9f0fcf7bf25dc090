"""Data-quality gates run between stages by the Airflow DAGs: one partition-day at a time.

Each gate reads the stage's row accounting (`<W>/_metrics/<stage>/dt=<D>/partition=<P>.json`) and the Iceberg
manifests of the tables involved (row counts, column min/max statistics; no data pages, no Spark) and raises
`QualityError` with one readable line per broken rule. Standard library + pyarrow/pyiceberg only (imported lazily).

Rules (thresholds in `Thresholds`; docs/airflow.md lists them per stage):
- metrics present: the stage wrote its accounting file for the partition-day;
- row accounting: rows_in == rows_out + sum(rejected per reason), and the counts agree with the rows actually in
  the input and output partitions;
- match rate: match_traces matched at least `min_match_rate` of its input;
- range: traversal speeds within [min_speed_kph, max_speed_kph], estimates within (0, max_speed_kph], tow_bucket
  within 0..2015, confidence within [0, 1];
- no empty output where input exists: a stage whose input partition has rows must write rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from speedprofile import stages as registry
from speedprofile import warehouse as wh

# Where match_traces reports its match rate: an explicit rate, else matched / base.
MATCH_RATE_KEYS = ("match_rate",)
MATCHED_KEYS = ("fixes_matched",)
MATCH_BASE_KEYS = ("fixes_in",)


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
    """Rows and per-column min/max of one table partition, from the table's manifests."""

    files: int
    rows: int
    minmax: dict[str, tuple[Any, Any]]


# -- warehouse access: metrics files through speedprofile.storage, tables through speedprofile.tables ------------


def _fs_and_path(path: str):
    from speedprofile.storage import filesystem

    return filesystem(path)


def read_json(path: str) -> dict | None:
    """A small JSON file (metrics) or None when it does not exist."""
    from speedprofile.storage import read_text

    try:
        return json.loads(read_text(path))
    except FileNotFoundError:
        return None


def table_stats(warehouse: str, table: str, keys: Mapping[str, object], columns: tuple[str, ...] = ()) -> TableStats:
    """Row count and min/max of `columns` over the committed rows of `table` whose keys equal `keys` (e.g.
    {"dt": D, "partition": P}), from the table's manifests (no data pages); 0 rows before the first commit."""
    from pyiceberg.conversions import from_bytes

    from speedprofile import tables

    tbl = tables.committed_table(warehouse, table)
    if tbl is None:
        return TableStats(0, 0, {})
    snap = tbl.current_snapshot()
    flt = tables.key_filter(table, keys)
    tasks = list(tbl.scan(row_filter=flt, snapshot_id=snap.snapshot_id).plan_files())
    if any(task.delete_files for task in tasks):  # row-level deletes: the manifests' counts overstate; read rows
        return _stats_from_rows(warehouse, table, keys, columns, snap.snapshot_id, len(tasks))
    schema = tbl.schema()
    fields = {c: schema.find_field(c) for c in columns if c in schema.column_names}
    minmax: dict[str, tuple[Any, Any]] = {}
    for task in tasks:
        f = task.file
        if not f.record_count:
            continue
        for col, fld in fields.items():
            lo_b, hi_b = (f.lower_bounds or {}).get(fld.field_id), (f.upper_bounds or {}).get(fld.field_id)
            if lo_b is None or hi_b is None:
                continue
            lo, hi = from_bytes(fld.field_type, lo_b), from_bytes(fld.field_type, hi_b)
            vlo, vhi = minmax.get(col, (lo, hi))
            minmax[col] = (min(vlo, lo), max(vhi, hi))
    return TableStats(len(tasks), sum(int(t.file.record_count) for t in tasks), minmax)


def _stats_from_rows(warehouse: str, table: str, keys: Mapping[str, object], columns: tuple[str, ...],
                     snapshot_id: int, files: int) -> TableStats:
    import pyarrow.compute as pc

    from speedprofile import tables

    data = tables.read_arrow(warehouse, table, extra_keys={k: [v] for k, v in keys.items()}, snapshot_id=snapshot_id)
    minmax: dict[str, tuple[Any, Any]] = {}
    for col in columns:
        if col in data.column_names and data.column(col).null_count < data.num_rows:
            mm = pc.min_max(data.column(col))
            minmax[col] = (mm["min"].as_py(), mm["max"].as_py())
    return TableStats(files, data.num_rows, minmax)


# -- rules ---------------------------------------------------------------------------------------------------------


def _rejected(metrics: dict) -> dict[str, int]:
    """Per-reason rejected counts: a {reason: n} dict under `rejected`, else `rejected_<reason>` keys."""
    val = metrics.get("rejected")
    if isinstance(val, dict):
        return {str(k): int(v) for k, v in val.items()}
    by_reason = {k.removeprefix("rejected_"): int(v) for k, v in metrics.items()
                 if k.startswith("rejected_") and isinstance(v, int | float) and not isinstance(v, bool)}
    if not by_reason and isinstance(val, int | float):
        by_reason = {"unspecified": int(val)}
    return by_reason


class _Rules:
    """Collects broken rules for one gate, one readable line each."""

    def __init__(self, res: GateResult, metrics: dict, metrics_file: str):
        self.res, self.metrics, self.metrics_file = res, metrics, metrics_file

    def key(self, *names: str, within: dict | None = None) -> Any:
        """The first of `names` present in the metrics; a problem naming them all when none is."""
        src = self.metrics if within is None else within
        for n in names:
            if n in src and src[n] is not None:
                return src[n]
        self.res.problems.append(f"metrics {self.metrics_file} lack {' / '.join(names)} (keys: {sorted(src)})")
        return None

    def balance(self, what: str, rows_in: int | None, rows_out: int | None, rejected: dict[str, int]) -> None:
        if rows_in is None or rows_out is None:
            return
        rej = sum(rejected.values())
        self.res.facts.update(rows_in=int(rows_in), rows_out=int(rows_out), rejected=rej)
        if int(rows_in) != int(rows_out) + rej:
            self.res.problems.append(
                f"row accounting: rows_in {rows_in} != {what} {rows_out} + rejected {rej} {rejected} "
                f"({int(rows_in) - int(rows_out) - rej:+d} rows unaccounted)")

    def same(self, label_a: str, a: int | None, label_b: str, b: int | None) -> None:
        if a is not None and b is not None and int(a) != int(b):
            self.res.problems.append(f"row accounting: {label_a} is {a} but {label_b} is {b}")

    def not_empty(self, in_label: str, in_rows: int, stage: str, out_label: str, out_rows: int) -> None:
        if in_rows > 0 and out_rows == 0:
            self.res.problems.append(f"empty output: {in_label} has {in_rows} rows but {stage} wrote no {out_label} rows "
                                     f"for dt={self.res.dt} partition={self.res.partition}")

    def in_range(self, label: str, col: str, stats: TableStats, lo: float, hi: float, lo_open: bool = False) -> None:
        if col not in stats.minmax:
            return
        vmin, vmax = stats.minmax[col]
        self.res.facts[f"{col}_range"] = [vmin, vmax]
        if (vmin <= lo if lo_open else vmin < lo) or vmax > hi:
            bound = f"{'(' if lo_open else '['}{lo}, {hi}]"
            self.res.problems.append(f"out of range: {label}.{col} spans {vmin}..{vmax}, allowed {bound}")


def _match_traces(r: _Rules, wh_: str, dt: str, p: str, th: Thresholds, weeks: int) -> None:
    probes = table_stats(wh_, "probes", {"dt": dt, "partition": p})
    out = table_stats(wh_, "segment_traversals", {"dt": dt, "partition": p}, ("speed_kph",))
    r.res.facts.update(probe_rows=probes.rows, traversal_rows=out.rows)
    m = r.metrics
    rows_in, rows_out = r.key("rows_in"), r.key("rows_out")
    r.balance("rows_out", rows_in, rows_out, _rejected(m))
    r.same("metrics rows_out", rows_out, f"segment_traversals rows in dt={dt} partition={p}", out.rows)
    fixes_in, matched = r.key("fixes_in"), r.key("fixes_matched")
    unmatched: dict[str, Any] = m["fixes_unmatched"] if isinstance(m.get("fixes_unmatched"), dict) else {}
    if fixes_in is not None and matched is not None:
        r.res.facts.update(fixes_in=int(fixes_in), fixes_matched=int(matched))
        if int(fixes_in) != int(matched) + sum(int(v) for v in unmatched.values()):
            r.res.problems.append(f"row accounting: fixes_in {fixes_in} != fixes_matched {matched} + unmatched "
                                  f"{sum(int(v) for v in unmatched.values())} {unmatched}")
        if m.get("context_fixes") is not None:
            r.same("fixes_in + context_fixes", int(fixes_in) + int(m["context_fixes"]),
                   f"probes rows in dt={dt} partition={p}", probes.rows)
    rate = match_rate(m)
    if rate is None and (fixes_in or 0) > 0:
        r.res.problems.append(f"match rate: metrics {r.metrics_file} report no match_rate for {fixes_in} fixes")
    elif rate is not None:
        r.res.facts["match_rate"] = round(rate, 4)
        if (fixes_in or probes.rows) and rate < th.min_match_rate:
            r.res.problems.append(f"match rate {rate:.1%} is below the threshold {th.min_match_rate:.0%} "
                                  f"({fixes_in if fixes_in is not None else probes.rows} fixes in dt={dt} "
                                  f"partition={p})")
    r.not_empty("probes", probes.rows, "match_traces", "segment_traversals", out.rows)
    r.in_range("segment_traversals", "speed_kph", out, th.min_speed_kph, th.max_speed_kph)


def _bucket_traversals(r: _Rules, wh_: str, dt: str, p: str, th: Thresholds, weeks: int) -> None:
    src = table_stats(wh_, "segment_traversals", {"dt": dt, "partition": p})
    out = table_stats(wh_, "bucketed_traversals", {"dt": dt, "partition": p}, ("speed_kph", "tow_bucket"))
    rows_in, rows_out = r.key("rows_in"), r.key("rows_out")
    r.balance("rows_out", rows_in, rows_out, _rejected(r.metrics))
    r.same("metrics rows_in", rows_in, "segment_traversals rows", src.rows)
    r.same("metrics rows_out", rows_out, "bucketed_traversals rows", out.rows)
    r.not_empty("segment_traversals", src.rows, "bucket_traversals", "bucketed_traversals", out.rows)
    r.in_range("bucketed_traversals", "speed_kph", out, th.min_speed_kph, th.max_speed_kph)
    r.in_range("bucketed_traversals", "tow_bucket", out, 0, 2015)


def _build_histograms(r: _Rules, wh_: str, dt: str, p: str, th: Thresholds, weeks: int) -> None:
    src = table_stats(wh_, "bucketed_traversals", {"dt": dt, "partition": p})
    daily = table_stats(wh_, "speed_histograms", {"partition": p, "window": f"d{dt}"})
    wname = f"w{weeks}-{dt}"
    window = table_stats(wh_, "speed_histograms", {"partition": p, "window": wname})
    r.res.facts.update(daily_histogram_rows=daily.rows, window_histogram_rows=window.rows)
    rows_in, n_obs = r.key("rows_in"), r.key("n_obs_out")
    rejected = _rejected(r.metrics)
    r.balance("observations in the daily histograms (n_obs_out)", rows_in, n_obs, rejected)
    r.same("metrics rows_in", rows_in, "bucketed_traversals rows", src.rows)
    r.same("metrics histogram_rows", r.key("histogram_rows"), f"speed_histograms rows in window d{dt}", daily.rows)
    r.not_empty("bucketed_traversals", src.rows - sum(rejected.values()), "build_histograms",
                f"speed_histograms d{dt}", daily.rows)
    w = r.key("window")
    if isinstance(w, dict):
        if w.get("name") != wname:
            r.res.problems.append(f"build_histograms wrote window {w.get('name')!r}, expected {wname!r}")
        r.same(f"window {wname} n_obs", r.key("n_obs", within=w), "the sum of its daily partials' n_obs",
               r.key("daily_n_obs", within=w))
        r.same("metrics window histogram_rows", r.key("histogram_rows", within=w),
               f"speed_histograms rows in window {wname}", window.rows)
        r.not_empty(f"speed_histograms d{dt}", daily.rows, "build_histograms", f"speed_histograms {wname}",
                    window.rows)


def _estimate_speeds(r: _Rules, wh_: str, dt: str, p: str, th: Thresholds, weeks: int) -> None:
    wname = f"w{weeks}-{dt}"
    hist = table_stats(wh_, "speed_histograms", {"partition": p, "window": wname})
    out = table_stats(wh_, "speed_estimates", {"partition": p}, ("speed_kph", "confidence"))
    r.res.facts.update(window_histogram_rows=hist.rows, estimate_rows=out.rows)
    if r.metrics.get("window") not in (None, wname):
        r.res.problems.append(f"estimate_speeds used window {r.metrics['window']!r}, expected {wname!r}")
    r.same("metrics histogram_rows_in", r.key("histogram_rows_in"), f"speed_histograms rows in window {wname}",
           hist.rows)
    rows_out = r.key("rows_out")
    r.same("metrics buckets_out", r.key("buckets_out"), "expected_buckets_out (2016 buckets x segments with data)",
           r.key("expected_buckets_out"))
    r.same("metrics rows_out", rows_out, f"speed_estimates rows (runs) in partition {p}", out.rows)
    if rows_out is not None:
        r.res.facts["rows_out"] = int(rows_out)
    r.not_empty(f"speed_histograms {wname}", hist.rows, "estimate_speeds", "speed_estimates", out.rows)
    r.in_range("speed_estimates", "speed_kph", out, 0.0, th.max_speed_kph, lo_open=True)
    r.in_range("speed_estimates", "confidence", out, 0.0, 1.0)


def _accounting(r: _Rules, wh_: str, dt: str, p: str, th: Thresholds, weeks: int) -> None:
    """The default gate of a stage (registry gate "accounting"): its accounting balances and matches its tables."""
    st = registry.stage(r.res.stage)
    src, dst = st.inputs[0], st.outputs[0]
    src_rows = table_stats(wh_, src, _table_keys(src, dt, p)).rows if registry.producer(src) else None
    out = table_stats(wh_, dst, _table_keys(dst, dt, p)).rows
    rows_in, rows_out = r.key("rows_in"), r.key("rows_out")
    r.balance("rows_out", rows_in, rows_out, _rejected(r.metrics))
    if src_rows is not None:
        r.same("metrics rows_in", rows_in, f"{src} rows", src_rows)
        r.not_empty(src, src_rows, st.name, dst, out)
    r.same("metrics rows_out", rows_out, f"{dst} rows", out)


def _table_keys(table: str, dt: str, p: str) -> dict[str, str]:
    """Keys of a table's partition-day, or of its partition when the table has no dt key."""
    prod = registry.producer(table)
    keys = prod.keys if prod else ("dt", "partition")
    return {"dt": dt, "partition": p} if "dt" in keys else {"partition": p}


# Gate kinds the registry's `gate` field names (speedprofile/stages.py).
GATES = {
    "match_traces": _match_traces,
    "bucket_traversals": _bucket_traversals,
    "build_histograms": _build_histograms,
    "estimate_speeds": _estimate_speeds,
    "accounting": _accounting,
}


def match_rate(metrics: dict) -> float | None:
    """Matched share of match_traces' input: an explicit rate, else matched / base, else None."""
    for k in MATCH_RATE_KEYS:
        if metrics.get(k) is not None:
            return float(metrics[k])
    matched = next((metrics[k] for k in MATCHED_KEYS if metrics.get(k) is not None), None)
    base = next((metrics[k] for k in MATCH_BASE_KEYS if metrics.get(k)), None)
    return None if matched is None or base is None else float(matched) / float(base)


def gate(stage: str, warehouse: str, dt: str | date, partition: str, thresholds: Thresholds | None = None,
         window_weeks: int = 4) -> GateResult:
    """Check one stage's output for one partition-day; raises QualityError listing every broken rule."""
    kind = registry.STAGES[stage].gate if stage in registry.STAGES else None
    if kind not in GATES or registry.STAGES[stage].scope != "partition_day":
        gated = [s.name for s in registry.partition_day_stages(None) if s.gate]
        raise ValueError(f"no partition-day quality gate for stage {stage!r}; known: {', '.join(gated)}")
    dt = str(dt)
    res = GateResult(stage, dt, partition)
    mfile = wh.metrics_path(warehouse, stage, dt, partition)
    metrics = read_json(mfile)
    if metrics is None:
        res.problems.append(f"metrics missing: {stage} wrote no row accounting at {mfile}")
    else:
        GATES[kind](_Rules(res, metrics, mfile), warehouse, dt, partition, thresholds or Thresholds(), window_weeks)
    if res.problems:
        raise QualityError(f"quality gate after {stage} failed for dt={dt} partition={partition}:\n  - "
                           + "\n  - ".join(res.problems))
    return res


@dataclass(frozen=True)
class ProbesStatus:
    """Whether ingest has delivered dt, and how many probe rows the partition got."""

    day_ingested: bool
    partition_rows: int
    evidence: str


def probes_status(warehouse: str, dt: str | date, partition: str) -> ProbesStatus:
    """Ingest delivered dt when probes has committed rows of dt (any partition) or an ingest metrics file names
    dt."""
    dt = str(dt)
    rows = table_stats(warehouse, "probes", {"dt": dt, "partition": partition}).rows
    day_rows = table_stats(warehouse, "probes", {"dt": dt}).rows
    if day_rows:
        return ProbesStatus(True, rows, f"probes has {day_rows} rows of dt={dt}")
    for stage in ("ingest_probes", "ingest"):
        for part in (partition, None):
            path = wh.metrics_path(warehouse, stage, dt, part)
            if read_json(path) is not None:
                return ProbesStatus(True, rows, path)
    return ProbesStatus(False, rows, f"no probes rows of dt={dt} and no ingest metrics for dt={dt}")


def landed(warehouse: str, dt: str | date) -> tuple[bool, str]:
    """Whether the landing folder `<W>/landing/dt=<D>/` holds at least one file, and its path."""
    import pyarrow.fs as pafs

    path = wh.join(warehouse, "landing", f"dt={dt}")
    fs, p = _fs_and_path(path)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return False, path
    files = fs.get_file_info(pafs.FileSelector(p, recursive=True))
    return any(f.type == pafs.FileType.File and not f.base_name.startswith((".", "_")) for f in files), path


def ingest_gate(warehouse: str, dt: str | date) -> GateResult:
    """After ingesting landing/dt=<D>: the day's ingest accounting exists and balances."""
    dt = str(dt)
    res = GateResult("ingest_probes", dt, "all")
    mfile = wh.metrics_path(warehouse, "ingest_probes", dt, None)
    m = read_json(mfile)
    if m is None:
        res.problems.append(f"no probes for dt={dt}: ingest wrote no accounting at {mfile} (did landing/dt={dt}/ "
                            "only hold fixes of other days?)")
    else:
        r = _Rules(res, m, mfile)
        r.balance("rows_kept", r.key("rows_in"), r.key("rows_kept"), _rejected(m))
        kept = m.get("kept_by_partition") or {}
        res.facts["partitions"] = len(kept)
        if isinstance(kept, dict) and m.get("rows_kept") is not None:
            r.same("rows_kept", m["rows_kept"], "the sum of kept_by_partition", sum(int(v) for v in kept.values()))
    if res.problems:
        raise QualityError(f"quality gate after ingest_probes failed for dt={dt}:\n  - " + "\n  - ".join(res.problems))
    return res

