"""Warehouse layout: table folders, Hive partition paths, the partition list and per-run stage metrics.

Works for local paths and for `s3a://` URIs (through Spark's Hadoop FileSystem when a session is given).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import date, timedelta

DEFAULT_WAREHOUSE = "warehouse"


def default_warehouse() -> str:
    """Warehouse root from $SPEEDPROFILE_WAREHOUSE, else ./warehouse."""
    return os.environ.get("SPEEDPROFILE_WAREHOUSE", DEFAULT_WAREHOUSE)


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def join(root: str, *parts: str) -> str:
    root = root.rstrip("/") if root != "/" else root
    return "/".join([root, *[p.strip("/") for p in parts if p]])


def table_path(warehouse: str, table: str) -> str:
    return join(warehouse, table)


def partition_path(warehouse: str, table: str, **keys: object) -> str:
    """`<warehouse>/<table>/k1=v1/k2=v2` in the order given."""
    return join(warehouse, table, *[f"{k}={v}" for k, v in keys.items()])


def date_range(start: str | date, end: str | date | None = None) -> list[date]:
    """Inclusive list of dates from start to end (end defaults to start)."""
    d0 = date.fromisoformat(str(start))
    d1 = date.fromisoformat(str(end)) if end else d0
    if d1 < d0:
        from speedprofile.errors import UserError

        raise UserError(f"--to-date {d1} is before --date {d0}")
    return [d0 + timedelta(days=i) for i in range((d1 - d0).days + 1)]


def partitions_file(warehouse: str) -> str:
    return join(warehouse, "road_segments", "_partitions.json")


def read_partitions(warehouse: str) -> dict:
    """The partition list written by `network build`: {"h3_res": int, "partitions": [{"cell":..., ...}]}."""
    path = partitions_file(warehouse)
    if is_remote(path):
        from speedprofile.errors import UserError

        raise UserError(f"reading {path} needs a Spark session; use speedprofile.spark.read_text")
    with open(path) as fh:
        return json.load(fh)


def partition_cells(warehouse: str) -> list[str]:
    return [p["cell"] for p in read_partitions(warehouse)["partitions"]]


def metrics_path(warehouse: str, stage: str, dt: str | date | None, partition: str | None) -> str:
    parts = [f"dt={dt}" if dt else "dt=all", f"partition={partition}.json" if partition else "all.json"]
    return join(warehouse, "_metrics", stage, *parts)


def write_local_json(path: str, obj: object) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def iter_existing(paths: Iterable[str]) -> list[str]:
    return [p for p in paths if os.path.exists(p)]
