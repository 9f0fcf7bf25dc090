"""End to end on the real Porto network: simulate -> ingest -> `speedprofile run` (spark-submit per stage).

Checks numbers, not time: estimate error against the simulator's truth, row accounting from stage to stage,
and that a second run gives identical tables.
"""

from __future__ import annotations

import glob
import json
import os

import pandas as pd
import pyarrow.dataset as ds
import pytest

from schemas.speed_estimates import MIN_TRACES
from speedprofile.run import STAGES, run_stages

START, END = "2026-11-06", "2026-11-06"  # one Friday


def _table(wh: str, name: str) -> pd.DataFrame:
    return ds.dataset(os.path.join(wh, name), format="parquet", partitioning="hive").to_table().to_pandas()


def _metrics(wh: str, stage: str) -> list[dict]:
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(wh, "_metrics", stage, "*", "*.json")))]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, data_dir, spark):
    from speedprofile.ingest.pipeline import ingest
    from speedprofile.network.build import build
    from speedprofile.simulate.fleet import simulate
    from speedprofile.warehouse import partition_cells

    root = tmp_path_factory.mktemp("e2e")
    wh = str(root / "warehouse")
    build(wh, osm=str(data_dir / "osm_porto" / "porto.osm.pbf"))
    simulate(wh, str(root / "sim"), days=1, vehicles=600, interval_s=10, noise_m=5, seed=3, start_date=START)
    ingest(spark, wh, [str(root / "sim" / "probes")])
    cells = partition_cells(wh)
    run_stages(wh, START, END, cells, window_weeks=1)
    return {"wh": wh, "truth": str(root / "sim" / "truth"), "cells": cells}


def test_observed_estimates_are_close_to_the_simulator_truth(pipeline):
    est = _table(pipeline["wh"], "speed_estimates")
    truth = pd.read_parquet(pipeline["truth"])
    observed = est[(est["source"] == "observed") & (est["n_traces"] >= MIN_TRACES)]
    joined = observed.merge(truth, on=["segment_id", "tow_bucket"], suffixes=("", "_true"))
    assert len(joined) >= 50, f"too few observed buckets to judge ({len(joined)})"
    mae = (joined["speed_kph"] - joined["speed_kph_true"]).abs().mean()
    assert mae <= 5.0, f"MAE {mae:.2f} km/h over {len(joined)} buckets"


def test_no_bucket_below_the_trace_threshold_is_published_as_observed(pipeline):
    est = _table(pipeline["wh"], "speed_estimates")
    assert (est.loc[est["source"] == "observed", "n_traces"] >= MIN_TRACES).all()
    assert set(est.groupby("segment_id")["tow_bucket"].nunique()) == {2016}


def test_row_accounting_holds_from_stage_to_stage(pipeline):
    wh = pipeline["wh"]
    probes = _table(wh, "probes")
    owned = probes[~probes["is_context"]]
    # Pieces homed in a cell without roads (outside the network's partition list) are matched by no partition job.
    in_network = owned["partition"].isin(pipeline["cells"])
    match = _metrics(wh, "match_traces")
    assert sum(m["fixes_in"] for m in match) == int(in_network.sum())
    assert in_network.mean() > 0.95
    for m in match:
        assert m["rows_in"] == m["rows_out"] + sum(m["rejected"].values())
    traversals = _table(wh, "segment_traversals")
    assert sum(m["rows_out"] for m in match) == len(traversals)
    bucket = _metrics(wh, "bucket_traversals")
    assert sum(m["rows_in"] for m in bucket) == len(traversals)
    for m in bucket:
        assert m["rows_in"] == m["rows_out"] + sum(m["rejected"].values())
    bucketed = _table(wh, "bucketed_traversals")
    assert sum(m["rows_out"] for m in bucket) == len(bucketed)
    hist = _table(wh, "speed_histograms")
    daily = hist[hist["window"].str.startswith("d")]
    assert daily["n_obs"].sum() == len(bucketed)
    window = hist[hist["window"] == f"w1-{END}"]
    assert window["n_obs"].sum() == len(bucketed)
    assert (daily["bin_counts"].map(sum) == daily["n_obs"]).all()


def test_match_rate_is_high_on_clean_simulated_traces(pipeline):
    match = _metrics(pipeline["wh"], "match_traces")
    fixes_in = sum(m["fixes_in"] for m in match)
    matched = sum(m["fixes_matched"] for m in match)
    assert fixes_in > 0 and matched / fixes_in >= 0.95


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("dt", "partition", "window", "trace_id", "piece", "seq", "segment_id", "tow_bucket") if c in df]
    return df.sort_values(keys).reset_index(drop=True)


def test_running_again_gives_identical_tables(pipeline):
    wh = pipeline["wh"]
    before = {t: _table(wh, t) for t in ("segment_traversals", "bucketed_traversals", "speed_histograms", "speed_estimates")}
    run_stages(wh, START, END, pipeline["cells"], STAGES, window_weeks=1, echo=lambda *_: None)
    for name, old in before.items():
        pd.testing.assert_frame_equal(_sorted(old).astype(str), _sorted(_table(wh, name)).astype(str), obj=name)


def test_running_in_process_gives_the_same_tables(pipeline, tmp_path):
    """`run --in-process` (every stage on this session, other task sizes) writes the same rows; float sums may
    differ in the last bits, since rows reach the kernels in another order."""
    wh = pipeline["wh"]
    before = {t: _table(wh, t) for t in ("segment_traversals", "bucketed_traversals", "speed_histograms", "speed_estimates")}
    run_stages(wh, START, END, pipeline["cells"], STAGES, window_weeks=1, echo=lambda *_: None,
               log_dir=str(tmp_path), in_process=True)
    assert all((tmp_path / f"{s}_{START}_{END}.log").exists() for s in STAGES)
    for name, old in before.items():
        a, b = _sorted(old), _sorted(_table(wh, name))
        floats = [c for c in a.columns if a[c].dtype.kind == "f"]
        pd.testing.assert_frame_equal(a.drop(columns=floats).astype(str), b.drop(columns=floats).astype(str), obj=name)
        pd.testing.assert_frame_equal(a[floats], b[floats], check_exact=False, rtol=1e-9, obj=name)
