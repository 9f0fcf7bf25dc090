"""speedprofile.grouped: whole groups from sorted Arrow batches, in bounded chunks."""

import pandas as pd
import pyarrow as pa
import pytest

from speedprofile.grouped import last_group_start, whole_groups


def _table(pieces, partitions=None):
    n = len(pieces)
    return pa.table({"partition": partitions or ["p"] * n, "piece": pa.array(pieces, pa.int32()),
                     "row": pa.array(range(n), pa.int64())})


@pytest.mark.parametrize("pieces,partitions,start", [
    ([0, 0, 1, 1, 1], None, 2),
    ([3, 3, 3], None, 0),
    ([0, None, None], None, 1),
    ([1, 1, 1], ["p", "q", "q"], 1),
])
def test_last_group_start_finds_the_suffix_of_the_last_group(pieces, partitions, start):
    assert last_group_start(_table(pieces, partitions), ("partition", "piece")) == start


@pytest.mark.parametrize("chunk_rows", [1, 3, 4, 100])
def test_whole_groups_never_splits_a_group_and_keeps_every_row(chunk_rows):
    pieces = [0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 4, 4]
    t = _table(pieces)
    batches = [b for i in range(0, t.num_rows, 2) for b in t.slice(i, 2).to_batches()]  # groups span batches
    batches.insert(3, batches[0].slice(0, 0))  # an empty batch on the way
    out = list(whole_groups(batches, ("partition", "piece"), chunk_rows))
    rows = [r for tb in out for r in tb.column("row").to_pylist()]
    assert rows == list(range(len(pieces)))
    seen = [set(tb.column("piece").to_pylist()) for tb in out]
    for i, a in enumerate(seen):  # no group in two tables
        for b in seen[i + 1:]:
            assert not a & b
    if chunk_rows == 100:
        assert len(out) == 1
    if chunk_rows == 1:
        assert len(out) == 5  # one table per group


def test_whole_groups_of_nothing_is_nothing():
    assert list(whole_groups([], ("piece",), 10)) == []


def test_estimates_in_small_chunks_equal_one_pass(spark, agg_fixtures, tmp_path):
    """estimate_speeds' tasks estimate a few segments at a time (bounded memory) and write the rows (runs of buckets) of one pass."""
    from speedprofile.aggregate import transforms as T
    from speedprofile.spark import read_table
    from tests.plugins.aggregation import seed_table

    wh = str(tmp_path / "warehouse")
    seed_table(wh, agg_fixtures / "estimate_speeds/input/speed_histograms.jsonl", "speed_histograms")
    seed_table(wh, agg_fixtures / "estimate_speeds/input/road_segments.jsonl", "road_segments")
    hist = read_table(spark, wh, "speed_histograms", extra_keys={"window": ["w1-2026-03-31"]})
    segments = read_table(spark, wh, "road_segments")
    priors = T.class_priors(hist, segments)
    got = {}
    for chunk in (T.ESTIMATE_CHUNK_ROWS, 2):
        est = T.estimate(hist, segments, priors, "w1-2026-03-31", n_tasks=2, chunk_rows=chunk).toPandas()
        got[chunk] = est.sort_values(["partition", "segment_id", "tow_bucket"]).reset_index(drop=True)
    assert got[2]["segment_id"].nunique() > 2
    covered = (got[2]["tow_bucket_end"].astype(int) - got[2]["tow_bucket"].astype(int)).groupby(got[2]["segment_id"])
    assert (covered.sum() == 2016).all() and len(got[2]) < 2016 * got[2]["segment_id"].nunique()
    pd.testing.assert_frame_equal(got[2], got[T.ESTIMATE_CHUNK_ROWS])
