"""The fixture chain: each stage's expected output is the next stage's input, and the stages run one after the other
on the raw drives (ingest_probes -> match_traces -> bucket_traversals -> build_histograms -> estimate_speeds)
reproduce every stage's expected output."""

from __future__ import annotations

import pandas as pd
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from spark_apps import bucket_traversals, build_histograms, estimate_speeds, match_traces
from speedprofile import stages
from speedprofile.spark import read_table
from tests.plugins.aggregation import (
    FIXTURE_PARTITIONS,
    FIXTURE_RANGES,
    FIXTURES,
    check_estimates,
    fixture_frame,
)

# (stage, its output table = the next stage's first input, next stage)
HOPS = (
    ("ingest_probes", "probes", "match_traces"),
    ("match_traces", "segment_traversals", "bucket_traversals"),
    ("bucket_traversals", "bucketed_traversals", "build_histograms"),
    ("build_histograms", "speed_histograms", "estimate_speeds"),
)


def test_the_hops_are_the_registry_s_stage_graph():
    for up, table, down in HOPS:
        s = stages.stage(down)
        assert s.inputs[0] == table and up in s.upstream, down
        assert stages.producer(table) == stages.stage(up), table


def test_each_expected_output_is_the_next_stage_s_input():
    for up, table, down in HOPS:
        out = (FIXTURES / up / "expected" / f"{table}.jsonl").read_bytes()
        assert out == (FIXTURES / down / "input" / f"{table}.jsonl").read_bytes(), (up, down)
    # one road network for the chain's stages that read it
    readers = [down for _, _, down in HOPS if "road_segments" in stages.stage(down).inputs]
    assert readers == ["match_traces", "bucket_traversals", "estimate_speeds"]
    assert len({(FIXTURES / s / "input" / "road_segments.jsonl").read_bytes() for s in readers}) == 1


def _assert_table(spark, warehouse: str, table: str, stage: str) -> None:
    expected = fixture_frame(spark, FIXTURES / stage / "expected" / f"{table}.jsonl", table)
    got = read_table(spark, warehouse, table)
    if table == "probes":  # the table holds the path the run was given; the fixture its file name
        got = got.withColumn("source_file", F.regexp_extract("source_file", r"[^/]+$", 0))
    assertDataFrameEqual(got.select(*expected.columns), expected, checkRowOrder=False, rtol=1e-9)


def test_the_stages_on_the_raw_drives_give_every_expected_output(spark, tmp_path):
    from speedprofile.ingest.pipeline import ingest
    from tests.plugins.matching import load_fixture_segments, write_fixture_network

    wh = write_fixture_network(str(tmp_path / "warehouse"), load_fixture_segments(FIXTURES / "match_traces"))
    raw = FIXTURES / "ingest_probes" / "input"
    ingest(spark, wh, [str(raw / "drives.csv"), str(raw / "prematched.json")], now=pd.Timestamp("2027-01-01", tz="UTC"))
    _assert_table(spark, wh, "probes", "ingest_probes")

    parts = ["--warehouse", wh, "--partition", ",".join(FIXTURE_PARTITIONS)]
    for app in (match_traces, bucket_traversals):
        for d0, d1 in FIXTURE_RANGES:
            assert app.main([*parts, "--date", d0, "--to-date", d1]) == 0
    _assert_table(spark, wh, "segment_traversals", "match_traces")
    _assert_table(spark, wh, "bucketed_traversals", "bucket_traversals")

    window = ["--window-weeks", "1"]
    assert build_histograms.main([*parts, "--date", "2026-03-25", "--to-date", "2026-03-31", *window]) == 0
    _assert_table(spark, wh, "speed_histograms", "build_histograms")
    assert estimate_speeds.main([*parts, "--date", "2026-03-31", *window]) == 0
    check_estimates(spark, wh)
