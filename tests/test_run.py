"""`speedprofile run`: command construction, partition resolution and failure reporting."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from speedprofile import run
from speedprofile.cli import main
from speedprofile.errors import UserError


def _warehouse_with_partitions(tmp_path: Path, cells: list[str]) -> str:
    wh = tmp_path / "wh"
    (wh / "road_segments").mkdir(parents=True)
    (wh / "road_segments" / "_partitions.json").write_text(
        json.dumps({"h3_res": 7, "partitions": [{"cell": c} for c in cells]})
    )
    return str(wh)


def test_dry_run_prints_one_submit_per_stage_covering_all_partition_days(tmp_path, capsys):
    wh = _warehouse_with_partitions(tmp_path, ["871f1a000ffffff", "871f1a001ffffff"])
    rc = main(["run", "--warehouse", wh, "--date", "2026-11-02", "--to-date", "2026-11-08", "--all", "--dry-run"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(run.STAGES)
    for stage, line in zip(run.STAGES, lines, strict=True):
        assert f"spark_apps/{stage}.py" in line
        assert "--date 2026-11-02 --to-date 2026-11-08" in line
        assert "--partition 871f1a000ffffff,871f1a001ffffff" in line
        assert line.split()[0].endswith("spark-submit")


def test_master_and_conf_are_passed_to_spark_submit(tmp_path):
    cmd = run.stage_command("match_traces", "W", "2026-11-02", "2026-11-02", ["c"], "spark://h:7077",
                            ["spark.executor.memory=1g"])
    from speedprofile.tables import spark_jars

    # the pinned jars (Iceberg runtime, JDBC drivers, S3A), then the master and the operator's confs
    assert cmd[1:7] == ["--jars", spark_jars(), "--master", "spark://h:7077", "--conf", "spark.executor.memory=1g"]


def test_unknown_stage_and_missing_partition_list_are_one_line_errors(tmp_path, capsys):
    wh = _warehouse_with_partitions(tmp_path, ["871f1a000ffffff"])
    assert main(["run", "--warehouse", wh, "--date", "2026-11-02", "--all", "--stages", "nope"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert main(["run", "--warehouse", str(tmp_path / "empty"), "--date", "2026-11-02", "--all"]) == 2
    err = capsys.readouterr().err.strip()
    assert "network build" in err and len(err.splitlines()) == 1
    with pytest.raises(UserError):
        run.run_stages("W", "2026-11-05", "2026-11-01", ["c"])


def test_failing_stage_names_its_log(tmp_path):
    wh = _warehouse_with_partitions(tmp_path, ["871f1a000ffffff"])
    proc = subprocess.run(
        [sys.executable, "-m", "speedprofile.cli", "run", "--warehouse", wh, "--date", "2026-11-02",
         "--partition", "871f1a000ffffff", "--stages", "match_traces", "--master", "bogus://nowhere"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "stage match_traces failed" in proc.stderr and "log:" in proc.stderr
    assert "Traceback" not in proc.stderr
