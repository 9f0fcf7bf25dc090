"""Stages as Spark Connect clients of a long-lived server: same tables as spark-submit, through `run` and Airflow."""

import subprocess

import pytest

from speedprofile.cli import main as sp
from tests.plugins.orchestration import (
    AIRFLOW,
    E2E_CELL,
    REPO,
    SIM_DAYS,
    airflow_env,
    key_lines,
    partition_folders,
    spark_connect_conn,
)
from tests.seed import copy_warehouse, table_rows

TABLES = ("segment_traversals", "bucketed_traversals", "speed_histograms", "speed_estimates")


def test_server_binds_loopback_and_status_answers(connect_url, capsys):
    host, port = connect_url.removeprefix("sc://").split(":")
    assert host == "127.0.0.1"
    assert sp(["server", "status", "--port", port]) == 0
    assert "answering" in capsys.readouterr().out


def test_run_remote_writes_the_same_tables_as_a_local_run(airflow_warehouse, tmp_path, connect_url):
    # the local side runs the same apps in this process (test_dags runs them through spark-submit)
    remote_wh = copy_warehouse(airflow_warehouse, tmp_path / "remote")
    args = ["run", "--date", SIM_DAYS[0], "--to-date", SIM_DAYS[1], "--all"]
    assert sp([*args, "--warehouse", str(airflow_warehouse), "--in-process"]) == 0
    assert sp([*args, "--warehouse", str(remote_wh), "--remote", connect_url]) == 0
    for table in TABLES:
        local, remote = table_rows(airflow_warehouse, table), table_rows(remote_wh, table)
        assert local, table
        assert local == remote, table
    logs = sorted((remote_wh / "_logs").glob("match_traces_*.log"))
    assert logs and "spark-submit" not in logs[-1].read_text()


def test_ingest_remote_writes_the_same_rows_as_a_local_session(ingest_fixtures, tmp_path, connect_url):
    from tests.plugins.ingest import make_partition_only_warehouse

    inputs = str(ingest_fixtures / "input")
    clock = ["--now", "2026-11-30T00:00:00Z"]
    local_wh = make_partition_only_warehouse(tmp_path / "local", 9)
    remote_wh = make_partition_only_warehouse(tmp_path / "remote", 9)
    assert sp(["ingest", inputs, "--warehouse", local_wh, *clock]) == 0
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "speedprofile"), "ingest", inputs, "--warehouse", remote_wh,
                           "--remote", connect_url, *clock], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ingested" in proc.stdout
    for table in ("probes", "rejected_probes", "rejected_files"):
        local, remote = table_rows(local_wh, table), table_rows(remote_wh, table)
        assert local == remote, table
    assert table_rows(local_wh, "probes")
    # the server's Python workers run under the daemon that ends itself when idle (speedprofile.pydaemon)
    daemons = server_python_daemons(connect_url)
    assert daemons and all("speedprofile.pydaemon" in d for d in daemons), daemons


def server_python_daemons(url: str) -> list[str]:
    """Command lines of the Python worker daemons started by the Connect server listening at url."""
    from pathlib import Path

    port = url.rsplit(":", 1)[1]
    procs = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs[int(d.name)] = (ppid, cmd)
    servers = {pid for pid, (_, cmd) in procs.items()
               if "SparkConnectServer" in cmd and f"spark.connect.grpc.binding.port={port}" in cmd}
    return [cmd for pid, (ppid, cmd) in procs.items() if ppid in servers and "daemon" in cmd and "python" in cmd]


def test_airflow_partition_day_on_a_spark_connect_connection(airflow_warehouse, airflow_home, connect_url):
    env = airflow_env(airflow_home, airflow_warehouse)
    host, port = connect_url.removeprefix("sc://").split(":")
    env["AIRFLOW_CONN_SPARK_DEFAULT"] = spark_connect_conn(connect_url)
    proc = subprocess.run([AIRFLOW, "dags", "test", f"speed_profile__{E2E_CELL}", SIM_DAYS[1]], env=env,
                          cwd=str(REPO), capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert "DagRun Finished" in out and "state=success" in out, key_lines(out)
    assert out.count(f"Spark Connect client of sc://{host}:{port}") == 4
    day = SIM_DAYS[0]
    for table in ("segment_traversals", "bucketed_traversals"):
        assert f"dt={day}/partition={E2E_CELL}" in partition_folders(airflow_warehouse, table), table
    assert f"partition={E2E_CELL}" in partition_folders(airflow_warehouse, "speed_estimates")


def test_remote_and_in_process_commands():
    from speedprofile import run
    from speedprofile.errors import UserError

    cmd = run.stage_command("match_traces", "W", "2026-11-02", "2026-11-02", ["c"], remote="sc://127.0.0.1:1")
    assert cmd[0].endswith("python") or "python" in cmd[0]
    assert cmd[1].endswith("spark_apps/match_traces.py")
    assert run.submit_env("sc://127.0.0.1:1")["SPARK_REMOTE"] == "sc://127.0.0.1:1"
    with pytest.raises(UserError):
        run.stage_command("match_traces", "W", "2026-11-02", "2026-11-02", ["c"], master="local[2]",
                          remote="sc://127.0.0.1:1")
