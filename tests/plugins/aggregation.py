"""Shared pytest fixtures: aggregation (chained JSONL fixtures -> typed warehouse tables / frames)."""

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
    """Commit a JSONL fixture to the warehouse table through the table layer (what the upstream stage would write)."""
    from speedprofile import tables

    tables.write_arrow(str(warehouse), table, read_jsonl_table(path, table), replace=[{}])


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
