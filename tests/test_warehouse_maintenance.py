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


def test_a_table_from_before_a_new_column_gains_it_and_keeps_its_rows(tmp_path):
    """speed_estimates written by a release without tow_bucket_end: opening the warehouse adds the column (metadata
    only), the old rows read as one bucket each, and new run-length rows are written beside them."""
    from speedprofile.serve.data import load_estimates

    wh = str(tmp_path / "wh")
    with tables.load(wh, "speed_estimates").update_schema() as update:
        update.delete_column("tow_bucket_end")
    old_table = tables.load(wh, "speed_estimates")
    old_table.append(_rows("A", 10.0).drop_columns(["tow_bucket_end"]).cast(old_table.schema().as_arrow()))
    tables._py_catalogs.clear()  # a new process opens the warehouse

    assert "tow_bucket_end" in {f.name for f in tables.load(wh, "speed_estimates").schema().fields}
    runs = _rows("B", 30.0, n=2)
    runs = runs.set_column(runs.schema.get_field_index("tow_bucket"), "tow_bucket", pa.array([0, 700], pa.int16()))
    runs = runs.set_column(runs.schema.get_field_index("tow_bucket_end"), "tow_bucket_end",
                           pa.array([700, 2016], pa.int16()))
    tables.write_arrow(wh, "speed_estimates", runs, [{"partition": "B"}])
    got = load_estimates(wh)
    a = got[got["partition"] == "A"]
    assert a["tow_bucket"].tolist() == [0, 1, 2, 3] and a["tow_bucket_end"].tolist() == [1, 2, 3, 4]
    assert (a["speed_kph"] == 10.0).all()
    b = got[got["partition"] == "B"]
    assert len(b) == 2016 and b["tow_bucket"].tolist() == list(range(2016))
    assert b.groupby("segment_id")["tow_bucket"].agg(["min", "max", "size"]).values.tolist() == [[0, 699, 700],
                                                                                                 [700, 2015, 1316]]
    assert load_estimates(wh, ["B"], buckets=[5, 699, 700, 2015])["segment_id"].tolist() == [0, 0, 1, 1]
