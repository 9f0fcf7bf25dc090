"""`speedprofile table export|history`: committed rows out as plain hive-partitioned Parquet, commits one line each."""

from __future__ import annotations

from datetime import date

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from schemas import TABLES
from speedprofile import tables
from speedprofile.cli import main

DAY1, DAY2 = date(2024, 3, 5), date(2024, 3, 6)
CELL_A, CELL_B = "87392c8a0ffffff", "87392c8a1ffffff"


def probe_rows(day: date, cell: str, traces: list[str]) -> pa.Table:
    """probes rows of one partition-day (only trace_id, dt and partition set; the rest null)."""
    t = TABLES["probes"]
    n = len(traces)
    cols = {c.name: [None] * n for c in t.columns}
    cols.update(trace_id=traces, piece=[0] * n, source_row=list(range(n)), dt=[day] * n, partition=[cell] * n)
    return pa.Table.from_pydict(cols, schema=t.arrow_schema())


@pytest.fixture
def warehouse(tmp_path) -> str:
    w = str(tmp_path / "wh")
    tables.write_arrow(w, "probes", probe_rows(DAY1, CELL_A, ["a", "b", "c"]), replace=[{"dt": DAY1, "partition": CELL_A}])
    tables.write_arrow(w, "probes", probe_rows(DAY1, CELL_B, ["d"]), replace=[{"dt": DAY1, "partition": CELL_B}])
    tables.write_arrow(w, "probes", probe_rows(DAY2, CELL_A, ["e", "f"]), replace=[{"dt": DAY2, "partition": CELL_A}])
    # a replaced partition-day: its old rows must not be exported
    tables.write_arrow(w, "probes", probe_rows(DAY2, CELL_A, ["g"]), replace=[{"dt": DAY2, "partition": CELL_A}])
    return w


def test_export_writes_committed_rows_as_hive_folders(warehouse, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["table", "export", "probes", "--out", str(out), "--warehouse", warehouse]) == 0
    assert capsys.readouterr().out.strip() == f"probes: 5 rows -> {out / 'probes'}"
    folders = sorted(p.relative_to(out / "probes").as_posix() for p in (out / "probes").glob("*/*") if p.is_dir())
    assert folders == [f"dt={DAY1}/partition={CELL_A}", f"dt={DAY1}/partition={CELL_B}",
                       f"dt={DAY2}/partition={CELL_A}"]
    assert all(list(p.glob("*.parquet")) for p in (out / "probes").glob("*/*"))
    got = ds.dataset(str(out / "probes"), format="parquet", partitioning="hive").to_table()
    rows = sorted(zip(got.column("trace_id").to_pylist(), [str(d) for d in got.column("dt").to_pylist()],
                      got.column("partition").to_pylist(), strict=True))
    assert rows == [("a", str(DAY1), CELL_A), ("b", str(DAY1), CELL_A), ("c", str(DAY1), CELL_A),
                    ("d", str(DAY1), CELL_B), ("g", str(DAY2), CELL_A)]


def test_export_one_partition_day_replaces_the_previous_export(warehouse, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["table", "export", "probes", "--out", str(out), "--warehouse", warehouse]) == 0
    argv = ["table", "export", "probes", "--out", str(out), "--partition", CELL_A, "--date", str(DAY1),
            "--warehouse", warehouse]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"probes: 3 rows -> {out / 'probes'}"
    assert [p.relative_to(out / "probes").as_posix() for p in (out / "probes").glob("*/*")] == [
        f"dt={DAY1}/partition={CELL_A}"]
    got = ds.dataset(str(out / "probes"), format="parquet", partitioning="hive").to_table()
    assert sorted(got.column("trace_id").to_pylist()) == ["a", "b", "c"]


def test_history_prints_one_line_per_commit(warehouse, capsys):
    assert main(["table", "history", "probes", "--warehouse", warehouse]) == 0
    lines = capsys.readouterr().out.splitlines()
    snaps = tables.snapshots(warehouse, "probes")
    assert len(lines) == len(snaps) >= 4
    assert [ln.split()[0] for ln in lines] == [str(s["snapshot_id"]) for s in snaps]
    assert lines[-1].endswith("5 total")


def test_bad_input_is_a_one_line_error(warehouse, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["table", "export", "probes", "--out", out, "--date", "2024-13-01", "--warehouse", warehouse]) == 2
    assert "is not a date" in capsys.readouterr().err
    assert main(["table", "export", "road_segments", "--out", out, "--date", str(DAY1), "--warehouse", warehouse]) == 2
    assert "has no dt key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["table", "history", "no_such_table", "--warehouse", warehouse])


def test_export_as_of_a_snapshot_gives_the_rows_before_a_replace(warehouse, tmp_path, capsys):
    """A backfill's before and after: the snapshot before DAY2/CELL_A was replaced still has e and f."""
    snaps = tables.snapshots(warehouse, "probes")
    before = next(s["snapshot_id"] for s in reversed(snaps) if s["total_rows"] == 6)
    out = tmp_path / "before"
    assert main(["table", "export", "probes", "--out", str(out), "--date", str(DAY2), "--snapshot", str(before),
                 "--warehouse", warehouse]) == 0
    got = ds.dataset(str(out / "probes"), format="parquet", partitioning="hive").to_table()
    assert sorted(got.column("trace_id").to_pylist()) == ["e", "f"]
    capsys.readouterr()
    assert main(["table", "export", "probes", "--out", str(out), "--snapshot", "12345",
                 "--warehouse", warehouse]) == 2
    assert "no such snapshot" in capsys.readouterr().err
