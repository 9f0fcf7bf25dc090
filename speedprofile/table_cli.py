"""`speedprofile table export|history`: a warehouse table's committed rows as plain hive-partitioned Parquet, or
its commits (snapshots), one line each. No Spark: through speedprofile.tables (pyiceberg)."""

from __future__ import annotations

import argparse

from schemas import TABLES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", choices=sorted(TABLES), help=f"table: {', '.join(sorted(TABLES))}")
    if p.prog.split()[-1] == "export":
        p.add_argument("--out", required=True, metavar="DIR",
                       help="folder to write into; its <NAME>/ subfolder is replaced")
        p.add_argument("--partition", action="append", metavar="P",
                       help="only this spatial partition (H3 cell); repeat for several")
        p.add_argument("--date", action="append", metavar="D", help="only this UTC day (YYYY-MM-DD); repeat for several")
        p.add_argument("--snapshot", type=int, default=None, metavar="ID",
                       help="the rows as of this snapshot (see `table history`), e.g. before a backfill")


def export(warehouse: str, name: str, out: str, partitions: list[str] | None = None,
           dates: list[str] | None = None, snapshot: int | None = None) -> dict:
    """Write the table's committed rows (optionally some partitions / days) under out/<name>/; returns
    {"table", "rows", "path"}."""
    from speedprofile import tables
    from speedprofile.errors import UserError
    from speedprofile.validate import day

    t = TABLES[name]
    if dates and "dt" not in t.partition_by:
        raise UserError(f"--date: table {name} has no dt key (keys: {', '.join(t.partition_by) or 'none'})")
    if partitions and "partition" not in t.partition_by:
        raise UserError(f"--partition: table {name} has no partition key (keys: {', '.join(t.partition_by) or 'none'})")
    days = [day(d, "--date") for d in dates] if dates else None
    if snapshot is not None and snapshot not in {s["snapshot_id"] for s in tables.snapshots(warehouse, t)}:
        raise UserError(f"--snapshot {snapshot}: no such snapshot of {name} (see `speedprofile table history {name}`;"
                        " expired snapshots are gone)")
    return tables.export(warehouse, t, out, dates=days, partitions=partitions, snapshot_id=snapshot)


def history(warehouse: str, name: str) -> list[dict]:
    """The table's snapshots, oldest first."""
    from speedprofile import tables

    return tables.snapshots(warehouse, name)


def cli(args: argparse.Namespace) -> int:
    if args.subverb == "export":
        r = export(args.warehouse, args.name, args.out, args.partition, args.date, args.snapshot)
        print(f"{r['table']}: {r['rows']} rows -> {r['path']}")
        return 0
    snaps = history(args.warehouse, args.name)
    if not snaps:
        print(f"{args.name}: no commits")
    for s in snaps:
        print(f"{s['snapshot_id']}  {s['committed_at']}  {s['operation']:<9} +{s['added_rows']} "
              f"-{s['deleted_rows']} rows, {s['total_rows']} total")
    return 0
