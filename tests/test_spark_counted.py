"""speedprofile.spark.counted: per-key row counts gathered during the write (Observation) or by a grouped pass."""

from __future__ import annotations

from datetime import date

import pytest
from pyspark.sql import functions as F

from speedprofile.spark import counted

D1, D2 = date(2026, 3, 29), date(2026, 3, 30)


def frame(spark):
    rows = [(D1, "a", None)] * 5 + [(D1, "a", "partial")] * 2 + [(D2, "b", None)] * 3 + [(D2, "a", "partial")]
    return spark.createDataFrame(rows, "dt date, partition string, reason string")


KEYS = {"dt": [D1, D2], "partition": ["a", "b"], "reason": [None, "partial", "missing_field"]}
EXPECTED = {(D1, "a", None): 5, (D1, "a", "partial"): 2, (D2, "b", None): 3, (D2, "a", "partial"): 1}


@pytest.mark.parametrize("limit", [256, 1], ids=["observed", "grouped"])
def test_counts_every_combination_during_one_action(spark, tmp_path, limit):
    df, get = counted(frame(spark), KEYS, "t", limit=limit)
    df.where(F.col("reason").isNull()).write.parquet(str(tmp_path / "out"))  # the one action (a filtered write)
    got = get()
    assert len(got) == 2 * 2 * 3 and sum(got.values()) == 11
    assert {k: v for k, v in got.items() if v} == EXPECTED


@pytest.mark.parametrize("limit", [256, 1], ids=["observed", "grouped"])
def test_rows_outside_the_listed_values_are_an_error(spark, tmp_path, limit):
    df, get = counted(frame(spark), {**KEYS, "partition": ["a"]}, "t", limit=limit)
    df.write.parquet(str(tmp_path / "out"))
    with pytest.raises(ValueError, match="partition"):
        get()


def test_empty_input_counts_zero(spark, tmp_path):
    df, get = counted(spark.createDataFrame([], "dt date, partition string, reason string"), KEYS, "t")
    df.write.parquet(str(tmp_path / "out"))
    assert set(get().values()) == {0}
