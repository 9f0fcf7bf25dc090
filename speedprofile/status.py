"""`speedprofile status`: partition x UTC day x stage -> done / failed (the gate's reason) / missing, rows written,
and how fresh each partition's speed_estimates are.

A stage counts as done for a partition-day when its row accounting exists and its quality gate passes (the same
gate the Airflow DAG runs, speedprofile.quality); failed when the gate fails (first broken rule shown); missing
when it wrote no accounting. Stages listed come from the stage registry. No Spark: metrics files and table
metadata (through speedprofile.tables) only. Days default to those with probes or metrics in the warehouse.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC

from speedprofile import stages as registry
from speedprofile import warehouse as wh
from speedprofile.errors import UserError

DONE, FAILED, MISSING, NOT_PER_DAY = "done", "failed", "missing", "-"


@dataclass
class Cell:
    """The state of one stage for one partition-day."""

    partition: str
    dt: str
    stage: str
    state: str  # done | failed | missing | "-" (stage without per-day output, run for a later day)
    rows: int | None = None  # rows the stage wrote for the partition-day (its main output)
    reason: str | None = None  # first broken rule when failed


@dataclass
class Freshness:
    """The latest speed_estimates of a partition."""

    partition: str
    window: str | None  # histogram window the estimates came from, e.g. 'w4-2026-11-08'
    data_to: str | None  # last day of that window
    written_utc: str | None  # when the estimates were written (file time), ISO-8601
    age_s: float | None  # seconds since then
    rows: int


def _window_weeks(metrics: dict | None) -> int:
    """N of the 'w<N>-<date>' window the stage used (4 if the metrics do not say)."""
    if metrics:
        w = metrics.get("window")
        name = w.get("name") if isinstance(w, dict) else w
        m = re.match(r"w(\d+)-", str(name or ""))
        if m:
            return int(m.group(1))
    return 4


def _rows(stage: str, facts: dict, metrics: dict) -> int | None:
    for key in ("rows_out", "histogram_rows", "traversal_rows", "estimate_rows"):
        for src in (facts, metrics):
            if isinstance(src.get(key), int | float):
                return int(src[key])
    return None


def stage_state(warehouse: str, stage: str, dt: str, partition: str) -> Cell:
    """Done / failed / missing of one stage for one partition-day, by its accounting and its quality gate."""
    from speedprofile.quality import QualityError, gate, read_json

    metrics = read_json(wh.metrics_path(warehouse, stage, dt, partition))
    if metrics is None:
        return Cell(partition, dt, stage, MISSING)
    try:
        res = gate(stage, warehouse, dt, partition, window_weeks=_window_weeks(metrics))
    except QualityError as exc:
        lines = [ln.strip().removeprefix("- ") for ln in str(exc).splitlines()[1:] if ln.strip()]
        return Cell(partition, dt, stage, FAILED, _rows(stage, {}, metrics), "; ".join(lines) or str(exc))
    return Cell(partition, dt, stage, DONE, _rows(stage, res.facts, metrics))


def _partition_rows(warehouse: str, table: str) -> list[dict]:
    """The table's committed partitions from its metadata (no data read): {"keys": {key: str}, "rows": int,
    "updated_s": epoch seconds of the commit that last changed it}; [] before the first commit (a local warehouse
    without a catalog is not created by asking)."""
    from speedprofile import tables

    tbl = tables.committed_table(warehouse, table)
    if tbl is None:
        return []
    oldest = min(s.timestamp_ms for s in tbl.snapshots())
    out = []
    for r in tbl.inspect.partitions().to_pylist():
        if not r["record_count"]:
            continue
        at = r["last_updated_at"]  # naive UTC; None once the snapshot that wrote it has expired
        updated = at.replace(tzinfo=UTC).timestamp() if at is not None else oldest / 1000
        out.append({"keys": {k: str(v) for k, v in r["partition"].items()}, "rows": int(r["record_count"]),
                    "updated_s": updated})
    return out


def freshness(warehouse: str, partition: str, now: float | None = None) -> Freshness:
    """Window, last data day and age of the partition's speed_estimates (age from the commit that wrote them)."""
    from speedprofile.quality import table_stats

    got = [r for r in _partition_rows(warehouse, "speed_estimates") if r["keys"].get("partition") == partition]
    if not got:
        return Freshness(partition, None, None, None, None, 0)
    newest = max(r["updated_s"] for r in got)
    stats = table_stats(warehouse, "speed_estimates", {"partition": partition}, ("window",))
    rows = stats.rows
    window = str(stats.minmax["window"][1]) if "window" in stats.minmax else None
    data_to = window.split("-", 1)[1] if window and "-" in window else None
    now = time.time() if now is None else now
    return Freshness(partition, window, data_to, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest)),
                     round(now - newest, 1), rows)


def known_days(warehouse: str) -> list[str]:
    """UTC days with committed probes or any stage accounting in a local warehouse (sorted)."""
    days: set[str] = {r["keys"]["dt"] for r in _partition_rows(warehouse, "probes")}
    roots = [os.path.join(warehouse, "_metrics", s.name) for s in registry.partition_day_stages()]
    for root in roots:
        if os.path.isdir(root):
            days |= {d.split("=", 1)[1] for d in os.listdir(root) if d.startswith("dt=")}
    return sorted(days)


def status(warehouse: str, partitions: list[str], days: list[str]) -> tuple[list[Cell], list[Freshness]]:
    """Every partition x day x partition-day Spark stage, and the freshness of every partition's estimates."""
    cells: list[Cell] = []
    stage_list = registry.partition_day_stages()
    for p in partitions:
        for st in stage_list:
            row = [stage_state(warehouse, st.name, d, p) for d in days]
            if "dt" not in st.keys:  # one output per partition (window): a missing day before a done one is "-"
                last_done = max((i for i, c in enumerate(row) if c.state != MISSING), default=-1)
                for c in row[:max(last_done, 0)]:
                    if c.state == MISSING:
                        c.state = NOT_PER_DAY
            cells += row
    return cells, [freshness(warehouse, p) for p in partitions]


def _age(s: float | None) -> str:
    if s is None:
        return "never"
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s / n:.1f} {unit} ago"
    return f"{s:.0f} s ago"


def render(cells: list[Cell], fresh: list[Freshness]) -> str:
    """The plain-text table: one line per partition-day, one column per stage; failures and freshness below."""
    stage_names = list(dict.fromkeys(c.stage for c in cells))
    widths = [max(len(n), 14) for n in stage_names]
    lines = ["partition        day         " + "  ".join(n.ljust(w) for n, w in zip(stage_names, widths, strict=True))]
    by_key: dict[tuple[str, str], dict[str, Cell]] = {}
    for c in cells:
        by_key.setdefault((c.partition, c.dt), {})[c.stage] = c
    for (p, d), row in sorted(by_key.items()):
        cols = []
        for n, w in zip(stage_names, widths, strict=True):
            c = row[n]
            txt = c.state.upper() if c.state == FAILED else c.state
            if c.rows is not None and c.state in (DONE, FAILED):
                txt += f" {c.rows:,}"
            cols.append(txt.ljust(w))
        lines.append(f"{p:<16} {d}  " + "  ".join(cols).rstrip())
    failed = [c for c in cells if c.state == FAILED]
    if failed:
        lines.append("")
        lines.append("failed gates:")
        lines += [f"  {c.partition} {c.dt} check_{c.stage}: {c.reason}" for c in failed]
    lines.append("")
    lines.append("latest estimates:")
    for f in fresh:
        if f.rows:
            lines.append(f"  {f.partition}  window {f.window} (data to {f.data_to}), {f.rows:,} rows, "
                         f"written {f.written_utc} ({_age(f.age_s)})")
        else:
            lines.append(f"  {f.partition}  none")
    count = {s: sum(c.state == s for c in cells) for s in (DONE, FAILED, MISSING)}
    lines.append(f"{len(by_key)} partition-day(s): {count[DONE]} stage runs done, {count[FAILED]} failed, "
                 f"{count[MISSING]} missing")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--partition", default=None, help="H3 cell(s), comma-separated (default: every partition)")
    p.add_argument("--from", dest="date_from", default=None, help="first UTC day, YYYY-MM-DD")
    p.add_argument("--to", dest="date_to", default=None, help="last UTC day, inclusive (default: --from)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")


def cli(args: argparse.Namespace) -> int:
    if wh.is_remote(args.warehouse):
        raise UserError(f"status reads a local warehouse; {args.warehouse} is remote")
    if args.partition:
        partitions = [c.strip() for c in args.partition.split(",") if c.strip()]
    else:
        try:
            partitions = [str(p["cell"]) for p in wh.read_partitions(args.warehouse)["partitions"]]
        except FileNotFoundError as exc:
            raise UserError(f"no partition list at {exc.filename}: run `speedprofile network build` first") from exc
    if args.date_to and not args.date_from:
        raise UserError("--to needs --from")
    try:
        days = ([str(d) for d in wh.date_range(args.date_from, args.date_to)] if args.date_from
                else known_days(args.warehouse))
    except ValueError as exc:
        raise UserError(f"bad date: {exc}") from exc
    cells, fresh = status(args.warehouse, partitions, days)
    if args.json:
        print(json.dumps({"warehouse": args.warehouse, "partitions": partitions, "days": days,
                          "stages": [s.name for s in registry.partition_day_stages()],
                          "cells": [asdict(c) for c in cells], "estimates": [asdict(f) for f in fresh]}))
    else:
        print(render(cells, fresh) if days else "no days with probes or stage accounting yet "
              "(speedprofile ingest / run first, or pass --from/--to)")
    return 0
