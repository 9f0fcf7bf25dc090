"""ingest_probes: raw files -> probes / rejected_probes; row accounting, formats, border rule, idempotency, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h3
import pandas as pd
import pytest

from schemas.probes import CONTEXT_FIXES, PROBES
from schemas.rejected_probes import REASONS, REJECTED_PROBES
from speedprofile.ingest import formats, kernel

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "ingest_probes"
INPUT = FIX / "input"
EXPECTED = json.loads((FIX / "expected" / "counts.json").read_text())
PIECES = json.loads((FIX / "expected" / "pieces.json").read_text())
BATCH = ["bad_rows.csv", "times.csv", "midnight.csv", "probes.jsonl", "track.gpx", "border.csv"]


def _records_from_csv(name: str) -> pd.DataFrame:
    lines = (INPUT / name).read_text().split("\n")
    if lines and lines[-1] == "":
        lines = lines[:-1]  # the newline ending the last line does not start another line
    header = formats.check_csv_header(name, lines[0])
    return kernel.parse_csv_lines(lines[1:], list(header), name, list(range(2, len(lines) + 1)))


def _kernel_run(name: str, h3_res: int = 9) -> pd.DataFrame:
    parsed = kernel.validate_records(_records_from_csv(name))
    out = [kernel.rejects_from_parsed(parsed[parsed["reason"].notna()])]
    for _, group in parsed[parsed["reason"].isna()].groupby("trace_id"):
        out.append(kernel.process_trace(group, h3_res))
    return pd.concat(out, ignore_index=True)


# ---- kernel (no JVM) -------------------------------------------------------------------------------------------

def test_kernel_rejects_every_bad_row_class_with_its_reason():
    out = _kernel_run("bad_rows.csv")
    rejected = Counter(out.loc[out["reason"].notna(), "reason"])
    kept = int((out["reason"].isna() & ~out["is_context"].fillna(False).astype(bool)).sum())
    exp = EXPECTED["bad_rows.csv"]
    assert dict(rejected) == exp["rejected"]
    assert kept == exp["rows_kept"]
    assert kept + sum(rejected.values()) == exp["rows_in"]
    assert set(rejected) <= set(REASONS)
    by_row = dict(zip(out["source_row"], out["reason"], strict=True))
    assert by_row[4] == "duplicate_fix" and by_row[5] == "conflicting_fix" and by_row[6] == "speed_spike"
    assert by_row[18] == "implausible_time" and by_row[20] == "unparsable_line"


def test_timestamps_epoch_seconds_milliseconds_and_iso_offsets_agree():
    parsed = kernel.validate_records(_records_from_csv("times.csv"))
    assert parsed["reason"].isna().all()
    times = {t: sorted(g["timestamp_utc"]) for t, g in parsed.groupby("trace_id")}
    assert times["t_iso"] == times["t_s"] == times["t_ms"]
    assert times["t_s"][0] == pd.Timestamp("2024-03-01T08:00:00Z")
    assert times["t_s"][2] == pd.Timestamp("2024-03-01T08:01:00Z")


def test_naive_iso_time_is_rejected_and_numeric_magnitude_decides_unit():
    ts, reason, _ = kernel.parse_timestamps(pd.Series(["2024-03-01T08:00:00", 1709280000, 1709280000000, "1709280000"],
                                                      dtype="object"))
    assert reason.tolist() == ["unparsable_time", None, None, None]
    assert ts[1] == ts[2] == ts[3] == pd.Timestamp("2024-03-01T08:00:00Z")


def test_spike_mask_flags_isolated_jumps_only():
    t = pd.Series([0.0, 10.0, 20.0, 30.0, 40.0, 50.0])
    lon = pd.Series([-8.61, -8.6088, -8.50, -8.6064, -8.50, -8.50])
    lat = pd.Series([41.15] * 6)
    mask = kernel.spike_mask(t.to_numpy(), lon.to_numpy(), lat.to_numpy())
    # fix 2 is an isolated spike; fixes 4-5 are a jump that stays (not isolated: the trace moved).
    assert mask.tolist() == [False, False, True, False, False, False]


def test_border_trace_cut_into_pieces_with_context_across_spatial_cuts():
    out = _kernel_run("border.csv")
    owned = out[out["reason"].isna() & ~out["is_context"].astype(bool)]
    ctx = out[out["is_context"].astype(bool)]
    assert sorted(owned["source_row"]) == list(range(2, 32))  # union of owned rows = input rows, once each
    expected = PIECES["border.csv"]["east"]
    got = {str(p): sorted(g["source_row"]) for p, g in owned.groupby("piece")}
    assert got == {p: rows for p, (_, rows) in expected.items()}
    for piece, g in owned.groupby("piece"):
        home = g["partition"].iloc[0]
        first = g.sort_values("timestamp_utc").iloc[0]
        assert home == h3.latlng_to_cell(first["lat_deg"], first["lon_deg"], 9)
        ring = set(h3.grid_disk(home, 1))
        assert all(h3.latlng_to_cell(a, o, 9) in ring for a, o in zip(g["lat_deg"], g["lon_deg"], strict=True))
        c = ctx[ctx["piece"] == piece]
        assert (c["partition"] == home).all()
        sizes = [len(expected[str(k)][1]) for k in (piece - 1, piece + 1) if str(k) in expected]
        assert len(c) == sum(min(CONTEXT_FIXES, n) for n in sizes)
        assert not set(c["source_row"]) & set(g["source_row"])


def test_time_gap_cut_has_no_context_and_piece_dt_is_first_fix_date():
    out = _kernel_run("midnight.csv")
    assert not out["is_context"].astype(bool).any()
    for trace, pieces in PIECES["midnight.csv"].items():
        t = out[out["trace_id"] == trace]
        for piece, (dt, rows) in pieces.items():
            g = t[t["piece"] == int(piece)]
            assert sorted(g["source_row"]) == rows
            assert {str(d) for d in g["dt"]} == {dt}


def test_segment_midpoint_is_half_the_length():
    mid = kernel.segment_midpoints(pd.Series([7]), pd.Series([[0.0, 0.0, 0.002]]), pd.Series([[0.0, 0.001, 0.001]]))
    # total length ~ 111 m + 222 m; half (~167 m) lies 1/4 along the second leg.
    assert mid["mid_lon_deg"].iloc[0] == pytest.approx(0.0005, abs=1e-6)
    assert mid["mid_lat_deg"].iloc[0] == pytest.approx(0.001, abs=1e-9)


def test_format_sniffing_by_extension_then_content():
    sniff = formats.sniff_format
    assert sniff("a.csv.gz", b"") == "csv" and sniff("a.ndjson", b"") == "jsonl" and sniff("a.pq", b"") == "parquet"
    assert sniff("trip.json", b'{"data": [{"dbResponse": {"linkID": 1}}]}') == "trips-json"  # one-line trip
    assert sniff("trip.json", b'{\n  "data": []\n}') == "trips-json"
    assert sniff("p.json", b'{"trace_id": "a"}\n{"trace_id": "b"}\n') == "jsonl"
    assert sniff("noext", b"PAR1....") == "parquet"
    assert sniff("noext", b"<?xml version='1.0'?><gpx>") == "gpx"
    assert sniff("noext", b"lat,lon,trace_id,timestamp\n") == "csv"
    with pytest.raises(formats.UserError):
        sniff("noext", b"hello world\n")
    formats.check_jsonl_head("p.jsonl", b'not json\n{"trace_id": "a"}\n')  # one bad line is a row, not a file
    with pytest.raises(formats.UserError):
        formats.check_jsonl_head("p.jsonl", b"a,b,c\n1,2,3\n")


# ---- Spark job -------------------------------------------------------------------------------------------------

def _spark_parsed(spark, names: list[str]):
    from speedprofile.ingest import transforms
    from speedprofile.ingest.pipeline import describe_inputs

    files, refused = describe_inputs(None, [str(INPUT / n) for n in names])
    assert not refused
    lines = transforms.read_text_lines(spark, files)
    recs = [transforms.csv_records(lines, [f for f in files if f.format == "csv"])]
    if any(f.format == "jsonl" for f in files):
        recs.append(transforms.jsonl_records(lines, [f for f in files if f.format == "jsonl"]))
    df = recs[0] if len(recs) == 1 else recs[0].unionByName(recs[1])
    return transforms.validate_records(df)


def test_spark_sql_validation_agrees_with_the_kernel(spark):
    """The Spark SQL checks (CSV/JSONL) give the kernel's reason, trace id, time and position for every record."""
    parsed = _spark_parsed(spark, ["bad_rows.csv", "times.csv", "probes.jsonl"]).toPandas()
    kernel_frames = [kernel.validate_records(_records_from_csv(n)) for n in ("bad_rows.csv", "times.csv")]
    jl = (INPUT / "probes.jsonl").read_text().split("\n")[:-1]
    kernel_frames.append(kernel.validate_records(kernel.parse_jsonl_lines(jl, "probes.jsonl", list(range(1, len(jl) + 1)))))
    expected = pd.concat(kernel_frames, ignore_index=True)
    expected["name"] = expected["source_file"].map(lambda p: Path(p).name)
    parsed["name"] = parsed["source_file"].map(lambda p: Path(p).name)
    got = parsed.set_index(["name", "source_row"]).sort_index()
    exp = expected.set_index(["name", "source_row"]).sort_index()
    assert got.index.tolist() == exp.index.tolist()
    assert got["reason"].fillna("-").tolist() == exp["reason"].fillna("-").tolist()
    ok = exp["reason"].isna()
    assert got.loc[ok, "trace_id"].tolist() == exp.loc[ok, "trace_id"].tolist()
    utc = [t.tz_localize("UTC") if t.tzinfo is None else t for t in got.loc[ok, "timestamp_utc"]]  # toPandas: naive UTC
    assert utc == exp.loc[ok, "timestamp_utc"].tolist()
    assert got.loc[ok, "lon_deg"].tolist() == exp.loc[ok, "lon_deg"].tolist()
    assert got.loc[ok, "speed_kph"].fillna(-1).tolist() == exp.loc[ok, "speed_kph"].fillna(-1).tolist()


def test_traces_split_over_arrow_batches_give_the_kernel_result(spark):
    """Tiny Arrow batches: a trace straddling batches is carried over, so pieces equal the one-trace kernel's."""
    from speedprofile.ingest import transforms

    names = ["bad_rows.csv", "border.csv", "midnight.csv"]
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old = spark.conf.get(key)
    spark.conf.set(key, "3")
    try:
        out = transforms.split_into_pieces(_spark_parsed(spark, names), 9, num_partitions=1).toPandas()
    finally:
        spark.conf.set(key, old)
    expected = pd.concat([_kernel_run(n) for n in names], ignore_index=True)

    def rows(df: pd.DataFrame) -> list[tuple]:
        return sorted(
            (str(r.trace_id), -1 if pd.isna(r.piece) else int(r.piece), int(r.source_row),
             bool(r.is_context) if not pd.isna(r.is_context) else None, r.partition or "", str(r.dt), r.reason or "")
            for r in df.itertuples()
        )

    assert rows(out) == rows(expected)


def _write_parquet_inputs(folder: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    t0 = pd.Timestamp("2024-03-01T08:00:00Z")
    typed = pa.table({
        "trace_id": ["pq1", "pq1", "pq1", "pq1"],
        "timestamp": pa.array([t0, t0 + pd.Timedelta(seconds=10), t0 + pd.Timedelta(seconds=20),
                               t0 + pd.Timedelta(seconds=30)], pa.timestamp("us", tz="UTC")),
        "lon": pa.array([-8.61, -8.6088, None, -8.6064], pa.float64()),
        "lat": pa.array([41.15, 41.15, 41.15, float("nan")], pa.float64()),
        "speed_kph": pa.array([30.0, None, 30.0, 30.0], pa.float64()),
    })
    pq.write_table(typed, folder / "typed.parquet")
    epoch_ms = pa.table({
        "trace_id": ["pq2", "pq2"], "timestamp": pa.array([1709280000000, 1709280010000], pa.int64()),
        "lon": [-8.61, -8.6088], "lat": [41.16, 41.16],
    })
    pq.write_table(epoch_ms, folder / "epoch_ms.parquet")
    return {
        "typed.parquet": {"rows_in": 4, "rows_kept": 2, "rejected": {"missing_field": 1, "nan_coordinate": 1}},
        "epoch_ms.parquet": {"rows_in": 2, "rows_kept": 2, "rejected": {}},
    }


@pytest.fixture(scope="module")
def batch(spark, tmp_path_factory):
    """All non-pre-matched fixture files (plus generated Parquet) ingested in one batch into a res-9 warehouse."""
    from speedprofile.ingest.pipeline import ingest
    from tests.plugins.ingest import make_partition_only_warehouse

    root = tmp_path_factory.mktemp("ingest_batch")
    warehouse = make_partition_only_warehouse(root / "wh", 9)
    expected = dict(EXPECTED)
    expected.update(_write_parquet_inputs(root / "parquet"))
    paths = [str(INPUT / n) for n in BATCH] + [str(root / "parquet")]
    result = ingest(spark, warehouse, paths)
    return warehouse, result, {k: v for k, v in expected.items() if k in BATCH or k.endswith(".parquet")}


def _tables(spark, warehouse: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    from speedprofile.spark import read_table

    probes = read_table(spark, warehouse, "probes").toPandas()
    rejected = read_table(spark, warehouse, "rejected_probes").toPandas()
    return probes, rejected


def test_batch_counts_per_file_match_expected_and_add_up(spark, batch):
    warehouse, result, expected = batch
    probes, rejected = _tables(spark, warehouse)
    owned = probes[~probes["is_context"]]
    for name, exp in expected.items():
        kept = int((owned["source_file"].map(lambda p: Path(p).name) == name).sum())
        rej = Counter(rejected.loc[rejected["source_file"].map(lambda p: Path(p).name) == name, "reason"])
        assert kept == exp["rows_kept"], name
        assert dict(rej) == exp["rejected"], name
        assert kept + sum(rej.values()) == exp["rows_in"], name
    assert result.rows_in == sum(e["rows_in"] for e in expected.values())
    assert result.rows_kept == len(owned)
    assert result.rows_in == result.rows_kept + result.rows_rejected
    assert result.context_rows == int(probes["is_context"].sum())
    assert result.files == len(expected)
    assert set(rejected["reason"]) <= set(REASONS)


def test_batch_metrics_per_dt_account_for_every_row(spark, batch):
    from speedprofile.spark import read_metrics

    warehouse, result, _ = batch
    total = 0
    for dt, counts in result.by_dt.items():
        m = read_metrics(None, warehouse, "ingest_probes", dt, None)
        assert m is not None, dt
        assert m["rows_in"] == m["rows_kept"] + sum(m["rejected"].values()) == counts["rows_in"]
        assert sum(m["kept_by_partition"].values()) == m["rows_kept"]
        total += m["rows_in"]
    assert total == result.rows_in
    assert set(result.by_dt) == {"2024-03-01", "2024-03-02", "unknown"}


def test_batch_tables_follow_the_schemas_and_partition_folders(spark, batch):
    from pyspark.testing import assertSchemaEqual

    from speedprofile.spark import read_table

    warehouse, _, _ = batch
    assertSchemaEqual(read_table(spark, warehouse, "probes").schema, PROBES.spark_schema())
    assertSchemaEqual(read_table(spark, warehouse, "rejected_probes").schema, REJECTED_PROBES.spark_schema())
    parts = {p.name for p in (Path(warehouse) / "probes" / "dt=2024-03-01").iterdir()}
    probes, rejected = _tables(spark, warehouse)
    assert parts == {f"partition={c}" for c in probes.loc[probes["dt"].astype(str) == "2024-03-01", "partition"]}
    assert all(f.name.startswith("src-") for f in (Path(warehouse) / "probes").rglob("*.parquet"))
    # dt of a rejected row = UTC date of its fix; null (Hive default partition) when the time was unreadable.
    assert (rejected["dt"].isna() == rejected["timestamp_utc"].isna()).all()
    with_time = rejected[rejected["timestamp_utc"].notna()]
    assert (with_time["dt"].astype(str) == with_time["timestamp_utc"].dt.strftime("%Y-%m-%d")).all()


def test_batch_border_pieces_and_context_in_home_partitions(spark, batch):
    warehouse, _, _ = batch
    probes, _ = _tables(spark, warehouse)
    east = probes[probes["trace_id"] == "east"]
    owned = east[~east["is_context"]]
    assert sorted(owned["source_row"]) == list(range(2, 32))
    expected = PIECES["border.csv"]["east"]
    assert {str(p): sorted(g["source_row"]) for p, g in owned.groupby("piece")} == {
        p: rows for p, (_, rows) in expected.items()}
    for _piece, g in east.groupby("piece"):
        assert g["partition"].nunique() == 1
        first = g[~g["is_context"]].sort_values("timestamp_utc").iloc[0]
        assert g["partition"].iloc[0] == h3.latlng_to_cell(first["lat_deg"], first["lon_deg"], 9)
    sizes = [len(rows) for _, rows in expected.values()]
    assert int(east["is_context"].sum()) == sum(
        min(CONTEXT_FIXES, sizes[k - 1]) + min(CONTEXT_FIXES, sizes[k]) for k in range(1, len(sizes)))


def test_batch_midnight_trace_keeps_first_fix_date(spark, batch):
    warehouse, _, _ = batch
    probes, _ = _tables(spark, warehouse)
    for trace, pieces in PIECES["midnight.csv"].items():
        t = probes[probes["trace_id"] == trace]
        for piece, (dt, rows) in pieces.items():
            g = t[t["piece"] == int(piece)]
            assert sorted(g["source_row"]) == rows
            assert {str(d) for d in g["dt"]} == {dt}


def test_batch_formats_parsed_as_documented(spark, batch):
    warehouse, _, _ = batch
    probes, _ = _tables(spark, warehouse)
    gpx = probes[probes["source_file"].str.endswith("track.gpx")]
    assert set(gpx["trace_id"]) == {"track-t0-s0", "track-t0-s1", "track-t1-s0"}
    first = gpx.sort_values("source_row").iloc[0]
    assert first["speed_kph"] == pytest.approx(36.0) and first["heading_deg"] == pytest.approx(90.0)
    times = probes[probes["source_file"].str.endswith("times.csv")]
    per_trace = {t: sorted(g["timestamp_utc"]) for t, g in times.groupby("trace_id")}
    assert per_trace["t_iso"] == per_trace["t_s"] == per_trace["t_ms"]
    jl = probes[probes["source_file"].str.endswith("probes.jsonl")]
    assert set(jl["trace_id"]) == {"j1", "42"}
    pq_rows = probes[probes["source_file"].str.endswith(".parquet")]
    assert set(pq_rows["trace_id"]) == {"pq1", "pq2"}
    assert probes["prematched_segment_id"].isna().all()


def test_trips_json_prematched_links_filled_from_road_segments(spark, ingest_network_warehouse):
    from speedprofile.ingest.pipeline import ingest
    from speedprofile.spark import read_table

    result = ingest(spark, ingest_network_warehouse, [str(INPUT / "trip_1001.json")])
    exp = EXPECTED["trip_1001.json"]
    assert (result.rows_in, result.rows_kept) == (exp["rows_in"], exp["rows_kept"])
    assert {k: v for k, v in result.rejected.items() if v} == exp["rejected"]
    probes = read_table(spark, ingest_network_warehouse, "probes").toPandas().sort_values("source_row")
    assert probes["trace_id"].tolist() == ["trip_1001", "trip_1001"]
    assert probes["prematched_segment_id"].tolist() == [0, 2]
    assert probes["speed_kph"].tolist() == [32.5, 30.0]
    seg0 = read_table(spark, ingest_network_warehouse, "road_segments").where("segment_id = 0").first()
    assert probes["lon_deg"].iloc[0] == pytest.approx(sum(seg0["geom_lon_deg"]) / 2)  # straight 2-vertex arc
    assert probes["lat_deg"].iloc[0] == pytest.approx(sum(seg0["geom_lat_deg"]) / 2)
    assert probes["lon_deg"].iloc[1] == pytest.approx(-8.6049)  # given coordinates are kept
    rejected = read_table(spark, ingest_network_warehouse, "rejected_probes").toPandas()
    assert rejected.set_index("source_row")["reason"].to_dict() == {
        3: "unknown_link", 4: "missing_field", 5: "missing_field"}


def test_reingest_same_file_replaces_and_other_file_adds(spark, ingest_warehouse, tmp_path):
    from spark_apps.ingest_probes import main
    from speedprofile.ingest.pipeline import ingest
    from speedprofile.spark import read_metrics

    landing = Path(ingest_warehouse) / "landing" / "dt=2024-03-01"
    landing.mkdir(parents=True)
    shutil.copy(INPUT / "times.csv", landing / "times.csv")
    assert main(["--warehouse", ingest_warehouse, "--date", "2024-03-01"]) == 0  # the Airflow form
    first, _ = _tables(spark, ingest_warehouse)
    assert len(first) == 9
    # The same content again (under another name): rows replaced, not doubled.
    again = tmp_path / "again" / "times_copy.csv"
    again.parent.mkdir()
    shutil.copy(INPUT / "times.csv", again)
    ingest(spark, ingest_warehouse, [str(again)])
    second, _ = _tables(spark, ingest_warehouse)
    assert len(second) == 9
    assert sorted(second["timestamp_utc"]) == sorted(first["timestamp_utc"])
    # Another file for the same day adds to it.
    ingest(spark, ingest_warehouse, [str(INPUT / "midnight.csv")])
    third, _ = _tables(spark, ingest_warehouse)
    assert len(third) == 9 + 8
    m = read_metrics(None, ingest_warehouse, "ingest_probes", "2024-03-01", None)
    assert m["rows_in"] == 9 + 6 and m["files"] == 2
    assert m["rows_in"] == m["rows_kept"] + sum(m["rejected"].values())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "speedprofile.cli", "ingest", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", ["not_probes.csv", "fake.parquet", "page.gpx"])
def test_cli_wrong_format_file_ends_with_one_line_error(name, ingest_warehouse):
    proc = _cli(str(INPUT / "wrong_format" / name), "--warehouse", ingest_warehouse)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_unreadable_and_mismatched_inputs_end_with_one_line_error(ingest_warehouse, tmp_path):
    bad_gz = tmp_path / "broken.csv.gz"
    bad_gz.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate")
    cases = [
        [str(bad_gz)],
        [str(tmp_path / "missing.csv")],
        [str(INPUT / "track.gpx"), "--format", "csv"],
        [str(INPUT / "bad_rows.csv"), "--format", "trips-json"],
    ]
    for args in cases:
        proc = _cli(*args, "--warehouse", ingest_warehouse)
        assert proc.returncode != 0, args
        assert len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)


def test_cli_without_road_network_says_build_it_first(tmp_path):
    proc = _cli(str(INPUT / "times.csv"), "--warehouse", str(tmp_path / "empty"))
    assert proc.returncode != 0
    assert "build the road network first" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
