"""Shared pytest fixtures: aggregation (chained JSONL fixtures -> typed Parquet warehouse tables / frames)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def read_jsonl_table(path: Path, table: str):
    """A JSONL fixture as a pyarrow Table typed by the table's schema (ISO strings -> timestamps/dates)."""
    import pandas as pd
    import pyarrow as pa

    from schemas import TABLES

    t = TABLES[table]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    df = pd.DataFrame(rows, columns=t.names)
    for c in t.columns:
        if c.type == "timestamp":
            df[c.name] = pd.to_datetime(df[c.name], utc=True, format="ISO8601")
        elif c.type == "date":
            df[c.name] = pd.to_datetime(df[c.name]).dt.date
    return pa.Table.from_pandas(df, schema=t.arrow_schema(), preserve_index=False)


def seed_table(warehouse: Path, path: Path, table: str) -> None:
    """Write a JSONL fixture into the warehouse as Hive-partitioned Parquet (what the upstream stage would write)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from schemas import TABLES

    t = TABLES[table]
    tbl = read_jsonl_table(path, table)
    if "dt" in t.partition_by:
        tbl = tbl.set_column(tbl.schema.get_field_index("dt"), "dt", pc.cast(tbl["dt"], "string"))
    pq.write_to_dataset(tbl, str(warehouse / table), partition_cols=list(t.partition_by))


def fixture_frame(spark, path: Path, table: str):
    """A JSONL fixture as a Spark DataFrame with the table's schema."""
    from schemas import TABLES

    return spark.createDataFrame(read_jsonl_table(path, table).to_pandas(), schema=TABLES[table].spark_schema())


@pytest.fixture()
def agg_warehouse(tmp_path: Path) -> Path:
    """An empty warehouse folder for one aggregation test."""
    w = tmp_path / "warehouse"
    w.mkdir()
    return w


@pytest.fixture(scope="session")
def agg_fixtures() -> Path:
    return FIXTURES
