"""Warehouse layout: table folders, Hive partition paths, the partition list and per-run stage metrics.

Works for local paths and for `s3a://` URIs (through Spark's Hadoop FileSystem when a session is given).
Every path built here stays under the root it was built from: a part that would lead outside it (`..`, a NUL
byte) or a partition value with a `/` is refused with PathOutsideWarehouse before any file is touched.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable
from datetime import date, timedelta

from speedprofile.errors import UserError

DEFAULT_WAREHOUSE = "warehouse"


class PathOutsideWarehouse(UserError):
    """A path built from a name (table, partition value, file name) would resolve outside its root."""


def default_warehouse() -> str:
    """Warehouse root from $SPEEDPROFILE_WAREHOUSE, else ./warehouse."""
    return os.environ.get("SPEEDPROFILE_WAREHOUSE", DEFAULT_WAREHOUSE)


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _split(path: str) -> tuple[str, str]:
    """(scheme://authority, path) of a URI; ("", path) of a local path (file:// prefix dropped)."""
    if is_remote(path):
        scheme, rest = path.split("://", 1)
        authority, _, inner = rest.partition("/")
        return f"{scheme}://{authority}", "/" + inner
    return "", path.removeprefix("file://")


def is_within(root: str, path: str) -> bool:
    """True when `path`, with `.` and `..` resolved lexically, is `root` or below it (same scheme and host)."""
    (base, r), (pbase, p) = _split(root), _split(path)
    if base != pbase or "\x00" in r or "\x00" in p:
        return False
    if posixpath.isabs(r) != posixpath.isabs(p):
        r, p = posixpath.abspath(r), posixpath.abspath(p)
    rel = posixpath.relpath(posixpath.normpath(p), posixpath.normpath(r))
    return rel != ".." and not rel.startswith("../")


def guard(root: str, path: str) -> str:
    """`path` itself when it lies under `root`, else PathOutsideWarehouse."""
    if not is_within(root, path):
        raise PathOutsideWarehouse(f"refusing path {path!r}: it resolves outside {root!r}")
    return path


def join(root: str, *parts: str) -> str:
    """`root/part1/part2...`; refuses (PathOutsideWarehouse) a result that resolves outside `root`."""
    base = root.rstrip("/") if root != "/" else root
    path = "/".join([base, *[p.strip("/") for p in parts if p]])
    return guard(root, path)


def table_path(warehouse: str, table: str) -> str:
    return join(warehouse, table)


def partition_path(warehouse: str, table: str, **keys: object) -> str:
    """`<warehouse>/<table>/k1=v1/k2=v2` in the order given; a value with `/`, NUL or `..` is refused."""
    for k, v in keys.items():
        text = str(v)
        if "/" in text or "\x00" in text or text in (".", "..") or "/" in k:
            raise PathOutsideWarehouse(f"refusing partition {k}={text!r} of table {table}: not a folder name")
    return join(warehouse, table, *[f"{k}={v}" for k, v in keys.items()])


def date_range(start: str | date, end: str | date | None = None) -> list[date]:
    """Inclusive list of dates from start to end (end defaults to start); each must be a real YYYY-MM-DD date."""
    from speedprofile.validate import day

    d0 = day(start, "--date")
    d1 = day(end, "--to-date") if end is not None else d0
    if d1 < d0:
        raise UserError(f"--to-date {d1} is before --date {d0}")
    return [d0 + timedelta(days=i) for i in range((d1 - d0).days + 1)]


def partitions_file(warehouse: str) -> str:
    return join(warehouse, "road_segments", "_partitions.json")


def read_partitions(warehouse: str) -> dict:
    """The partition list written by `network build`: {"h3_res": int, "partitions": [{"cell":..., ...}]}."""
    path = partitions_file(warehouse)
    if is_remote(path):
        from speedprofile import storage

        doc = json.loads(storage.read_text(path))
    else:
        with open(path) as fh:
            doc = json.load(fh)
    from speedprofile.validate import partition_list

    partition_list(doc, path)  # every cell must be an H3 cell before any of them names a folder
    return doc


def partition_cells(warehouse: str) -> list[str]:
    from speedprofile.validate import partition_list

    return partition_list(read_partitions(warehouse), partitions_file(warehouse))


def metrics_path(warehouse: str, stage: str, dt: str | date | None, partition: str | None) -> str:
    for name in (stage, dt, partition):
        if name is not None and ("/" in str(name) or "\x00" in str(name) or str(name) in (".", "..")):
            raise PathOutsideWarehouse(f"refusing metrics path for {name!r}: not a file name")
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
