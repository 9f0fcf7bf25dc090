"""build_histograms: daily partials + rolling window; monoid merge; salted == unsalted; row accounting."""

from __future__ import annotations

import random
from datetime import date, timedelta

import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from schemas import TABLES
from spark_apps import build_histograms as app
from speedprofile import tables
from speedprofile.aggregate import kernels as K
from speedprofile.aggregate import transforms as T
from speedprofile.spark import read_metrics, read_table
from tests import reference_kernels as R
from tests.plugins.aggregation import fixture_frame, seed_table

P, Q = "8739220f0ffffff", "872a100d2ffffff"
KEYS = ("partition", "segment_id", "tow_bucket")


def synthetic(n: int, days: int = 3, hot_share: float = 0.0, seed: int = 1) -> pd.DataFrame:
    """Bucketed traversals over a few segments/buckets/days; optionally one key with hot_share of the rows."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        hot = rnd.random() < hot_share
        d = date(2026, 3, 29) + timedelta(days=rnd.randrange(days))
        v = rnd.uniform(3, 120)
        rows.append({"trace_id": f"t{rnd.randrange(n // 3 + 1)}", "piece": 0,
                     "segment_id": 1 if hot else rnd.randrange(2, 8), "tow_bucket": 100 if hot else rnd.randrange(95, 105),
                     "duration_s": 360.0 / v, "traversed_m": 100.0, "speed_kph": v, "dt": d, "partition": P})
    return pd.DataFrame(rows)


def to_spark(spark, pdf):
    return spark.createDataFrame(pdf, "trace_id string, piece int, segment_id long, tow_bucket short, duration_s double, "
                                      "traversed_m double, speed_kph double, dt date, partition string")


def test_kernel_merge_is_associative_and_equals_one_pass():
    df = synthetic(300)
    a, b, c = (R.histograms_of(g, keys=KEYS) for _, g in df.groupby("dt"))
    left = R.merge_histograms(R.merge_histograms(a, b, keys=KEYS), c, keys=KEYS)
    right = R.merge_histograms(a, R.merge_histograms(b, c, keys=KEYS), keys=KEYS)
    pd.testing.assert_frame_equal(left, right)
    once = R.histograms_of(df, keys=KEYS)
    pd.testing.assert_frame_equal(left.drop(columns="n_traces"), once.drop(columns="n_traces"), check_dtype=False)
    # n_traces is exact per day; across days a trace seen on several days counts once per day
    per_day = df.groupby([*KEYS, "dt"])["trace_id"].nunique().groupby(list(KEYS)).sum().to_numpy()
    assert (left["n_traces"].to_numpy() == per_day).all()


def test_spark_merge_is_associative_and_equals_one_pass(spark):
    df = to_spark(spark, synthetic(400))
    parts = [T.histogram_partials(df.where(F.col("dt") == d)).drop("dt")
             for d in sorted(r[0] for r in df.select("dt").distinct().collect())]
    a, b, c = parts
    left = T.merge_histograms(T.merge_histograms(a.unionByName(b)).unionByName(c))
    right = T.merge_histograms(a.unionByName(T.merge_histograms(b.unionByName(c))))
    assertDataFrameEqual(left, right, checkRowOrder=False, rtol=1e-9)
    once = T.histogram_partials(df, keys=KEYS)
    assertDataFrameEqual(left.drop("n_traces"), once.drop("n_traces"), checkRowOrder=False, rtol=1e-9)
    # and the Spark partials equal the pandas kernel
    ref = spark.createDataFrame(R.merge_histograms(*[R.histograms_of(g, keys=KEYS) for _, g in
                                                     synthetic(400).groupby("dt")], keys=KEYS), left.schema)
    assertDataFrameEqual(left, ref, checkRowOrder=False, rtol=1e-9)


def test_salted_equals_unsalted_exactly(spark):
    df = to_spark(spark, synthetic(600, hot_share=0.4, seed=3))
    hot = T.hot_keys(df, share=0.05, salt_buckets=None, shuffle_partitions=8)
    hot_rows = hot.collect()
    assert [(r["segment_id"], r["tow_bucket"]) for r in hot_rows] == [(1, 100)] * len(hot_rows)  # detected from counts
    assert all(r["n_salts"] >= 2 for r in hot_rows)
    salted = T.histogram_partials(df, hot)
    fixed = T.histogram_partials(df, T.hot_keys(df, share=0.05, salt_buckets=7, shuffle_partitions=8))
    plain = T.histogram_partials(df)
    assertDataFrameEqual(salted, plain, checkRowOrder=False, rtol=1e-12)
    assertDataFrameEqual(fixed, plain, checkRowOrder=False, rtol=1e-12)


def run(warehouse, *extra):
    assert app.main(["--warehouse", str(warehouse), "--partition", f"{P},{Q}", "--window-weeks", "1", *extra]) == 0


@pytest.fixture(scope="module")
def hist_wh(spark, agg_fixtures, tmp_path_factory):
    warehouse = tmp_path_factory.mktemp("hist") / "warehouse"
    seed_table(warehouse, agg_fixtures / "build_histograms/input/bucketed_traversals.jsonl", "bucketed_traversals")
    run(warehouse, "--date", "2026-03-25", "--to-date", "2026-03-31")
    return warehouse


def test_fixture_output_matches_expected(spark, agg_fixtures, hist_wh):
    got = read_table(spark, str(hist_wh), "speed_histograms")
    expected = fixture_frame(spark, agg_fixtures / "build_histograms/expected/speed_histograms.jsonl", "speed_histograms")
    assertDataFrameEqual(got, expected, checkRowOrder=False, rtol=1e-9)


def test_row_accounting_and_window_sum(spark, hist_wh):
    bucketed = read_table(spark, str(hist_wh), "bucketed_traversals")
    for d in ("2026-03-29", "2026-03-31"):
        m = read_metrics(None, str(hist_wh), "build_histograms", d, P)
        n = bucketed.where((F.col("dt") == d) & (F.col("partition") == P)).count()
        assert m["rows_in"] == n == m["n_obs_out"] + m["rejected"]["invalid_row"]
    w = read_metrics(None, str(hist_wh), "build_histograms", "2026-03-31", P)["window"]
    assert w["name"] == "w1-2026-03-31" and w["n_obs"] == w["daily_n_obs"] > 0


def test_next_day_merges_stored_partials_without_old_traversals(spark, agg_fixtures, tmp_path):
    """Window for day D+1 from the stored daily partials: old traversals deleted, result = full recomputation."""
    wh = tmp_path / "warehouse"
    seed_table(wh, agg_fixtures / "build_histograms/input/bucketed_traversals.jsonl", "bucketed_traversals")
    run(wh, "--date", "2026-03-28", "--to-date", "2026-03-30")
    empty = TABLES["bucketed_traversals"].arrow_schema().empty_table()
    tables.write_arrow(str(wh), "bucketed_traversals", empty,
                       replace=[{"dt": d} for d in ("2026-03-28", "2026-03-29", "2026-03-30")])
    run(wh, "--date", "2026-03-31")
    got = read_table(spark, str(wh), "speed_histograms", extra_keys={"window": ["w1-2026-03-31"]})
    expected = fixture_frame(spark, agg_fixtures / "build_histograms/expected/speed_histograms.jsonl", "speed_histograms")
    assertDataFrameEqual(got, expected.where(F.col("window") == "w1-2026-03-31"), checkRowOrder=False, rtol=1e-9)


def test_bad_salt_flag_is_a_clear_error():
    from speedprofile.errors import UserError

    with pytest.raises(UserError, match="salt-buckets"):
        app.parse_salt("lots")
    assert app.parse_salt("auto") is None and app.parse_salt("off") is False and app.parse_salt("16") == 16


def test_expected_output_is_next_stage_input(agg_fixtures):
    a = (agg_fixtures / "build_histograms/expected/speed_histograms.jsonl").read_text()
    assert a == (agg_fixtures / "estimate_speeds/input/speed_histograms.jsonl").read_text()


def test_arrow_kernels_equal_the_reference_on_many_batches():
    """histogram_table / merge_histogram_table on a table of many record batches (as Spark hands them over)."""
    import pyarrow as pa

    df = synthetic(900, days=3, hot_share=0.2, seed=5)
    keys = ("dt", *KEYS)
    table = pa.Table.from_pandas(df[[*keys, "trace_id", "speed_kph", "duration_s", "traversed_m"]].sample(
        frac=1.0, random_state=2), preserve_index=False)
    batched = pa.Table.from_batches(table.to_batches(max_chunksize=37))
    assert batched.column("trace_id").num_chunks > 10
    got = K.histogram_table(batched, keys).to_pandas().sort_values(list(keys)).reset_index(drop=True)
    ref = R.histograms_of(df, keys=keys).reset_index(drop=True)
    assert got[list(keys)].astype(str).equals(ref[list(keys)].astype(str))
    assert [list(x) for x in got["bin_ids"]] == list(ref["bin_ids"])
    assert [list(x) for x in got["bin_counts"]] == list(ref["bin_counts"])
    assert (got["n_traces"].to_numpy() == ref["n_traces"].to_numpy()).all()
    assert abs(got["sum_speed_kph"] - ref["sum_speed_kph"]).max() < 1e-9

    daily = pa.Table.from_pandas(got.drop(columns="dt"), preserve_index=False)
    merged = K.merge_histogram_table(pa.Table.from_batches(daily.to_batches(max_chunksize=11)), KEYS).to_pandas()
    per_day = [R.histograms_of(g, keys=KEYS) for _, g in df.groupby("dt")]
    want = R.merge_histograms(*per_day, keys=KEYS)
    merged = merged.sort_values(list(KEYS)).reset_index(drop=True)
    assert [list(x) for x in merged["bin_counts"]] == list(want["bin_counts"])
    assert (merged["n_obs"].to_numpy() == want["n_obs"].to_numpy()).all()
    assert (merged["n_traces"].to_numpy() == want["n_traces"].to_numpy()).all()
