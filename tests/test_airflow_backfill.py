"""Backfill by partition through a real scheduler: `airflow backfill create` for two days of one partition writes
exactly those partition-days (and nothing of other partitions or days)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from speedprofile.warehouse import metrics_path
from tests.plugins.orchestration import (
    E2E_CELL,
    SIM_DAYS,
    airflow_services,
    key_lines,
    partition_rows,
    run_airflow,
    spark_connect_conn,
    wait_for,
)

DAG_ID = f"speed_profile__{E2E_CELL}"


def db_rows(home: Path, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(f"file:{home}/airflow.db?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # locked or not yet created: try again on the next poll
        return []
    finally:
        con.close()


def backfill_runs(home: Path) -> list[tuple[str, str]]:
    """(date of the data interval start, state) of every backfill run of the DAG."""
    rows = db_rows(home, "SELECT data_interval_start, state FROM dag_run WHERE dag_id = ? AND run_type = 'backfill'",
                   DAG_ID)
    return sorted((str(start)[:10], state) for start, state in rows)


def task_failures(home: Path) -> str:
    rows = db_rows(home, "SELECT run_id, task_id, state, try_number FROM task_instance WHERE dag_id = ? "
                   "AND state IN ('failed', 'upstream_failed', 'up_for_retry')", DAG_ID)
    logs = sorted((home / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)[-3:]
    tails = "\n".join(f"--- {p}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:]) for p in logs)
    return f"failed task instances: {rows}\n{tails}"


@pytest.fixture
def airflow_services_backfill(airflow_home, airflow_warehouse, connect_url):
    """API server, scheduler and DAG processor over a copy of the ingested e2e warehouse; the stages run on a
    Spark Connect server (`tests/test_dags.py` covers a partition-day through spark-submit)."""
    with airflow_services(airflow_home, airflow_warehouse,
                          {"AIRFLOW_CONN_SPARK_DEFAULT": spark_connect_conn(connect_url)}) as svc:
        yield {"home": airflow_home, "warehouse": airflow_warehouse, **svc}


def table_snapshot(warehouse: Path) -> dict[str, dict[str, int]]:
    """Committed rows per partition of every stage output table."""
    snap = {}
    for table in ("segment_traversals", "bucketed_traversals", "speed_histograms", "speed_estimates"):
        snap[table] = partition_rows(warehouse, table)
    return snap


def create_backfill(home: Path, wh: Path, port: int) -> None:
    """`airflow backfill create` for SIM_DAYS. The scheduler and the DAG processor write the same SQLite file; when
    SQLite answers "database is locked" without waiting (two deferred transactions upgrading at once), the command is
    run again, but only while no backfill row of this DAG exists (a retry never makes a second backfill)."""
    args = ["backfill", "create", "--dag-id", DAG_ID, "--from-date", SIM_DAYS[0], "--to-date", SIM_DAYS[1],
            "--max-active-runs", "1"]
    for attempt in range(4):
        proc = run_airflow(home, args, wh, port=port, check=False)
        out = proc.stdout + proc.stderr
        if proc.returncode == 0:
            return
        if "database is locked" not in out or db_rows(home, "SELECT id FROM backfill WHERE dag_id = ?", DAG_ID):
            break
        time.sleep(2 + 3 * attempt)
    pytest.fail(f"airflow {' '.join(args)} exited {proc.returncode}; key lines:\n{key_lines(out)}\n{out[-2500:]}")


def test_backfill_writes_exactly_the_requested_partition_days(airflow_services_backfill):
    svc = airflow_services_backfill
    home, wh, port = svc["home"], svc["warehouse"], svc["port"]
    wait_for(f"the DAG processor to register {DAG_ID}",
             lambda: db_rows(home, "SELECT dag_id FROM dag WHERE dag_id = ?", DAG_ID), 240,
             on_timeout=lambda: (home / "logs" / "dag-processor.out").read_text()[-3000:])
    run_airflow(home, ["dags", "unpause", DAG_ID], wh, port=port)
    create_backfill(home, wh, port)

    def done():
        runs = backfill_runs(home)
        if any(state == "failed" for _, state in runs):
            pytest.fail(f"backfill run failed: {runs}\n{task_failures(home)}")
        return runs if len(runs) == 2 and all(state == "success" for _, state in runs) else None

    runs = wait_for("the two backfill runs to succeed", done, 2400, every_s=10, on_timeout=lambda: task_failures(home))
    assert runs == [(SIM_DAYS[0], "success"), (SIM_DAYS[1], "success")]

    snap = table_snapshot(wh)
    expected_days = [f"dt={d}/partition={E2E_CELL}" for d in SIM_DAYS]
    assert sorted(snap["segment_traversals"]) == expected_days
    assert sorted(snap["bucketed_traversals"]) == expected_days
    assert all(n > 0 for n in snap["segment_traversals"].values())
    assert sorted(snap["speed_histograms"]) == sorted(
        f"partition={E2E_CELL}/window={w}" for d in SIM_DAYS for w in (f"d{d}", f"w4-{d}"))
    assert list(snap["speed_estimates"]) == [f"partition={E2E_CELL}"]
    for stage in ("match_traces", "bucket_traversals", "build_histograms", "estimate_speeds"):
        for d in SIM_DAYS:
            assert Path(metrics_path(str(wh), stage, d, E2E_CELL)).exists(), (stage, d)
