"""Snapshot history of the Iceberg tables: time travel to a replaced partition-day, expiry on a schedule (the
`warehouse_maintenance` DAG) and removal of files no snapshot references."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from schemas import SPEED_ESTIMATES
from speedprofile import tables


def _rows(partition: str, speed: float, n: int = 4) -> pa.Table:
    cols = {c.name: pa.nulls(n, f.type) for c, f in zip(SPEED_ESTIMATES.columns, SPEED_ESTIMATES.arrow_schema(), strict=True)}
    cols.update(segment_id=pa.array(range(n), pa.int64()), tow_bucket=pa.array(range(n), pa.int16()),
                speed_kph=pa.array([speed] * n), partition=pa.array([partition] * n))
    return pa.table(cols, schema=SPEED_ESTIMATES.arrow_schema())


@pytest.fixture
def history_warehouse(tmp_path) -> str:
    """speed_estimates with three commits: A at 10 km/h, A replaced by 20 km/h, then B added."""
    wh = str(tmp_path / "wh")
    tables.write_arrow(wh, "speed_estimates", _rows("A", 10.0), [{"partition": "A"}])
    tables.write_arrow(wh, "speed_estimates", _rows("A", 20.0), [{"partition": "A"}])
    tables.write_arrow(wh, "speed_estimates", _rows("B", 30.0), [{"partition": "B"}])
    return wh


def test_replacing_a_partition_keeps_the_old_rows_readable_as_of_their_snapshot(history_warehouse):
    wh = history_warehouse
    snaps = tables.snapshots(wh, "speed_estimates")
    assert snaps[0]["total_rows"] == 4 and snaps[-1]["total_rows"] == 8
    first = snaps[0]["snapshot_id"]
    before = tables.read_arrow(wh, "speed_estimates", snapshot_id=first)
    now = tables.read_arrow(wh, "speed_estimates", partitions=["A"])
    assert set(before.column("speed_kph").to_pylist()) == {10.0}
    assert set(now.column("speed_kph").to_pylist()) == {20.0}


def test_expiry_keeps_the_newest_snapshots_and_the_current_rows(history_warehouse):
    wh = history_warehouse
    n = len(tables.snapshots(wh, "speed_estimates"))
    expired = tables.expire_snapshots(wh, datetime.now(UTC) + timedelta(seconds=1), retain_last=1,
                                      tables=["speed_estimates"])
    assert expired == {"speed_estimates": n - 1}
    assert len(tables.snapshots(wh, "speed_estimates")) == 1
    data = tables.read_arrow(wh, "speed_estimates")
    assert sorted(set(data.column("speed_kph").to_pylist())) == [20.0, 30.0] and data.num_rows == 8


def test_unreferenced_files_are_removed_once_old_and_never_a_live_one(history_warehouse):
    wh = history_warehouse
    tables.expire_snapshots(wh, datetime.now(UTC) + timedelta(seconds=1), retain_last=1, tables=["speed_estimates"])
    stray = Path(wh) / "speed_estimates" / "data" / "partition=A" / "killed-write.parquet"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"PAR1 a write that never committed")
    before = sorted(str(p) for p in (Path(wh) / "speed_estimates").rglob("*") if p.is_file())
    # A file younger than the cutoff may belong to a write in progress: it stays.
    young = tables.remove_orphan_files(wh, datetime.now(UTC) - timedelta(hours=1), tables=["speed_estimates"])
    assert young == {"speed_estimates": 0} and stray.exists()
    time.sleep(1.1)
    removed = tables.remove_orphan_files(wh, datetime.now(UTC), tables=["speed_estimates"])
    assert removed["speed_estimates"] >= 2 and not stray.exists()  # the stray and the replaced A file at least
    after = sorted(str(p) for p in (Path(wh) / "speed_estimates").rglob("*") if p.is_file())
    assert len(after) == len(before) - removed["speed_estimates"]
    data = tables.read_arrow(wh, "speed_estimates")
    assert sorted(set(data.column("speed_kph").to_pylist())) == [20.0, 30.0] and data.num_rows == 8


def test_the_maintenance_dag_expires_on_its_schedule(history_warehouse):
    from speedprofile.orchestration import build_maintenance_dag, maintain_warehouse

    dag = build_maintenance_dag(history_warehouse)
    assert dag.dag_id == "warehouse_maintenance" and list(dag.task_dict) == ["expire_snapshots"]
    assert dag.timetable.can_be_scheduled  # scheduled, not manual only
    n = len(tables.snapshots(history_warehouse, "speed_estimates"))
    out = maintain_warehouse(history_warehouse, retention_days=0, keep_last=2)
    assert out["expired"]["speed_estimates"] == n - 2
    assert len(tables.snapshots(history_warehouse, "speed_estimates")) == 2
