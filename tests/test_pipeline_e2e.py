"""End to end on the real Porto network: simulate -> ingest -> `speedprofile run` (spark-submit per stage).

Checks numbers, not time: estimate error against the simulator's truth, row accounting from stage to stage,
that a second run gives identical tables, and the warehouse's guarantees under concurrency and crashes: two
partitions' pipelines at once give the tables of running them in turn, a stage killed with SIGKILL leaves every
table as last committed, and readers see the old rows or the new while a stage replaces them.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from schemas.speed_estimates import MIN_TRACES
from speedprofile.run import STAGES, run_stages

START, END = "2026-11-06", "2026-11-06"  # one Friday


STAGE_TABLES = ("segment_traversals", "bucketed_traversals", "speed_histograms", "speed_estimates")


def _table(wh: str, name: str) -> pd.DataFrame:
    from speedprofile import tables

    return tables.read_pandas(wh, name)


def _estimates(wh: str) -> pd.DataFrame:
    """speed_estimates one row per segment x bucket (the table stores runs of buckets)."""
    from speedprofile.serve.data import load_estimates

    return load_estimates(wh)


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
    est = _estimates(pipeline["wh"])
    truth = pd.read_parquet(pipeline["truth"])
    observed = est[(est["source"] == "observed") & (est["n_traces"] >= MIN_TRACES)]
    joined = observed.merge(truth, on=["segment_id", "tow_bucket"], suffixes=("", "_true"))
    assert len(joined) >= 50, f"too few observed buckets to judge ({len(joined)})"
    mae = (joined["speed_kph"] - joined["speed_kph_true"]).abs().mean()
    assert mae <= 5.0, f"MAE {mae:.2f} km/h over {len(joined)} buckets"


def test_no_bucket_below_the_trace_threshold_is_published_as_observed(pipeline):
    est = _estimates(pipeline["wh"])
    observed = est[est["source"] == "observed"]
    assert len(observed) >= 50
    # n_traces of an observed row counts its b-2..b+2 window: the rule is on the bucket's own distinct traces
    hist = _table(pipeline["wh"], "speed_histograms")
    own = hist[hist["window"] == f"w1-{END}"].set_index(["segment_id", "tow_bucket"])["n_traces"]
    own_of_observed = own.reindex(pd.MultiIndex.from_frame(observed[["segment_id", "tow_bucket"]])).fillna(0)
    assert (own_of_observed >= MIN_TRACES).all(), f"{int((own_of_observed < MIN_TRACES).sum())} observed below k"
    assert (observed["n_traces"] >= own_of_observed.to_numpy()).all()
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


_KEYS = ("dt", "partition", "window", "trace_id", "piece", "seq", "segment_id", "tow_bucket")


def _snapshot(wh: str) -> dict[str, pa.Table]:
    """Every stage table's committed rows, sorted by its keys (Arrow: a 4 M-row estimate table compares in
    seconds, where pandas text comparison took a minute)."""
    from speedprofile import tables

    out = {}
    for name in STAGE_TABLES:
        t = tables.read_arrow(wh, name)
        keys = [k for k in _KEYS if k in t.column_names]
        keys += [f.name for f in t.schema if f.name not in keys and (pa.types.is_integer(f.type)
                 or pa.types.is_string(f.type) or pa.types.is_boolean(f.type) or pa.types.is_date(f.type))]
        out[name] = t.sort_by([(k, "ascending") for k in keys]).combine_chunks()
    return out


def _assert_same(before: dict[str, pa.Table], wh: str, rtol: float = 0.0) -> None:
    """Same rows, column by column; with rtol, floats may differ in the last bits (sums over rows that reach a
    kernel in another order when other partitions run in the same job or other task sizes are used)."""
    after = _snapshot(wh)
    for name, old in before.items():
        new = after[name]
        assert new.num_rows == old.num_rows, f"{name}: {new.num_rows} rows, before {old.num_rows}"
        assert new.column_names == old.column_names, name
        for col in old.column_names:
            x, y = old.column(col), new.column(col)
            if pa.types.is_floating(x.type):
                xs, ys = x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False)
                if rtol:
                    np.testing.assert_allclose(ys, xs, rtol=rtol, equal_nan=True, err_msg=f"{name}.{col}")
                else:
                    assert np.array_equal(xs, ys, equal_nan=True), f"{name}.{col} differs"
            else:
                assert x.equals(y), f"{name}.{col} differs"


def test_running_again_gives_identical_tables(pipeline):
    wh = pipeline["wh"]
    before = _snapshot(wh)
    run_stages(wh, START, END, pipeline["cells"], STAGES, window_weeks=1, echo=lambda *_: None)
    _assert_same(before, wh)


def test_running_in_process_gives_the_same_tables(pipeline, tmp_path):
    """`run --in-process` (every stage on this session, other task sizes) writes the same rows; float sums may
    differ in the last bits, since rows reach the kernels in another order."""
    wh = pipeline["wh"]
    before = _snapshot(wh)
    run_stages(wh, START, END, pipeline["cells"], STAGES, window_weeks=1, echo=lambda *_: None,
               log_dir=str(tmp_path), in_process=True)
    assert all((tmp_path / f"{s}_{START}_{END}.log").exists() for s in STAGES)
    _assert_same(before, wh, rtol=1e-9)


def _run_cli(wh: str, cells: list[str], stages: tuple[str, ...] | list[str], log_dir: str) -> subprocess.Popen:
    """`speedprofile run --in-process` as its own process group (so a test can kill it with its JVM and Python
    workers): the stages share one local session, one JVM start per run instead of one per stage."""
    cmd = [sys.executable, "-m", "speedprofile.cli", "run", "--warehouse", wh, "--date", START,
           "--partition", ",".join(cells), "--stages", ",".join(stages), "--window-weeks", "1", "--log-dir", log_dir,
           "--in-process"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _busy_cells(pipeline, n: int) -> list[str]:
    est = _estimates(pipeline["wh"])
    observed = est[est["source"] == "observed"].groupby("partition").size().sort_values(ascending=False)
    return list(observed.index[:n])


def test_two_partitions_at_once_give_the_tables_of_running_them_in_turn(pipeline, tmp_path):
    """Two partitions' runs started together on one warehouse both succeed, and every table equals the result of
    running them one after the other. The runs are the last two stages: each commits to two tables the other
    commits to at the same time, as every stage does (the write path is one for all stages)."""
    from speedprofile import tables

    wh = pipeline["wh"]
    a, b = _busy_cells(pipeline, 2)
    stages = STAGES[-2:]
    for c in (a, b):
        proc = _run_cli(wh, [c], stages, str(tmp_path / f"seq-{c}"))
        out = proc.communicate(timeout=1800)[0]
        assert proc.returncode == 0, out[-3000:]
    in_turn = _snapshot(wh)
    commits = len(tables.snapshots(wh, "speed_estimates"))
    procs = [_run_cli(wh, [c], stages, str(tmp_path / c)) for c in (a, b)]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)[-3000:]
    _assert_same(in_turn, wh)
    # Both runs committed: one estimate commit per partition.
    assert len(tables.snapshots(wh, "speed_estimates")) == commits + 2


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (the CLI, its spark-submit group, the JVM, Python workers)."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def _data_files(wh: str, table: str) -> set[str]:
    return set(glob.glob(os.path.join(wh, table, "data", "**", "*.parquet"), recursive=True))


def test_a_stage_killed_mid_write_leaves_the_tables_as_committed_and_a_rerun_completes(pipeline, tmp_path):
    from speedprofile import tables

    wh = pipeline["wh"]
    before = _snapshot(wh)
    snaps = {t: tables.load(wh, t).current_snapshot().snapshot_id for t in STAGE_TABLES}
    files = _data_files(wh, "speed_histograms")
    cells = _busy_cells(pipeline, 2)
    proc = _run_cli(wh, cells, ("build_histograms", "estimate_speeds"), str(tmp_path / "killed"))
    # Kill the run (its spark-submit and Python workers too) as soon as the histogram stage writes data files,
    # i.e. in the middle of its write, before its commit.
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not (_data_files(wh, "speed_histograms") - files):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it wrote anything: " + (proc.stdout.read() if proc.stdout else "")
    _kill_tree(proc.pid)
    proc.wait(timeout=60)
    time.sleep(2)  # let the killed JVM's children go
    for t in STAGE_TABLES:
        assert tables.load(wh, t).current_snapshot().snapshot_id == snaps[t], f"{t} changed by a killed run"
    _assert_same(before, wh)
    # A re-run completes and gives the same tables.
    rerun = _run_cli(wh, cells, ("build_histograms", "estimate_speeds"), str(tmp_path / "rerun"))
    out = rerun.communicate(timeout=1800)[0]
    assert rerun.returncode == 0, out[-3000:]
    _assert_same(before, wh, rtol=1e-9)


def test_readers_see_the_old_rows_or_the_new_while_a_stage_replaces_them(pipeline, tmp_path):
    """A reader without a JVM (pyiceberg, as the gates and `query` read) polls a table while the stage replaces
    its busiest partitions: it always sees exactly the full row count, never none or a half-written table."""
    from speedprofile import tables

    wh = pipeline["wh"]
    expected = len(_table(wh, "speed_estimates"))
    first = tables.load(wh, "speed_estimates").current_snapshot().snapshot_id
    seen: list[tuple[int | None, int]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            tbl = tables.load(wh, "speed_estimates")
            snap = tbl.current_snapshot()
            n = tbl.scan(snapshot_id=snap.snapshot_id, selected_fields=("segment_id",)).to_arrow().num_rows
            seen.append((snap.snapshot_id, n))

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    proc = _run_cli(wh, _busy_cells(pipeline, 3), ("estimate_speeds",), str(tmp_path / "logs"))
    out = proc.communicate(timeout=1800)[0]
    time.sleep(1)
    stop.set()
    reader.join(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert seen and {n for _, n in seen} == {expected}, sorted({n for _, n in seen})
    assert tables.load(wh, "speed_estimates").current_snapshot().snapshot_id != first
