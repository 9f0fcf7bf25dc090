"""Test data into warehouse tables through the table layer (never Parquet files written into a table folder)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
