"""estimate_speeds: percentiles from bins, back-off chain, privacy threshold, outliers, confidence, free flow;
the fixture stage (the whole fixture chain: tests/test_fixture_chain.py) and the error against simulated truth."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from schemas.speed_estimates import MIN_TRACES, SOURCES
from schemas.speed_histograms import N_SPEED_BINS
from spark_apps import bucket_traversals, build_histograms, estimate_speeds
from speedprofile import tables
from speedprofile.aggregate import kernels as K
from speedprofile.aggregate import transforms as T
from speedprofile.spark import read_table
from tests import reference_kernels as R
from tests.plugins.aggregation import check_estimates, seed_table
from tests.seed import commit_pandas

P, Q = "8739220f0ffffff", "872a100d2ffffff"
PRIOR = K.Prior(speed=42.0, free_flow=55.0)


def hist_rows(cells: dict[int, list[tuple[float, str]]]) -> pd.DataFrame:
    """Histogram rows of one segment from {tow_bucket: [(speed_kph, trace_id), ...]}."""
    rows = []
    for b, obs in cells.items():
        counts = np.zeros(N_SPEED_BINS, dtype=np.int64)
        for v, _ in obs:
            counts[K.speed_bin(v)] += 1
        ids, nonzero = K.sparse_bins(counts)
        rows.append({"tow_bucket": b, "bin_ids": ids, "bin_counts": nonzero, "n_obs": len(obs),
                     "n_traces": len({t for _, t in obs}), "sum_speed_kph": sum(v for v, _ in obs),
                     "sum_duration_s": sum(360.0 / v for v, _ in obs), "sum_traversed_m": 100.0 * len(obs)})
    return pd.DataFrame(rows)


def estimate_one(hist: pd.DataFrame, prior: K.Prior, min_traces: int = MIN_TRACES) -> pd.DataFrame:
    """The production kernel on one segment's histogram rows: its 2016 estimates."""
    return K.estimate_segments(hist.assign(segment_id=1), {1: prior}, min_traces).drop(columns="segment_id")


def test_quantiles_interpolate_linearly_within_bins():
    counts = np.zeros(N_SPEED_BINS, dtype=np.int64)
    counts[15] = 2  # [30, 32)
    counts[20] = 2  # [40, 42)
    assert K.quantile_from_bins(counts, 0.5) == 32.0
    assert K.quantile_from_bins(counts, 0.25) == 31.0
    assert K.quantile_from_bins(counts, 0.75) == 41.0
    assert math.isnan(K.quantile_from_bins(np.zeros(N_SPEED_BINS), 0.5))


def test_back_off_chain_levels():
    tue8 = 2 * 288 + 8 * 12  # Tuesday 08:00
    h = hist_rows({
        tue8: [(50, "a"), (52, "b"), (54, "c")],           # observed
        tue8 + 20: [(40, "d"), (42, "e")],                  # 2 traces: neighbours tue8+19..21 are empty
        tue8 + 21: [(44, "f")],                             # -> neighbour_buckets for tue8+20 (3 traces in +-2)
        3 * 288 + 8 * 12 + 6: [(30, "g")],                  # Wednesday 08:30: only via hour_daytype
    })
    est = estimate_one(h, PRIOR).set_index("tow_bucket")
    assert len(est) == 2016
    assert est.loc[tue8, "source"] == "observed" and est.loc[tue8, "n_traces"] == 3
    assert est.loc[tue8 + 20, "source"] == "neighbour_buckets" and est.loc[tue8 + 20, "n_traces"] == 3
    wed_830 = 3 * 288 + 8 * 12 + 6
    assert est.loc[wed_830, "source"] == "hour_daytype"   # weekday hour 8 pools tue8 + wed 08:30
    assert est.loc[tue8 + 12 * 4, "source"] == "segment_week"  # Tuesday 12:00: nothing near, week has 7 traces
    assert est.loc[tue8 + 12 * 4, "n_traces"] == 7
    thin = estimate_one(hist_rows({5: [(20, "x"), (22, "y")]}), PRIOR)
    assert set(thin["source"]) == {"road_class_prior"} and (thin["speed_kph"] == 42.0).all()
    assert set(est["source"]) <= set(SOURCES)
    # confidence shrinks with back-off depth
    c = est.groupby("source")["confidence"].max()
    assert c["observed"] > c["neighbour_buckets"] > c["segment_week"]


def test_min_traces_is_configurable_and_privacy_holds():
    rng = np.random.default_rng(5)
    cells = {int(b): [(float(rng.uniform(10, 80)), f"t{rng.integers(0, 8)}") for _ in range(rng.integers(1, 6))]
             for b in rng.choice(2016, 60, replace=False)}
    h = hist_rows(cells)
    own = dict(zip(h["tow_bucket"], h["n_traces"], strict=True))
    for k in (1, 3, 5):
        est = estimate_one(h, PRIOR, min_traces=k)
        observed = est[est["source"] == "observed"]
        assert all(own.get(b, 0) >= k for b in observed["tow_bucket"])  # never published below k from own data
        assert ((est["source"] == "road_class_prior") | (est["n_traces"] >= k)).all()
        assert sum(v >= k for v in own.values()) == len(observed)


def test_observed_bucket_pools_its_kernel_window():
    """An observed bucket's statistics come from b-2..b+2 weighted 1-2-3-2-1: a linear trend cancels, n_traces is the
    window's, and a bucket is still observed only from its own traces."""
    b = 2 * 288 + 96  # Tuesday 08:00
    trend = {b + o: [(40.0 + 4 * o + d, f"t{o}{i}") for i, d in enumerate((-1.0, 0.0, 1.0))] for o in range(-2, 3)}
    est = estimate_one(hist_rows(trend), PRIOR).set_index("tow_bucket")
    own = estimate_one(hist_rows({b: trend[b]}), PRIOR).set_index("tow_bucket")
    assert est.loc[b, "source"] == "observed" and est.loc[b, "n_traces"] == 15 and est.loc[b, "n_obs"] == 15
    assert est.loc[b, "speed_kph"] == pytest.approx(41.0, abs=1.0)   # the centre bucket's bin: 40-42
    assert est.loc[b, "mean_kph"] == pytest.approx(40.0)              # the trend cancels exactly in the sums
    assert est.loc[b, "p85_kph"] - est.loc[b, "p15_kph"] > own.loc[b, "p85_kph"] - own.loc[b, "p15_kph"]
    assert est.loc[b, "confidence"] > 0 and own.loc[b, "n_traces"] == 3
    # the window's edge bucket b+2 pools b..b+4 (b+3, b+4 empty): weights 3, 2, 1 over b+2, b+1, b
    edge = est.loc[b + 2]
    assert edge["n_traces"] == 9 and edge["mean_kph"] == pytest.approx((3 * 48 + 2 * 44 + 40) / 6)
    # wraps around the week: Saturday 23:55 pools Sunday 00:00 and 00:05
    wrap = estimate_one(hist_rows({2015: [(30.0, "a"), (30.0, "b"), (30.0, "c")], 0: [(50.0, "d")],
                                   1: [(50.0, "e")]}), PRIOR).set_index("tow_bucket")
    assert wrap.loc[2015, "n_traces"] == 5 and wrap.loc[2015, "mean_kph"] == pytest.approx((3 * 90 + 2 * 50 + 50) / 12)
    assert wrap.loc[0, "source"] == "neighbour_buckets"                # own traces decide 'observed'
    # kernel (1,) is the bucket's own histogram alone
    alone = K.estimate_segments(hist_rows(trend).assign(segment_id=1), {1: PRIOR}, kernel=(1,)).set_index("tow_bucket")
    assert alone.loc[b, "n_traces"] == 3 and alone.loc[b, "mean_kph"] == pytest.approx(40.0)
    assert alone.loc[b, "p85_kph"] - alone.loc[b, "p15_kph"] < 4
    for bad in ((1, 2), (1, 2, 3), (0, 1, 0), (1.5,)):
        with pytest.raises(ValueError, match="kernel"):
            K.estimate_segments(hist_rows(trend).assign(segment_id=1), {1: PRIOR}, kernel=bad)


def test_parked_car_does_not_drag_the_estimate():
    b = 2 * 288 + 96
    clean = estimate_one(hist_rows({b: [(30, "a"), (32, "b"), (34, "c"), (31, "d")]}), PRIOR)
    dirty = estimate_one(hist_rows({b: [(30, "a"), (32, "b"), (34, "c"), (31, "d"), (1.0, "parked")]}), PRIOR)
    c, d = clean.loc[clean.tow_bucket == b].iloc[0], dirty.loc[dirty.tow_bucket == b].iloc[0]
    assert abs(d["speed_kph"] - c["speed_kph"]) < 1.0
    assert abs(d["mean_kph"] - c["mean_kph"]) < 1.0        # untrimmed mean would be ~25.6
    assert abs(d["harmonic_mean_kph"] - c["harmonic_mean_kph"]) < 1.0  # untrimmed space-mean would be ~4.8
    assert d["p15_kph"] > 25


def test_free_flow_is_p85_of_night_speeds():
    night = {23 + 12 * h: [(60 + i, f"n{h}{i}") for i in range(3)] for h in range(1, 4)}  # Sunday 01:55..03:55
    day = {2 * 288 + 96: [(20, "a"), (21, "b"), (22, "c")]}
    est = estimate_one(hist_rows({**night, **day}), PRIOR)
    assert 61 <= est["free_flow_kph"].iloc[0] <= 64
    assert estimate_one(hist_rows(day), PRIOR)["free_flow_kph"].iloc[0] == PRIOR.free_flow


def test_confidence_formula():
    assert K.confidence("observed", 100, 45, 50, 55) == pytest.approx((1 - math.exp(-20)) / 1.2)
    assert K.confidence("observed", 3, 45, 50, 55) < K.confidence("observed", 30, 45, 50, 55)
    assert K.confidence("observed", 30, 20, 50, 80) < K.confidence("observed", 30, 45, 50, 55)
    assert K.confidence("road_class_prior", 0, math.nan, 40, math.nan) == K.DEFAULT_PRIOR_CONFIDENCE


def test_fixture_output_matches_expected(spark, agg_fixtures, tmp_path):
    wh = tmp_path / "warehouse"
    seed_table(wh, agg_fixtures / "estimate_speeds/input/speed_histograms.jsonl", "speed_histograms")
    seed_table(wh, agg_fixtures / "estimate_speeds/input/road_segments.jsonl", "road_segments")
    assert estimate_speeds.main(["--warehouse", str(wh), "--date", "2026-03-31", "--partition", f"{P},{Q}",
                                 "--window-weeks", "1"]) == 0
    check_estimates(spark, wh)


def test_estimates_match_simulator_truth(spark, tmp_path):
    """Simulated fleet -> driven paths as traversals -> bucket -> histograms -> estimates vs the simulator's truth.

    The traversals are the simulator's own driven paths (matching is tested on its own), so this measures the
    aggregation: mean absolute error of 'observed' buckets (>= 3 traces) against the true bucket speed.
    """
    from speedprofile.network.build import build
    from speedprofile.simulate.fleet import simulate

    nets = agg_fixtures_root() / "build_network" / "input"
    wh, sim = tmp_path / "warehouse", tmp_path / "sim"
    build(str(wh), nodes=str(nets / "tiny.nodes"), arcs=str(nets / "tiny.arcs.gz"))
    simulate(str(wh), str(sim), days=1, vehicles=1500, seed=5)
    segs = tables.read_pandas(str(wh), "road_segments", columns=["segment_id", "length_m", "partition"])
    segs["partition"] = segs["partition"].astype(str)
    paths = pd.read_parquet(sim / "truth_paths").merge(segs, on="segment_id")
    paths = paths.sort_values(["trace_id", "seq"])
    dur = (paths["exit_time_utc"] - paths["enter_time_utc"]).dt.total_seconds()
    last = paths.groupby("trace_id")["seq"].transform("max")
    trav = pd.DataFrame({
        "trace_id": paths["trace_id"], "piece": np.int32(0), "seq": paths["seq"].astype(np.int32),
        "segment_id": paths["segment_id"], "enter_time_utc": paths["enter_time_utc"],
        "exit_time_utc": paths["exit_time_utc"], "duration_s": dur, "traversed_m": paths["length_m"],
        "speed_kph": paths["length_m"] / dur * 3.6,
        "is_complete": (paths["seq"] > 0) & (paths["seq"] < last),  # trips start/end inside a segment
        "n_fixes": np.int32(3), "match_source": "hmm", "confidence": 1.0,
        "dt": paths.groupby("trace_id")["enter_time_utc"].transform("min").dt.date.astype(str),
        "partition": paths["partition"],
    })
    commit_pandas(wh, "segment_traversals", trav)
    cells = ",".join(sorted(segs["partition"].unique()))
    dates = sorted(trav["dt"].unique())
    common = ["--warehouse", str(wh), "--partition", cells, "--date", dates[0], "--to-date", dates[-1]]
    assert bucket_traversals.main(common) == 0
    assert build_histograms.main([*common, "--window-weeks", "1"]) == 0
    assert estimate_speeds.main([*common, "--window-weeks", "1"]) == 0

    est = T.dense_estimates(read_table(spark, str(wh), "speed_estimates")).where(F.col("source") == "observed") \
        .select("segment_id", "tow_bucket", "speed_kph", "n_traces").toPandas()
    truth = pd.read_parquet(sim / "truth")
    j = est.merge(truth, on=["segment_id", "tow_bucket"], suffixes=("", "_true"))
    assert len(j) >= 20 and (j["n_traces"] >= 3).all()
    mae = (j["speed_kph"] - j["speed_kph_true"]).abs().mean()
    print(f"observed buckets {len(j)}, MAE {mae:.2f} km/h")
    assert mae <= 5.0


def agg_fixtures_root():
    from tests.plugins.aggregation import FIXTURES

    return FIXTURES


def random_partition_histograms(seed: int, n_segments: int) -> pd.DataFrame:
    """Window histogram rows of several segments: sparse random buckets, 1-5 observations, some parked cars."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_segments):
        for b in rng.choice(2016, int(rng.integers(1, 300)), replace=False):
            n = int(rng.integers(1, 6))
            v = np.where(rng.random(n) < 0.1, rng.uniform(0.5, 3, n), rng.uniform(10, 120, n))
            counts = np.bincount(K.speed_bin(v), minlength=N_SPEED_BINS)
            ids, nonzero = K.sparse_bins(counts)
            rows.append({"segment_id": 10 + 3 * s, "tow_bucket": int(b), "bin_ids": ids, "bin_counts": nonzero, "n_obs": n,
                         "n_traces": int(rng.integers(1, n + 1)), "sum_speed_kph": float(v.sum()),
                         "sum_duration_s": float((360.0 / v).sum()), "sum_traversed_m": 100.0 * n})
    return pd.DataFrame(rows)


def test_vectorised_estimates_equal_the_per_segment_kernel():
    h = random_partition_histograms(3, 12)
    priors = {int(s): (PRIOR if s % 2 else K.Prior(speed=35.0, p15=25.0, p85=45.0, mean=35.5, harmonic_mean=33.0,
                                                   free_flow=50.0, n_obs=40, n_traces=9)) for s in h["segment_id"]}
    for k, kernel in ((1, K.OBSERVED_KERNEL), (3, K.OBSERVED_KERNEL), (5, K.OBSERVED_KERNEL), (3, (1,)),
                      (2, (1, 1, 1))):
        ref = pd.concat([R.estimate_segment(g, priors[int(s)], k, kernel).assign(segment_id=s)
                         for s, g in h.groupby("segment_id")], ignore_index=True)
        got = K.estimate_segments(h.sample(frac=1.0, random_state=k), priors, k, chunk=5,  # row order must not matter
                                  kernel=kernel)
        ref = ref[got.columns]
        assert len(got) == 12 * 2016 and {"observed", "neighbour_buckets", "hour_daytype"} <= set(got["source"])
        for c in got.columns:
            if got[c].dtype.kind == "f":  # sums may differ in the last bits (summation order)
                np.testing.assert_allclose(got[c].to_numpy(), ref[c].to_numpy(), rtol=1e-9, atol=0, err_msg=c)
            else:
                assert (got[c].to_numpy() == ref[c].to_numpy()).all(), c
    with pytest.raises(ValueError, match="duplicate"):
        K.estimate_segments(pd.concat([h, h.head(1)]), priors)


def test_run_length_rows_expand_back_to_every_bucket():
    """What speed_estimates stores (runs of equal estimates) expands to exactly the dense estimates, all buckets or a
    chosen few; a row without tow_bucket_end (written before runs) is one bucket."""
    h = random_partition_histograms(7, 9)
    priors = {int(s): PRIOR for s in h["segment_id"]}
    for dense in K.iter_estimate_columns(h, priors, 3, chunk=4):
        runs = K.estimate_runs(dense)
        n = len(dense["segment_id"])
        assert len(runs["segment_id"]) < n / 2
        assert (runs["tow_bucket_end"] > runs["tow_bucket"]).all()
        rows, bucket = K.run_buckets(runs["tow_bucket"], runs["tow_bucket_end"])
        assert len(rows) == n and (bucket == dense["tow_bucket"]).all()
        for c, v in dense.items():
            if c != "tow_bucket":
                np.testing.assert_array_equal(runs[c][rows], v, err_msg=c)  # NaN equals NaN here
        # neighbouring buckets with different estimates are never merged
        changes = np.flatnonzero((np.diff(dense["speed_kph"]) != 0) & (np.diff(dense["segment_id"]) == 0)) + 1
        assert set(dense["tow_bucket"][changes].tolist()) <= set(runs["tow_bucket"].tolist())
        pick = np.array([2015, 0, 700, 700, 12])
        rows, bucket = K.run_buckets(runs["tow_bucket"], runs["tow_bucket_end"], pick)
        seg = runs["segment_id"][rows]
        assert len(rows) == 4 * len(np.unique(dense["segment_id"])) and set(bucket.tolist()) == {0, 12, 700, 2015}
        for s, b, sp in zip(seg, bucket, runs["speed_kph"][rows], strict=True):
            want = dense["speed_kph"][(dense["segment_id"] == s) & (dense["tow_bucket"] == b)]
            np.testing.assert_array_equal(want, [sp])
    rows, bucket = K.run_buckets(np.array([5, 7]), np.array([-1, 10]))
    assert rows.tolist() == [0, 1, 1, 1] and bucket.tolist() == [5, 7, 8, 9]
    # a row that is no run inside the week is passed through as its own bucket (for the reader's checks), not lost
    rows, bucket = K.run_buckets(np.array([2016, 3, -1]), np.array([-1, 2, 0]))
    assert rows.tolist() == [0, 1, 2] and bucket.tolist() == [2016, 3, -1]
    rows, bucket = K.run_buckets(np.array([2016, 3]), np.array([-1, 2]), [3])
    assert rows.tolist() == [1] and bucket.tolist() == [3]
