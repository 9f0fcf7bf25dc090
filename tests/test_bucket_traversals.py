"""bucket_traversals: midpoint rule, local time across DST, week wrap at midnight, row accounting per reason."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from schemas.bucketed_traversals import REJECT_REASONS
from spark_apps import bucket_traversals as app
from speedprofile.aggregate import kernels as K
from speedprofile.aggregate import transforms as T
from speedprofile.spark import read_metrics, read_table
from tests.plugins.aggregation import FIXTURE_RANGES, fixture_frame, seed_table

P, Q = "8739220f0ffffff", "872a100d2ffffff"


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


def test_bucket_zero_is_sunday_midnight_and_week_wraps():
    assert K.bucket_instant(utc("2026-03-29T00:00:00"), "UTC")["tow_bucket"] == 0  # a Sunday
    assert K.bucket_instant(utc("2026-03-28T23:59:59"), "UTC")["tow_bucket"] == 2015
    assert K.bucket_instant(utc("2026-03-30T08:04:59"), "UTC")["tow_bucket"] == 288 + 96
    assert K.bucket_instant(utc("2026-03-28T12:00:00"), "UTC")["day_type"] == "saturday"


def test_lisbon_dst_changes_shift_local_time():
    before = K.bucket_instant(utc("2026-03-29T00:59:00"), "Europe/Lisbon")
    after = K.bucket_instant(utc("2026-03-29T01:01:00"), "Europe/Lisbon")
    assert (before["local_time"], before["tow_bucket"]) == ("2026-03-29T00:59:00+00:00", 11)
    assert (after["local_time"], after["tow_bucket"]) == ("2026-03-29T02:01:00+01:00", 24)
    first = K.bucket_instant(utc("2026-10-25T00:30:00"), "Europe/Lisbon")
    second = K.bucket_instant(utc("2026-10-25T01:30:00"), "Europe/Lisbon")
    assert first["local_time"].endswith("+01:00") and second["local_time"].endswith("+00:00")
    assert first["tow_bucket"] == second["tow_bucket"] == 18


def test_new_york_evening_falls_on_previous_local_day():
    b = K.bucket_instant(utc("2026-03-31T03:00:00"), "America/New_York")  # Monday 23:00 EDT
    assert b == {"local_time": "2026-03-30T23:00:00-04:00", "tow_bucket": 288 + 23 * 12, "day_type": "weekday"}


def test_spark_bucketing_agrees_with_kernel_across_dst(spark):
    rnd = random.Random(7)
    zones = ["Europe/Lisbon", "America/New_York", "Australia/Sydney", "Asia/Kolkata", "UTC"]
    centres = [utc(s) for s in ("2026-03-29T01:00:00", "2026-10-25T01:00:00", "2026-03-08T07:00:00",
                                "2026-11-01T06:00:00", "2026-04-04T16:00:00", "2026-10-03T16:00:00")]
    rows = []
    for i in range(400):
        t0 = rnd.choice(centres) + timedelta(seconds=rnd.randint(-4 * 3600, 4 * 3600))
        rows.append((f"t{i}", 0, i, t0, t0 + timedelta(seconds=rnd.randint(1, 600)), rnd.choice(zones)))
    df = spark.createDataFrame(rows, "trace_id string, piece int, segment_id long, enter_time_utc timestamp, "
                                     "exit_time_utc timestamp, timezone string")
    df = df.select("*", F.lit(1.0).alias("duration_s"), F.lit(1.0).alias("traversed_m"), F.lit(1.0).alias("speed_kph"),
                   F.lit(None).cast("date").alias("dt"), F.lit("p").alias("partition"),
                   F.lit(None).cast("string").alias("reject_reason"))
    got = {r["segment_id"]: r for r in T.bucket_rows(df).collect()}
    for seg, _, _, enter, exit_, tz in [(r[2], *r[:2], *r[3:]) for r in rows]:
        ref = K.bucket_instant(K.midpoint_utc(enter, exit_), tz)
        assert (got[seg]["tow_bucket"], got[seg]["day_type"], got[seg]["local_time"]) == (
            ref["tow_bucket"], ref["day_type"], ref["local_time"]), (enter, exit_, tz)


def test_rows_the_matcher_never_writes_are_rejected_with_their_reason(spark):
    """The checks the fixture chain cannot reach (match_traces writes no such rows), one row built for each."""
    segments = spark.createDataFrame([(1, P, "Europe/Lisbon"), (2, P, "Mars/Olympus_Mons")],
                                     "segment_id long, partition string, timezone string")
    t0 = utc("2026-03-29T10:00:00")
    rows = [  # trace, segment, enter, seconds, speed km/h, complete, confidence
        ("kept", 1, t0, 20, 36.0, True, 0.9),
        ("no-time", 1, None, 20, 36.0, True, 0.9),
        ("partial", 1, t0, 20, 36.0, False, 0.9),
        ("zero-time", 1, t0, 0, 36.0, True, 0.9),
        ("too-fast", 1, t0, 1, 720.0, True, 0.9),
        ("unsure", 1, t0, 20, 36.0, True, 0.2),
        ("no-segment", 999, t0, 20, 36.0, True, 0.9),
        ("bad-zone", 2, t0, 20, 36.0, True, 0.9),
    ]
    df = spark.createDataFrame(
        [(tr, seg, t, None if t is None else t + timedelta(seconds=s), float(s), v, c, conf)
         for tr, seg, t, s, v, c, conf in rows],
        "trace_id string, segment_id long, enter_time_utc timestamp, exit_time_utc timestamp, duration_s double, "
        "speed_kph double, is_complete boolean, confidence double")
    zones = [z for z in ("Europe/Lisbon", "Mars/Olympus_Mons") if K.is_valid_timezone(z)]
    got = {r["trace_id"]: r["reject_reason"] for r in T.tag_rejects(df, segments, zones).collect()}
    assert got == {"kept": None, "no-time": "missing_field", "partial": "partial", "zero-time": "duration_nonpositive",
                   "too-fast": "speed_implausible", "unsure": "low_confidence", "no-segment": "unknown_segment",
                   "bad-zone": "unknown_timezone"}
    assert set(got.values()) == {None, *REJECT_REASONS}


def run_app(warehouse, d0, d1):
    assert app.main(["--warehouse", str(warehouse), "--date", d0, "--to-date", d1, "--partition", f"{P},{Q}"]) == 0


@pytest.fixture(scope="module")
def bucketed_wh(spark, agg_fixtures, tmp_path_factory):
    """Warehouse seeded with the fixture input, the app run once over every fixture date."""
    warehouse = tmp_path_factory.mktemp("bucket") / "warehouse"
    src = agg_fixtures / "bucket_traversals" / "input"
    seed_table(warehouse, src / "road_segments.jsonl", "road_segments")
    seed_table(warehouse, src / "segment_traversals.jsonl", "segment_traversals")
    for d0, d1 in FIXTURE_RANGES:
        run_app(warehouse, d0, d1)
    return warehouse


def test_fixture_output_matches_expected(spark, agg_fixtures, bucketed_wh):
    got = read_table(spark, str(bucketed_wh), "bucketed_traversals")
    expected = fixture_frame(spark, agg_fixtures / "bucket_traversals/expected/bucketed_traversals.jsonl",
                             "bucketed_traversals")
    assertDataFrameEqual(got, expected, checkRowOrder=False, rtol=1e-9)


def test_row_accounting_per_reason(spark, bucketed_wh):
    agg_warehouse = bucketed_wh
    m = read_metrics(None, str(agg_warehouse), "bucket_traversals", "2026-03-29", P)
    assert set(m["rejected"]) == set(REJECT_REASONS)
    # dst-before, dst-after and dst-midpoint: their first and last traversals are partial
    assert m["rejected"] == {**dict.fromkeys(REJECT_REASONS, 0), "partial": 6}
    n_in = read_table(spark, str(agg_warehouse), "segment_traversals").groupBy("dt", "partition").count().collect()
    out = read_table(spark, str(agg_warehouse), "bucketed_traversals")
    for r in n_in:
        m = read_metrics(None, str(agg_warehouse), "bucket_traversals", r["dt"], r["partition"])
        kept = out.where((F.col("dt") == r["dt"]) & (F.col("partition") == r["partition"])).count()
        assert m["rows_in"] == r["count"] == kept + sum(m["rejected"].values()) and m["rows_out"] == kept


def test_rerun_is_idempotent(spark, bucketed_wh):
    first = read_table(spark, str(bucketed_wh), "bucketed_traversals").collect()
    run_app(bucketed_wh, *FIXTURE_RANGES[0])
    assertDataFrameEqual(read_table(spark, str(bucketed_wh), "bucketed_traversals"), first, checkRowOrder=False)


def test_expected_output_is_next_stage_input(agg_fixtures):
    a = (agg_fixtures / "bucket_traversals/expected/bucketed_traversals.jsonl").read_text()
    assert a == (agg_fixtures / "build_histograms/input/bucketed_traversals.jsonl").read_text()
