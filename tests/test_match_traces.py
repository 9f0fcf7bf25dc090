"""match_traces: the pure kernel on the hand-made fixture, bad input, the Spark app and its accounting, Kubicka."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.plugins.aggregation import FIXTURE_PARTITIONS, FIXTURE_RANGES
from tests.plugins.matching import FIXTURE_CELL, FIXTURE_DT

T0 = pd.Timestamp(f"{FIXTURE_DT}T08:00:00Z")

# Fix statuses of the matching cases; every fix of the other drives is matched.
EXPECTED_STATUS = {
    "straight": {"matched": 13},
    "parallel_service": {"matched": 13},
    "oneway_pair": {"matched": 13},
    "uturn": {"matched": 17},
    "gps_spike": {"matched": 12, "off_network": 1},
    "gap_split": {"matched": 10},
    "single_fix": {"single_fix": 1},
    "off_network": {"off_network": 5},
    "jump_10km": {"matched": 10},
    "prematched": {"matched": 8},
}
BREAKS = {"gap_split": {"time_gap": 1, "no_transition": 0}, "jump_10km": {"time_gap": 0, "no_transition": 1}}


def _matchers(segments) -> dict:
    """One matcher per partition, on that partition's segments (the job builds one per home cell and its halo; the
    fixture's two partitions are an ocean apart)."""
    import pyarrow.compute as pc

    from speedprofile.matching import Matcher

    return {p: Matcher(segments.filter(pc.equal(segments.column("partition"), p))) for p in FIXTURE_PARTITIONS}


@pytest.fixture(scope="module")
def matchers(match_segments) -> dict:
    return _matchers(match_segments)


@pytest.fixture(scope="module")
def matcher(matchers):
    """The matcher of the Porto partition, where the matching cases drive."""
    return matchers[FIXTURE_CELL]


def _kernel_rows(matchers: dict, probes: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (tid, piece, home), g in probes.groupby(["trace_id", "piece", "partition"], sort=False):
        tr = matchers[home].match(g).traversals
        rows.append(tr.assign(trace_id=tid, piece=piece, partition=home))
    return pd.concat(rows, ignore_index=True)


def _utc(col: pd.Series) -> pd.Series:
    return col.dt.tz_localize("UTC") if col.dt.tz is None else col  # Spark hands back naive UTC instants


def _check_against_hand(got: pd.DataFrame, by_hand: pd.DataFrame, probes: pd.DataFrame) -> None:
    """Traversals as worked out by hand: same rows, times to 0.5 s after each trace's first fix, speeds to 3 %."""
    key = ["trace_id", "piece", "seq"]
    got = got.sort_values(key).reset_index(drop=True)
    exp = by_hand.sort_values(key).reset_index(drop=True)
    assert got[[*key, "segment_id"]].astype(str).values.tolist() == exp[[*key, "segment_id"]].astype(str).values.tolist()
    assert got["is_complete"].tolist() == exp["is_complete"].tolist()
    first = got["trace_id"].map(probes.groupby("trace_id")["timestamp_utc"].min())
    np.testing.assert_allclose((_utc(got["enter_time_utc"]) - first).dt.total_seconds(), exp["enter_s"], atol=0.5)
    np.testing.assert_allclose((_utc(got["exit_time_utc"]) - first).dt.total_seconds(), exp["exit_s"], atol=0.5)
    np.testing.assert_allclose(got["speed_kph"], exp["speed_kph"], rtol=0.03)


def _border_piece(probes: pd.DataFrame) -> pd.DataFrame:
    """The `straight` drive as piece 1 of trace `border` whose first three fixes are context owned by piece 0."""
    g = probes[probes["trace_id"] == "straight"].sort_values("timestamp_utc").reset_index(drop=True)
    return g.assign(trace_id="border", piece=np.int32(1), is_context=g.index < 3)


def test_kernel_matches_traversals_worked_out_by_hand(matchers, match_probes, match_by_hand):
    got = _kernel_rows(matchers, match_probes)
    assert got["owned"].all() and got["reject_reason"].isna().all()
    _check_against_hand(got, match_by_hand, match_probes)


def test_kernel_fix_statuses_and_breaks(matchers, match_probes):
    for (tid, home), g in match_probes.groupby(["trace_id", "partition"], sort=False):
        res = matchers[home].match(g)
        st, n = np.unique(res.points.status, return_counts=True)
        assert dict(zip(st.tolist(), n.tolist(), strict=True)) == EXPECTED_STATUS.get(tid, {"matched": len(g)}), tid
        assert len(res.points.status) == len(g)
        assert res.points.breaks == BREAKS.get(tid, {"time_gap": 0, "no_transition": 0}), tid


def test_traversals_entered_during_context_fixes_belong_to_the_other_piece(matcher, match_probes, match_by_hand):
    tr = matcher.match(_border_piece(match_probes)).traversals
    straight = match_by_hand[match_by_hand["trace_id"] == "straight"]
    assert tr["segment_id"].tolist() == straight["segment_id"].tolist()
    assert tr["owned"].tolist() == [False, False, True, True]  # 102 and 203 are entered before the first owned fix


def test_partial_segments_are_never_flagged_complete(matchers, match_probes):
    got = _kernel_rows(matchers, match_probes)
    got = got[got["match_source"] == "hmm"]
    length = np.array([matchers[p].net.seg_len[matchers[p].net.index_of(np.array([s]))[0]]
                       for p, s in zip(got["partition"], got["segment_id"], strict=True)])
    complete = got["is_complete"].to_numpy()
    assert complete.any() and (~complete).any()
    np.testing.assert_allclose(got["traversed_m"].to_numpy()[complete], length[complete], atol=0.5)
    assert (got["traversed_m"].to_numpy()[~complete] < length[~complete] - 0.5).all()


def test_implausible_speed_is_rejected_with_reason(matcher, match_probes):
    g = match_probes[match_probes["trace_id"] == "straight"].copy()
    # the same drive squeezed into 1/10 of the time: 360 km/h
    g["timestamp_utc"] = T0 + (g["timestamp_utc"] - T0) / 10
    tr = matcher.match(g).traversals
    assert len(tr) == 4
    assert (tr["reject_reason"] == "speed_implausible").all()


@pytest.mark.parametrize("case", ["empty", "nan", "all_same_time", "one_same_time", "backwards_only",
                                  "one_backwards", "huge_jumps"])
def test_bad_input_is_counted_not_raised(matcher, match_probes, case):
    """Input ingest never writes (it rejects duplicate and conflicting fixes and sorts by time) is still handled."""
    g = match_probes[match_probes["trace_id"] == "straight"].copy().reset_index(drop=True)
    if case == "empty":
        g = g.iloc[:0]
    elif case == "nan":
        g.loc[::2, "lon_deg"] = np.nan
    elif case == "all_same_time":
        g["timestamp_utc"] = T0
    elif case == "one_same_time":  # a second fix 3 m on, with the time of the fix before it
        g = pd.concat([g.iloc[:4], g.iloc[[3]].assign(lon_deg=g["lon_deg"].iloc[3] + 3e-5), g.iloc[4:]])
    elif case == "backwards_only":
        g["timestamp_utc"] = g["timestamp_utc"].iloc[::-1].to_numpy()
    elif case == "one_backwards":  # an old fix replayed later in the input
        g = pd.concat([g.iloc[:6], g.iloc[[2]], g.iloc[6:]])
    elif case == "huge_jumps":
        g.loc[1::2, "lat_deg"] += 0.09  # 10 km north and back every other fix
    g["source_row"] = np.arange(1, len(g) + 1)  # the input order is the order above
    res = matcher.match(g)
    assert len(res.points.status) == len(g)
    assert "" not in set(res.points.status)
    if case == "all_same_time":
        assert (res.points.status[1:] == "duplicate_time").all() and res.points.status[0] == "single_fix"
    if case in ("one_same_time", "one_backwards"):
        reason = {"one_same_time": "duplicate_time", "one_backwards": "time_backwards"}[case]
        st, n = np.unique(res.points.status, return_counts=True)
        assert dict(zip(st.tolist(), n.tolist(), strict=True)) == {"matched": 13, reason: 1}
        assert res.traversals["segment_id"].tolist() == [102, 203, 304, 405]
    if case == "backwards_only":
        assert (res.points.status[1:] == "time_backwards").all()
    if case == "nan":
        assert (res.points.status[::2] == "invalid_coordinate").all()
    if case == "huge_jumps":
        assert (res.points.status[1::2] == "off_network").all()


def _run_fixture_days(warehouse: str) -> None:
    from spark_apps.match_traces import main

    for d0, d1 in FIXTURE_RANGES:
        assert main(["--warehouse", warehouse, "--date", d0, "--to-date", d1,
                     "--partition", ",".join(FIXTURE_PARTITIONS)]) == 0


def test_spark_app_writes_the_expected_traversals_and_accounting(spark, match_warehouse, match_probes, match_by_hand,
                                                               agg_fixtures):
    from pyspark.testing import assertDataFrameEqual

    from spark_apps.match_traces import main
    from speedprofile.spark import read_metrics, read_table
    from tests.plugins.aggregation import fixture_frame

    _run_fixture_days(match_warehouse)
    assert main(["--warehouse", match_warehouse, "--date", FIXTURE_DT, "--partition", FIXTURE_CELL]) == 0  # re-run
    out = read_table(spark, match_warehouse, "segment_traversals")
    expected = fixture_frame(spark, agg_fixtures / "match_traces/expected/segment_traversals.jsonl", "segment_traversals")
    assertDataFrameEqual(out, expected, checkRowOrder=False, rtol=1e-9)
    got = out.toPandas()
    _check_against_hand(got, match_by_hand, match_probes)
    assert set(got["match_source"]) == {"hmm", "prematched"}
    assert set(got["partition"]) == set(FIXTURE_PARTITIONS)

    m = read_metrics(None, match_warehouse, "match_traces", FIXTURE_DT, FIXTURE_CELL)
    day = match_probes[match_probes["dt"].astype(str) == FIXTURE_DT]
    assert m["rows_out"] == int((got["dt"].astype(str) == FIXTURE_DT).sum())
    assert m["rows_in"] == m["rows_out"] + sum(m["rejected"].values()) and m["rows_in"] == m["rows_out"]
    owned = int((~day["is_context"]).sum())
    assert m["fixes_in"] == owned
    assert m["fixes_in"] == m["fixes_matched"] + sum(m["fixes_unmatched"].values())
    assert m["fixes_unmatched"]["off_network"] == 6
    assert m["fixes_unmatched"]["single_fix"] == 1
    assert m["pieces"] == day.groupby(["trace_id", "piece"]).ngroups
    assert m["pieces_broken"] == 2 and m["breaks"] == {"time_gap": 1, "no_transition": 1}
    assert m["match_rate"] == pytest.approx(m["fixes_matched"] / owned)
    json.dumps(m)


def test_spark_app_day_without_probes_writes_zero_accounting(spark, match_warehouse):
    from spark_apps.match_traces import main
    from speedprofile.spark import read_metrics

    assert main(["--warehouse", match_warehouse, "--date", "2026-03-25", "--partition", FIXTURE_CELL]) == 0
    m = read_metrics(None, match_warehouse, "match_traces", "2026-03-25", FIXTURE_CELL)
    assert m["rows_in"] == m["rows_out"] == 0 and m["fixes_in"] == 0 and m["match_rate"] == 0.0


def test_expected_output_is_next_stage_input(agg_fixtures):
    a = (agg_fixtures / "match_traces/expected/segment_traversals.jsonl").read_text()
    assert a == (agg_fixtures / "bucket_traversals/input/segment_traversals.jsonl").read_text()


def test_kubicka_developer_tracks(data_dir):
    from speedprofile.matching.bench import list_tracks, run

    root = str(data_dir / "kubicka2015")
    tracks = list_tracks(root, ["00000000", "00000006", "00000048"])
    summary = run(root, tracks, out=lambda *_: None)
    assert summary["tracks"] == 3
    assert summary["accuracy"] >= 0.95
    assert all(r["accuracy"] >= 0.9 for r in summary["worst"])


@pytest.fixture(scope="module")
def border_warehouse(tmp_path_factory, spark, tiny_network_warehouse, tiny_simulation) -> str:
    """The tiny grid network (3 partitions) with the 6-vehicle simulated day ingested (pieces + context fixes)."""
    from pathlib import Path

    from speedprofile.ingest.pipeline import ingest
    from tests.seed import copy_warehouse

    root = tmp_path_factory.mktemp("border_wh") / "wh"
    copy_warehouse(tiny_network_warehouse, root, only=["road_segments"])
    ingest(spark, str(root), [str(Path(tiny_simulation) / "probes")])
    return str(root)


def _traversals(spark, warehouse: str, day: str) -> pd.DataFrame:
    from schemas.segment_traversals import SEGMENT_TRAVERSALS
    from speedprofile.spark import read_table

    df = read_table(spark, warehouse, "segment_traversals", dates=[day]).toPandas()
    return df[SEGMENT_TRAVERSALS.names].sort_values(["trace_id", "piece", "seq"]).reset_index(drop=True)


def test_border_one_submit_equals_separate_partition_runs(spark, border_warehouse, tmp_path):
    """A trace crossing a partition border: both partitions in one run, each alone, and all partitions at once
    write the same traversals on those partitions' segments, each exactly once."""
    from pathlib import Path

    from spark_apps.match_traces import main
    from speedprofile.spark import read_metrics, read_table
    from tests.seed import copy_warehouse

    probes = read_table(spark, border_warehouse, "probes").toPandas()
    day = str(probes["dt"].iloc[0])
    homes = probes.groupby(["trace_id", "piece"])["partition"].first()
    cells = sorted(json.loads((Path(border_warehouse) / "road_segments" / "_partitions.json").read_text())
                   ["partitions"], key=lambda c: c["cell"])
    cells = [c["cell"] for c in cells]
    together, separate, whole = (str(tmp_path / n) for n in ("together", "separate", "whole"))
    for w in (together, separate, whole):
        copy_warehouse(border_warehouse, w)
    assert main(["--warehouse", whole, "--date", day, "--partition", ",".join(cells)]) == 0
    t3 = _traversals(spark, whole, day)
    # the two partitions most traces drive in both (the border the fleet crosses most)
    per_trace = t3.groupby("trace_id")["partition"].agg(set)
    a, b = max(((x, y) for i, x in enumerate(cells) for y in cells[i + 1:]),
               key=lambda xy: sum(set(xy) <= s for s in per_trace))
    assert sum({a, b} <= s for s in per_trace) > 0, "no trace crosses a partition border"

    assert main(["--warehouse", together, "--date", day, "--partition", f"{a},{b}"]) == 0
    assert main(["--warehouse", separate, "--date", day, "--partition", a]) == 0
    assert main(["--warehouse", separate, "--date", day, "--partition", b]) == 0
    t1, t2 = _traversals(spark, together, day), _traversals(spark, separate, day)
    t3 = t3[t3["partition"].isin([a, b])].reset_index(drop=True)
    assert len(t1) > 0
    pd.testing.assert_frame_equal(t1, t2)
    pd.testing.assert_frame_equal(t1, t3)
    assert set(t1["partition"]) == {a, b}
    # exactly once: one row per piece's traversal, and no segment entered twice at the same time by one trace
    assert not t1.duplicated(["trace_id", "piece", "seq"]).any()
    assert not t1.duplicated(["trace_id", "segment_id", "enter_time_utc"]).any()
    # the border is really crossed: traversals written into a partition by pieces homed in the other one
    home_of = t1.set_index(["trace_id", "piece"]).index.map(homes.to_dict())
    crossed = (home_of != t1["partition"].to_numpy())
    assert crossed.any()
    # each run's accounting holds and counts every kept traversal once
    for w, parts in ((together, [a, b]), (separate, [a, b])):
        ms = [read_metrics(None, w, "match_traces", day, p) for p in parts]
        assert sum(m["rows_out"] for m in ms) == len(t1)
        for m in ms:
            assert m["rows_in"] == m["rows_out"] + sum(m["rejected"].values())
            assert m["fixes_in"] == m["fixes_matched"] + sum(m["fixes_unmatched"].values())
    owned = probes[~probes["is_context"].astype(bool)]
    ms = [read_metrics(None, together, "match_traces", day, p) for p in (a, b)]
    assert sum(m["fixes_in"] for m in ms) == int(owned["partition"].isin([a, b]).sum())


def test_spark_app_reads_warehouse_by_uri(spark, match_segments, match_probes, tmp_path):
    """A file:// warehouse goes through Spark's Hadoop file system (the path an s3a:// warehouse takes)."""
    from spark_apps.match_traces import main
    from speedprofile.spark import read_metrics
    from tests.plugins.matching import make_match_warehouse

    root = tmp_path / "wh"
    make_match_warehouse(str(root), match_segments, match_probes)
    assert main(["--warehouse", f"file://{root}", "--date", FIXTURE_DT, "--partition", FIXTURE_CELL]) == 0
    m = read_metrics(None, str(root), "match_traces", FIXTURE_DT, FIXTURE_CELL)
    got = _traversals(spark, str(root), FIXTURE_DT)
    assert m["rows_out"] == len(got) > 0
    assert m["fixes_unmatched"].get("kernel_error", 0) == 0


def test_spark_matching_runs_once_per_job(spark, match_warehouse, match_probes):
    """The write after the counts reads the cached result: the Python matching is not run a second time."""
    from speedprofile.matching import transforms as T
    from speedprofile.spark import read_table

    probes = read_table(spark, match_warehouse, "probes", dates=[FIXTURE_DT], partitions=T.read_cells([FIXTURE_CELL]))
    network = T.network_broadcast(spark, match_warehouse, [FIXTURE_CELL])
    result = probes.transform(T.match_traces, network=network, partitions=[FIXTURE_CELL])
    try:
        counts = T.result_counts(result)
        day = match_probes[match_probes["dt"].astype(str) == FIXTURE_DT]
        assert counts[(FIXTURE_DT, FIXTURE_CELL)]["pieces"] == day.groupby(["trace_id", "piece"]).ngroups == 10
        # the counts materialised every partition of the cache ...
        infos = spark.sparkContext._jsc.sc().getRDDStorageInfo()
        assert any(i.numCachedPartitions() == i.numPartitions() > 0 for i in infos)
        # ... and the traversal rows are a scan of it (the MapInArrow below is the cached plan's lineage)
        rows = result.transform(T.traversal_rows)
        plan = rows._jdf.queryExecution().executedPlan().toString()
        above_cache = plan.split("InMemoryRelation")[0]
        assert "InMemoryTableScan" in above_cache and "MapInArrow" not in above_cache, plan
    finally:
        result.unpersist()
        network[1].destroy()


def test_matching_tasks_follow_the_fixes_read(spark, match_warehouse):
    """The job sizes its tasks by the probes the manifests count for its dates and cells: two per core for a small
    day, one per MATCH_TASK_FIXES for a large one, in whole waves over the cores."""
    from speedprofile import tables
    from speedprofile.matching import transforms as T
    from speedprofile.spark import default_parallelism, read_table

    cells = T.read_cells([FIXTURE_CELL])
    n = tables.count_rows(match_warehouse, "probes", dates=[FIXTURE_DT], partitions=cells)
    assert n == read_table(spark, match_warehouse, "probes", dates=[FIXTURE_DT], partitions=cells).count() > 0
    assert tables.count_rows(match_warehouse, "probes", dates=["1999-01-01"]) == 0
    small = T.match_tasks(spark, n)
    assert small == T.match_tasks(spark, 0) >= 1
    slots = default_parallelism(spark)
    large = T.match_tasks(spark, 40 * T.MATCH_TASK_FIXES + 1)
    assert large % slots == 0 and max(small, 41) <= large < max(small, 41) + slots


def test_spark_matching_in_small_chunks_equals_one_pass(spark, match_warehouse):
    """A task that matches its pieces a few rows at a time (bounded memory) writes the rows and counts of one pass."""
    from speedprofile.matching import transforms as T
    from speedprofile.spark import read_table

    probes = read_table(spark, match_warehouse, "probes", dates=[FIXTURE_DT], partitions=T.read_cells([FIXTURE_CELL]))
    network = T.network_broadcast(spark, match_warehouse, [FIXTURE_CELL])
    got = {}
    try:
        for chunk in (T.MATCH_CHUNK_ROWS, 7):
            result = probes.transform(T.match_traces, network=network, partitions=[FIXTURE_CELL], chunk_rows=chunk)
            try:
                rows = result.transform(T.traversal_rows).toPandas()
                got[chunk] = (T.result_counts(result),
                              rows.sort_values(["trace_id", "piece", "seq"]).astype(str).values.tolist())
            finally:
                result.unpersist()
    finally:
        network[1].destroy()
    assert got[7][0][(FIXTURE_DT, FIXTURE_CELL)]["pieces"] == 10
    assert len(got[7][1]) > 0
    assert got[7] == got[T.MATCH_CHUNK_ROWS]


class _Net:
    """Stands in for the broadcast handle: `.value` holds the Arrow IPC bytes, as on a worker."""

    def __init__(self, value: bytes):
        self.value = value


def _probe_table(match_probes):
    import pyarrow as pa

    from schemas.probes import PROBES

    return pa.Table.from_pandas(match_probes[PROBES.names], schema=PROBES.arrow_schema(), preserve_index=False)


def _ipc(table) -> bytes:
    """The network as the broadcast carries it: the columns the matcher reads (road class and limit included)."""
    import pyarrow as pa

    from speedprofile.matching.network import NETWORK_COLUMNS

    table = table.select(NETWORK_COLUMNS).sort_by([("partition", "ascending"), ("segment_id", "ascending")])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def test_task_arrow_pass_equals_per_piece_kernel(match_segments, match_probes):
    """One task's Arrow pass over all pieces (shuffled rows) gives the per-piece kernel's traversals and counts."""
    import pyarrow as pa
    import pyarrow.compute

    from speedprofile.matching import transforms as T

    probes = pd.concat([match_probes, _border_piece(match_probes)], ignore_index=True)
    table = _probe_table(probes.sample(frac=1.0, random_state=3))  # any row order within the task
    batches = T.match_table(table, "t-eq", _Net(_ipc(match_segments)), frozenset(FIXTURE_PARTITIONS), T.MatchParams())
    tb = pa.Table.from_batches(batches)
    out = tb.to_pandas()
    trav = tb.filter(pa.compute.equal(tb.column("kind"), "traversal")).to_pandas()
    want = _kernel_rows(_matchers(match_segments), probes)
    want = want[want["owned"] & want["reject_reason"].isna()]
    key = ["trace_id", "piece", "seq"]
    got = trav.sort_values(key).reset_index(drop=True)
    want = want.sort_values(key).reset_index(drop=True)
    assert got[[*key, "segment_id", "n_fixes", "is_complete"]].astype(str).values.tolist() == \
        want[[*key, "segment_id", "n_fixes", "is_complete"]].astype(str).values.tolist()
    np.testing.assert_array_equal(got["speed_kph"].to_numpy(), want["speed_kph"].to_numpy())
    assert (got["enter_time_utc"].dt.tz_convert("UTC").to_numpy() == want["enter_time_utc"].to_numpy()).all()
    stats = {}
    for s in out.loc[out["kind"] == "stats", "stats"]:
        for k, v in s:
            stats[k] = stats.get(k, 0) + v
    assert stats["pieces"] == probes.groupby(["trace_id", "piece"]).ngroups
    assert stats["fixes_in"] == int((~probes["is_context"]).sum())
    assert stats["traversals:"] == len(got)
    assert stats["traversals:owned_by_other_piece"] == 2


def test_task_counts_a_failing_piece_as_kernel_error(match_probes):
    """A piece whose matching raises (here: an unreadable network) is counted under kernel_error; the task goes on."""
    import pyarrow as pa

    from speedprofile.matching import transforms as T

    table = _probe_table(match_probes)
    batches = T.match_table(table, "t-bad", _Net(b"not arrow"), frozenset(FIXTURE_PARTITIONS), T.MatchParams())
    out = pa.Table.from_batches(batches).to_pandas()
    assert (out["kind"] == "stats").all()
    stats: dict = {}
    for row in out["stats"]:  # one row per partition-day
        for k, v in row:
            stats[k] = stats.get(k, 0) + v
    owned = int((~match_probes["is_context"]).sum())
    assert stats["fixes_in"] == stats["fixes_kernel_error"] == owned
    assert stats["pieces_kernel_error"] == stats["pieces"] == match_probes.groupby(["trace_id", "piece"]).ngroups


def _line_network(classes: list[str], maxspeed: list[float | None], lengths_m: list[float]) -> pd.DataFrame:
    """road_segments rows of one-way segments end to end along the equator (segment k: node k -> k + 1)."""
    m_per_deg = 111_195.0
    x = np.concatenate([[0.0], np.cumsum(lengths_m)]) / m_per_deg
    n = len(lengths_m)
    return pd.DataFrame({
        "segment_id": np.arange(1, n + 1), "from_node_id": np.arange(n), "to_node_id": np.arange(1, n + 1),
        "length_m": lengths_m, "road_class": classes, "maxspeed_kph": pd.array(maxspeed, dtype="Float64"),
        "geom_lon_deg": [[x[k], x[k + 1]] for k in range(n)], "geom_lat_deg": [[0.0, 0.0] for _ in range(n)],
    })


def _two_fix_traversal(segments: pd.DataFrame, expected_time: bool) -> pd.DataFrame:
    """Two fixes 30 s apart, halfway along the first and the last segment; the traversals between them."""
    from speedprofile.matching import Matcher, MatchParams

    lengths = segments["length_m"].to_numpy()
    at = np.array([lengths[0] / 2, lengths.sum() - lengths[-1] / 2]) / 111_195.0
    fixes = pd.DataFrame({"timestamp_utc": [T0, T0 + pd.Timedelta(seconds=30)], "lon_deg": at, "lat_deg": [0.0, 0.0]})
    return Matcher(segments, MatchParams(expected_time=expected_time)).match(fixes).traversals


def test_time_between_fixes_is_shared_by_expected_travel_time():
    # 100 m of a 50 km/h road, a 100 m ramp (class default 35 km/h when untagged, here tagged 25), 100 m at 50:
    # expected 7.2 + 14.4 + 7.2 s, so the ramp gets half of the 30 s, not a third as by distance
    segs = _line_network(["primary", "primary_link", "primary"], [None, 25.0, 50.0], [200.0, 100.0, 200.0])
    tr = _two_fix_traversal(segs, expected_time=True)
    assert tr["segment_id"].tolist() == [1, 2, 3] and tr["is_complete"].tolist() == [False, True, False]
    np.testing.assert_allclose(tr["duration_s"], [7.5, 15.0, 7.5], atol=1e-3)
    np.testing.assert_allclose(tr["speed_kph"].iloc[1], 24.0, atol=0.01)
    by_distance = _two_fix_traversal(segs, expected_time=False)
    np.testing.assert_allclose(by_distance["duration_s"], [10.0, 10.0, 10.0], atol=1e-3)


def test_untagged_network_shares_time_by_distance():
    # one class and no limits: every segment has the same expected speed, so the times are those by distance
    from speedprofile.matching.network import network_from_table

    segs = _line_network(["unknown"] * 3, [None] * 3, [200.0, 100.0, 200.0])
    assert network_from_table(segs).seg_pace is None
    np.testing.assert_allclose(_two_fix_traversal(segs, expected_time=True)["duration_s"], [10.0, 10.0, 10.0],
                               atol=1e-3)


def test_expected_speed_is_the_tagged_limit_else_the_class_default():
    from speedprofile.aggregate.kernels import DEFAULT_CLASS_SPEED_KPH
    from speedprofile.matching.network import expected_speed_kph

    got = expected_speed_kph(["primary", "secondary_link", "no_such_class", "residential"],
                             np.array([70.0, np.nan, np.nan, 1.0]))
    np.testing.assert_allclose(got, [70.0, DEFAULT_CLASS_SPEED_KPH["secondary_link"],
                                     DEFAULT_CLASS_SPEED_KPH["unknown"], DEFAULT_CLASS_SPEED_KPH["residential"]])


def test_dense_fixes_are_smoothed_on_the_expected_time_axis():
    # 1 Hz fixes of a vehicle at 50, 25 (the ramp) and 50 km/h: on the expected-time axis its progress is linear,
    # so averaging the fixes within +-smooth_s leaves the times exact; by distance the ramp reads 26.5 km/h
    from speedprofile.matching import Matcher, MatchParams

    segs = _line_network(["primary", "primary_link", "primary"], [None, 25.0, 50.0], [200.0, 100.0, 200.0])
    bounds_s = np.cumsum([0.0, 14.4, 14.4, 14.4])
    t = np.arange(0.0, bounds_s[-1], 1.0)
    x = np.interp(t, bounds_s, [0.0, 200.0, 300.0, 500.0])
    fixes = pd.DataFrame({"timestamp_utc": T0 + pd.to_timedelta(t, unit="s"), "lon_deg": x / 111_195.0,
                          "lat_deg": 0.0})
    tr = Matcher(segs, MatchParams(thin_m=0.0)).match(fixes).traversals
    assert tr["segment_id"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(tr["speed_kph"].iloc[:2], [50.0, 25.0], atol=1e-6)
    by_distance = Matcher(segs, MatchParams(thin_m=0.0, expected_time=False)).match(fixes).traversals
    assert by_distance["speed_kph"].iloc[1] > 26.0
