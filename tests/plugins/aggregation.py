"""Shared pytest fixtures: aggregation (chained JSONL fixtures -> typed warehouse tables / frames)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
# The chained fixtures' partitions (Porto, New York) and days as (--date, --to-date) runs: the matching cases and the
# aggregation window (2026-03-24..31), New York's spring forward, Lisbon's and New York's fall back.
FIXTURE_PARTITIONS = ("8739220f0ffffff", "872a100d2ffffff")
FIXTURE_RANGES = (("2026-03-24", "2026-03-31"), ("2026-03-08", "2026-03-08"), ("2026-10-25", "2026-10-25"),
                  ("2026-11-01", "2026-11-01"))


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


def check_estimates(spark, warehouse: Path) -> None:
    """speed_estimates of the fixture window: runs that cover each segment with data's 2016 buckets exactly once,
    fewer rows than buckets, the pinned buckets as expected."""
    from pyspark.sql import functions as F
    from pyspark.testing import assertDataFrameEqual

    from speedprofile.aggregate.transforms import dense_estimates
    from speedprofile.spark import read_metrics, read_table

    runs = read_table(spark, str(warehouse), "speed_estimates")
    got = dense_estimates(runs)
    assert got.count() == 4 * 2016  # segments 203, 302, 3233 (Porto) and 7273 (New York) have window observations
    assert got.groupBy("segment_id").agg(F.countDistinct("tow_bucket").alias("n")).where("n != 2016").count() == 0
    n_runs = runs.count()
    assert runs.where("tow_bucket_end IS NULL OR tow_bucket_end <= tow_bucket").count() == 0
    assert n_runs < 4 * 2016 / 10  # back-off levels repeat one estimate over whole hours or the week
    expected = fixture_frame(spark, FIXTURES / "estimate_speeds/expected/speed_estimates.jsonl", "speed_estimates")
    pinned = got.join(expected.select("segment_id", "tow_bucket"), ["segment_id", "tow_bucket"])
    cols = [c for c in expected.columns if c != "tow_bucket_end"]
    assertDataFrameEqual(pinned.select(*cols), expected.select(*cols), checkRowOrder=False, rtol=1e-5)
    m = read_metrics(None, str(warehouse), "estimate_speeds", "2026-03-31", FIXTURE_PARTITIONS[0])
    assert m is not None
    assert m["buckets_out"] == m["expected_buckets_out"] == 3 * 2016 and sum(m["by_source"].values()) == 3 * 2016
    assert m["rows_out"] == runs.where(F.col("partition") == FIXTURE_PARTITIONS[0]).count() < 3 * 2016
