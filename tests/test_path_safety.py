"""Names that become paths (partition cells, dates, table and file names) never lead outside the warehouse:
validated H3 cells of the network and real dates at the CLI and the stage apps, and a warehouse layer that
refuses any path resolving outside its root. Fuzzed with hypothesis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speedprofile import run as run_verb
from speedprofile import tables, validate
from speedprofile import warehouse as wh
from speedprofile.cli import main
from speedprofile.errors import UserError
from speedprofile.jobargs import parse_job_args

REPO = Path(__file__).resolve().parents[1]
CELL = "871f1a000ffffff"
OTHER = "871f1a001ffffff"


def make_warehouse(tmp_path: Path, cells: list[str]) -> tuple[Path, Path]:
    """A warehouse whose partition list holds `cells`, and a victim folder beside it (outside the warehouse)."""
    root = tmp_path / "wh"
    (root / "road_segments").mkdir(parents=True)
    (root / "road_segments" / "_partitions.json").write_text(
        json.dumps({"h3_res": 7, "partitions": [{"cell": c} for c in cells]}))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("must survive")
    return root, victim


def under(root: str, path: str) -> bool:
    """Independent of the code under test: normalised absolute path equals root or lies below it."""
    r = os.path.normpath(os.path.abspath(root.removeprefix("file://")))
    p = os.path.normpath(os.path.abspath(path.removeprefix("file://")))
    return os.path.commonpath([r, p]) == r


# ---- the audit's traversal, end to end -----------------------------------------------------------------------


def test_run_refuses_a_partition_that_climbs_out_of_the_warehouse(tmp_path):
    root, victim = make_warehouse(tmp_path, [CELL])
    # <wh>/segment_traversals/dt=D/partition=x/../../../../victim is the victim folder
    proc = subprocess.run(
        [sys.executable, "-m", "speedprofile.cli", "run", "--warehouse", str(root), "--date", "2026-11-02",
         "--partition", "x/../../../../victim", "--stages", "match_traces"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"},
    )
    assert (victim / "keep.txt").read_text() == "must survive"
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "not an H3 cell" in err, err
    # nothing committed (the table layer may have created the empty table, never a snapshot of it)
    assert not (root / "segment_traversals").exists() or not tables.snapshots(str(root), "segment_traversals")


def test_stage_app_refuses_a_traversing_partition_before_any_spark_work(tmp_path):
    from spark_apps import match_traces

    root, victim = make_warehouse(tmp_path, [CELL])
    with pytest.raises(UserError, match="not an H3 cell"):
        match_traces.main(["--warehouse", str(root), "--date", "2026-11-02",
                           "--partition", f"{CELL},x/../../../../victim"])
    assert (victim / "keep.txt").exists()


def test_run_all_refuses_a_partition_list_with_a_bad_cell(tmp_path, capsys):
    root, victim = make_warehouse(tmp_path, [CELL, "../../../victim"])
    assert main(["run", "--warehouse", str(root), "--date", "2026-11-02", "--all", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "_partitions.json" in err and "not an H3 cell" in err
    with pytest.raises(UserError):
        wh.partition_cells(str(root))
    assert (victim / "keep.txt").exists()


def test_run_accepts_only_cells_of_the_network(tmp_path, capsys):
    root, _ = make_warehouse(tmp_path, [CELL])
    assert main(["run", "--warehouse", str(root), "--date", "2026-11-02", "--partition", OTHER, "--dry-run"]) == 2
    assert "not a partition of the network" in capsys.readouterr().err
    assert main(["run", "--warehouse", str(root), "--date", "2026-11-02", "--partition", CELL, "--dry-run"]) == 0
    assert f"--partition {CELL}" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["2026-02-30", "2026-W45-1", "20261102", "2026-11-02/../../x", "2026-1-2", "", "tomorrow"])
def test_dates_must_be_real_yyyy_mm_dd_dates(tmp_path, capsys, bad):
    root, _ = make_warehouse(tmp_path, [CELL])
    assert main(["run", "--warehouse", str(root), f"--date={bad}", "--partition", CELL, "--dry-run"]) == 2
    assert "not a date" in capsys.readouterr().err
    with pytest.raises(UserError, match="not a date"):
        parse_job_args(["--warehouse", str(root), "--date", "2026-11-02", f"--to-date={bad}", "--partition", CELL], "t")


# ---- the warehouse layer -------------------------------------------------------------------------------------


@pytest.mark.parametrize("root", ["/tmp/wh", "wh", "file:///tmp/wh", "s3a://bucket/warehouse"])
def test_warehouse_paths_refuse_to_leave_the_root(root):
    for build in (
        lambda: wh.join(root, ".."),
        lambda: wh.join(root, "probes", "../../x"),
        lambda: wh.table_path(root, "../elsewhere"),
        lambda: wh.partition_path(root, "probes", dt="2026-01-01", partition="x/../../../.."),
        lambda: wh.partition_path(root, "probes", dt="..", partition=CELL),
        lambda: wh.partition_path(root, "probes", partition="a\x00b"),
        lambda: wh.metrics_path(root, "match_traces", "2026-01-01", "../../../x"),
        lambda: wh.metrics_path(root, "../../x", "2026-01-01", CELL),
    ):
        with pytest.raises(wh.PathOutsideWarehouse):
            build()
    ok = wh.partition_path(root, "probes", dt="2026-01-01", partition=CELL)
    assert ok == f"{root}/probes/dt=2026-01-01/partition={CELL}"
    assert wh.metrics_path(root, "match_traces", "2026-01-01", CELL).startswith(f"{root}/_metrics/match_traces/")
    # another bucket is outside too
    if root.startswith("s3a://"):
        assert not wh.is_within(root, "s3a://other/warehouse/probes")


def test_write_table_keeps_a_traversing_partition_value_inside_the_table(spark, tmp_path):
    """A partition value is data to the table layer, never a path: a row whose cell reads `x/../../../../victim`
    is committed inside the table's own folder and nothing outside the warehouse is touched."""
    from urllib.parse import urlparse

    import pandas as pd

    from schemas import TABLES
    from speedprofile.spark import read_table, write_table
    from tests.seed import arrow_rows

    root, victim = make_warehouse(tmp_path, [CELL])
    before = sorted(str(p) for p in tmp_path.rglob("*") if not p.is_relative_to(root))
    bad = "x/../../../../victim"
    rows = arrow_rows("segment_traversals", pd.DataFrame({"segment_id": [1], "dt": ["2026-11-02"], "partition": [bad]}))
    df = spark.createDataFrame(rows.to_pandas(), schema=TABLES["segment_traversals"].spark_schema())
    write_table(df, str(root), "segment_traversals", [{"dt": "2026-11-02", "partition": bad}])
    assert (victim / "keep.txt").read_text() == "must survive"
    assert sorted(str(p) for p in tmp_path.rglob("*") if not p.is_relative_to(root)) == before
    files = [urlparse(t.file.file_path).path for t in tables.load(str(root), "segment_traversals").scan().plan_files()]
    assert files and all(under(str(root / "segment_traversals" / "data"), f) for f in files), files
    got = read_table(spark, str(root), "segment_traversals", partitions=[bad]).collect()
    assert [(r["segment_id"], r["partition"]) for r in got] == [(1, bad)]


# ---- fuzzing -------------------------------------------------------------------------------------------------

NASTY = ["..", ".", "/", "../", "..\\", "%2e%2e", "%2f", "\x00", "~", "//", "/..", "..;", "\n", " ", ",", "=", "*"]
PIECES = st.sampled_from(NASTY) | st.sampled_from([CELL, OTHER, "871f1a000", "x", "etc", "2026-11-02"])
NAMES = (
    st.lists(PIECES, min_size=1, max_size=6).map("".join)
    | st.text(alphabet="./\\\x00%=,~ abcdef0123456789-", max_size=30)
    | st.text(max_size=20)
)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(partition=NAMES, day=NAMES | st.dates().map(str))
def test_fuzzed_job_arguments_never_build_a_path_outside_the_warehouse(tmp_path, partition, day):
    root = str(tmp_path / "wh")
    try:
        args = parse_job_args([f"--warehouse={root}", f"--date={day}", f"--partition={partition}"], "fuzz")
    except UserError:
        return
    for cell in args.partitions:
        assert validate.CELL_RE.fullmatch(cell) and h3.is_valid_cell(cell)
    for d in args.dates:
        for cell in args.partitions:
            for path in (wh.partition_path(root, "segment_traversals", dt=d, partition=cell),
                         wh.metrics_path(root, "match_traces", d, cell)):
                assert under(root, path), path


@FUZZ
@given(partition=NAMES)
def test_fuzzed_run_partition_is_refused_or_a_network_cell(tmp_path, partition):
    root = tmp_path / "wh"
    if not root.exists():
        make_warehouse(tmp_path, [CELL, OTHER])
    try:
        cells = run_verb.resolve_partitions(str(root), partition, False)
    except UserError:
        return
    assert set(cells) <= {CELL, OTHER}


@FUZZ
@given(parts=st.lists(NAMES, min_size=1, max_size=4), value=NAMES)
def test_fuzzed_names_never_escape_the_warehouse_layer(parts, value):
    for root in ("/srv/wh", "rel/wh", "file:///srv/wh"):
        for build in (lambda r=root: wh.join(r, *parts),
                      lambda r=root: wh.partition_path(r, parts[0], dt=value, partition=value),
                      lambda r=root: wh.metrics_path(r, parts[0], value, value)):
            try:
                path = build()
            except UserError:
                continue
            assert under(root, path), (root, parts, value, path)
    try:
        remote = wh.join("s3a://bucket/wh", *parts)
    except UserError:
        return
    assert remote.startswith("s3a://bucket/wh") and under("/wh", remote.removeprefix("s3a://bucket"))


def test_dags_are_made_only_for_valid_cells_of_the_partition_list(tmp_path, monkeypatch):
    from speedprofile import orchestration

    root, _ = make_warehouse(tmp_path, [CELL, "x/../../../victim", OTHER, "871f1a000fffff"])
    monkeypatch.delenv("SPEEDPROFILE_PARTITIONS_FILE", raising=False)
    assert orchestration.partition_cells(str(root)) == [CELL, OTHER]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(verb=st.sampled_from(["run", "status"]), partition=NAMES, day=NAMES | st.dates().map(str))
def test_fuzzed_cli_arguments_end_in_a_clear_error_and_touch_nothing_outside(tmp_path, capsys, verb, partition, day):
    root = tmp_path / "wh"
    if not root.exists():
        make_warehouse(tmp_path, [CELL, OTHER])
    before = sorted(str(p) for p in tmp_path.rglob("*") if not p.is_relative_to(root))
    argv = {"run": ["run", "--warehouse", str(root), f"--date={day}", f"--partition={partition}", "--dry-run"],
            "status": ["status", "--warehouse", str(root), f"--partition={partition}", f"--from={day}", f"--to={day}"]}
    try:
        rc = main(argv[verb])
    except SystemExit as exc:  # argparse refusing the value itself (e.g. an empty flag)
        rc = exc.code
    err = capsys.readouterr().err
    assert rc in (0, 2), err
    assert "Traceback" not in err
    assert sorted(str(p) for p in tmp_path.rglob("*") if not p.is_relative_to(root)) == before
