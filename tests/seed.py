"""Test data into warehouse tables through the table layer (never Parquet files written into a table folder)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


def arrow_rows(table: str, df):
    """A pandas frame as Arrow rows typed by the table's schema; missing columns are null, ISO dates become dates."""
    import pandas as pd
    import pyarrow as pa

    from schemas import TABLES

    t = TABLES[table]
    df = df.copy()
    for c in t.columns:
        if c.name not in df.columns:
            df[c.name] = None
        elif c.type == "date" and len(df) and isinstance(df[c.name].iloc[0], str):
            df[c.name] = pd.to_datetime(df[c.name]).dt.date
    return pa.Table.from_pandas(df[t.names], schema=t.arrow_schema(), preserve_index=False)


def commit_pandas(warehouse: str | Path, table: str, df,
                  replace: Iterable[Mapping[str, object]] = ({},)) -> None:
    """Commit a pandas frame's rows to a warehouse table (by default replacing the whole table)."""
    from speedprofile import tables

    tables.write_arrow(str(warehouse), table, arrow_rows(table, df), replace=list(replace))


def copy_warehouse(src: str | Path, dst: str | Path, only: Iterable[str] | None = None) -> Path:
    """A copy of a warehouse: the committed rows of its tables (all, or `only` these) committed to dst's own
    catalog, plus every file that is not table data (`_partitions.json`, `_metrics`, ...). A copied folder would
    not do: the catalog names the source's metadata files by absolute path."""
    import shutil

    from schemas import TABLES
    from speedprofile import tables

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    names = list(only) if only is not None else list(TABLES)
    for entry in src.iterdir():
        if entry.name.startswith(tables.SQLITE_NAME):
            continue
        if entry.name in TABLES:
            if entry.name not in names:
                continue
            top = str(entry)
            shutil.copytree(entry, dst / entry.name, dirs_exist_ok=True,
                            ignore=lambda d, n, top=top: [x for x in n if d == top and x in ("data", "metadata")])
        elif only is None:
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, dst / entry.name)
    for name in names:
        rows = tables.read_arrow(str(src), name)
        if rows.num_rows:
            tables.write_arrow(str(dst), name, rows, replace=[{}])
    return dst


def put_rows(warehouse: str | Path, table: str, keys: Mapping[str, object], columns: Mapping[str, object]) -> None:
    """Replace one partition (`keys`, e.g. {"dt": ..., "partition": ...}) of a table with rows given column-wise
    (other columns null)."""
    import pandas as pd

    cols = {k: (v.to_pylist() if hasattr(v, "to_pylist") else list(v)) for k, v in columns.items()}
    df = pd.DataFrame(cols)
    for k, v in keys.items():
        df[k] = str(v)
    commit_pandas(warehouse, table, df, replace=[dict(keys)])


@contextmanager
def committed_ago(seconds: float) -> Iterator[None]:
    """Commits made inside carry a snapshot time `seconds` in the past (as if written then)."""
    import time
    import types
    from unittest import mock

    import pyiceberg.table.snapshots as snapshots

    clock = types.SimpleNamespace(time=lambda: time.time() - seconds)
    with mock.patch.object(snapshots, "time", clock):
        yield


def table_rows(warehouse: str | Path, table: str) -> list[str]:
    """The committed rows of a table as sorted JSON lines, floats to 12 significant digits (sums may differ in the
    last bits when rows reach a kernel in another order): for comparing two warehouses row for row."""
    import json

    from speedprofile import tables

    t = tables.read_arrow(str(warehouse), table)
    t = t.select(sorted(t.column_names))

    def norm(v):
        return float(f"{v:.12g}") if isinstance(v, float) else v

    return sorted(json.dumps({k: norm(v) for k, v in r.items()}, sort_keys=True, default=str) for r in t.to_pylist())
