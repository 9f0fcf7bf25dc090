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


QUOTED_CSV = """speed_kph,trace_id,timestamp,lon,lat
12.5,"q1",2024-03-01T09:00:00Z,8.5,47.1
,"q,2",2024-03-01T09:00:01Z,8.5,47.1
3,"q3,2024-03-01T09:00:02Z,8.5,47.1
4,q4,2024-03-01T09:00:03Z,8.5,47.1,"x"
5,q"5,2024-03-01T09:00:04Z,8.5,47.1
6,"q""6",2024-03-01T09:00:05Z,"8.5",47.1
7,q7,2024-03-01T09:00:06Z,8.5
,,2024-03-01T09:00:07Z,8.5,47.1
8,q8,,8.5,47.1
9,q9,2024-03-01T09:00:08Z,8.5,47.1,
"""


def test_quoted_and_unquoted_csv_lines_give_the_kernel_fields(spark, tmp_path):
    """Quoted fields (with commas and doubled quotes inside), stray quotes, empty fields and wrong field counts:
    Spark's CSV parsing gives the kernel's fields, reasons and details."""
    path = tmp_path / "quoted.csv"
    path.write_text(QUOTED_CSV)
    got = _spark_parsed(spark, [str(path)]).toPandas().sort_values("source_row")
    exp = kernel.validate_records(_records_from_csv(str(path))).sort_values("source_row")
    assert got["source_row"].tolist() == exp["source_row"].tolist() == list(range(2, 12))
    assert got["reason"].fillna("-").tolist() == exp["reason"].fillna("-").tolist()
    ok = exp["reason"].isna().to_numpy()
    assert got["trace_id"][ok].tolist() == exp["trace_id"][ok].tolist() == ["q1", "q,2", 'q"5', 'q"6']
    assert got["speed_kph"][ok].fillna(-1).tolist() == exp["speed_kph"][ok].fillna(-1).tolist() == [12.5, -1, 5, 6]
    assert dict(zip(got["source_row"], got["reason"], strict=True)) == {
        2: None, 3: None, 4: "unparsable_line", 5: "unparsable_line", 6: None, 7: None, 8: "unparsable_line",
        9: "empty_trace_id", 10: "missing_field", 11: "unparsable_line"}
    details = dict(zip(got["source_row"], got["detail"], strict=True))
    assert details[8] == "4 fields, header has 5" and details[11] == "6 fields, header has 5"


def test_traces_split_over_arrow_batches_give_the_kernel_result(spark):
    """Tiny Arrow batches and chunks: a trace straddling batches is held for the next chunk, so pieces equal the
    one-trace kernel's."""
    from speedprofile.ingest import transforms
    from speedprofile.spark import session_conf

    names = ["bad_rows.csv", "border.csv", "midnight.csv"]
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    old = spark.conf.get(key)
    with session_conf(spark, {key: "3"}):
        assert spark.conf.get(key) == "3"
        out = transforms.split_into_pieces(_spark_parsed(spark, names), 9, num_partitions=1, chunk_rows=4).toPandas()
    assert spark.conf.get(key) == old
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


def _manifests(warehouse: str) -> list[dict]:
    """The per-file ingest manifests (`_ingest/files/<src>.json`)."""
    return [json.loads(p.read_text()) for p in sorted((Path(warehouse) / "_ingest" / "files").glob("*.json"))]


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
    probes, rejected = _tables(spark, warehouse)
    # Every row carries the content key of its input file (what a re-ingest of that file replaces).
    files = {r["source_file"]: r["sha256_prefix"] for r in _manifests(warehouse)}
    assert (probes["src"] == probes["source_file"].map(files)).all()
    assert (rejected["src"] == rejected["source_file"].map(files)).all()
    # dt of a rejected row = UTC date of its fix; null (Hive default partition) when the time was unreadable.
    assert (rejected["dt"].isna() == rejected["timestamp_utc"].isna()).all()
    with_time = rejected[rejected["timestamp_utc"].notna()]
    assert (with_time["dt"].astype(str) == with_time["timestamp_utc"].dt.strftime("%Y-%m-%d")).all()
    # One data file per (dt, partition, src) folder of probes: each folder goes whole to one write task, and a task
    # writes each of its folders to one file (fanout for a few folders per task, sorted otherwise).
    from collections import Counter

    from speedprofile import tables

    per_folder = Counter(tuple(t.file.partition) for t in tables.load(warehouse, "probes").scan().plan_files())
    folders = probes.groupby(["dt", "partition", "src"]).ngroups
    assert len(per_folder) == folders > 1 and set(per_folder.values()) == {1}, per_folder


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


def test_drives_on_the_match_network_give_the_expected_probes(spark, tmp_path):
    """The raw drives of the fixture chain ingested on the match_traces network: expected/probes.jsonl, the input of
    match_traces (source_file as the file name; the table holds the path the run was given)."""
    from pyspark.sql import functions as F
    from pyspark.testing import assertDataFrameEqual

    from speedprofile.ingest.pipeline import ingest
    from speedprofile.spark import read_table
    from tests.plugins.aggregation import FIXTURES, fixture_frame
    from tests.plugins.matching import load_fixture_segments, write_fixture_network

    warehouse = write_fixture_network(str(tmp_path / "wh"), load_fixture_segments(FIXTURES / "match_traces"))
    names = ["drives.csv", "prematched.json"]
    result = ingest(spark, warehouse, [str(INPUT / n) for n in names], now=pd.Timestamp("2027-01-01", tz="UTC"))
    assert result.rows_in == sum(EXPECTED[n]["rows_in"] for n in names)
    assert result.rows_kept == sum(EXPECTED[n]["rows_kept"] for n in names)
    assert {k: v for k, v in result.rejected.items() if v} == EXPECTED["drives.csv"]["rejected"]  # the 10 km jump
    got = read_table(spark, warehouse, "probes").withColumn("source_file",
                                                           F.regexp_extract("source_file", r"[^/]+$", 0))
    assertDataFrameEqual(got, fixture_frame(spark, FIX / "expected" / "probes.jsonl", "probes"), checkRowOrder=False)


def test_expected_output_is_next_stage_input():
    a = (FIX / "expected" / "probes.jsonl").read_text()
    assert a == (FIX.parent / "match_traces" / "input" / "probes.jsonl").read_text()


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


# ---- per-file ingest: refused files, limits, streaming reads ---------------------------------------------------

class _ChunkSpy:
    """A binary stream that records the largest single read (a streaming reader never asks for the whole file)."""

    def __init__(self, data: bytes):
        import io

        self._io = io.BytesIO(data)
        self.largest = 0
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        out = self._io.read(n)
        self.largest = max(self.largest, len(out))
        self.total += len(out)
        return out


def test_scan_refuses_a_gzip_bomb_early_reading_in_chunks():
    import gzip

    bomb = gzip.compress(b"trace_id,timestamp,lon,lat\n" + b"0,0,0,0\n" * (4 << 20), compresslevel=9)
    spy = _ChunkSpy(bomb)
    with pytest.raises(formats.FileRejected) as err:
        formats.scan_file("bomb.csv.gz", spy, len(bomb), formats.IngestLimits(ratio_floor_bytes=1 << 20))
    assert err.value.reason == "decompression_limit" and "bomb.csv.gz" in str(err.value)
    assert "compression ratio over 100" in str(err.value)
    assert spy.largest <= formats.CHUNK_BYTES
    small = formats.IngestLimits(max_decompressed_bytes=1 << 20)
    with pytest.raises(formats.FileRejected) as err:
        formats.scan_file("bomb.csv.gz", _ChunkSpy(bomb), len(bomb), small)
    assert err.value.reason == "decompression_limit" and "max_decompressed_bytes" in str(err.value)


def test_scan_reads_a_large_csv_in_chunks_and_counts_what_it_hashed():
    import hashlib

    data = (INPUT / "times.csv").read_bytes()
    body = data.split(b"\n", 1)[1]
    big = data + body * 20000  # ~7 MB: more than one chunk
    spy = _ChunkSpy(big)
    scan = formats.scan_file("big.csv", spy, len(big), formats.IngestLimits())
    assert spy.largest <= formats.CHUNK_BYTES < len(big) == spy.total
    assert scan.sha256 == hashlib.sha256(big).hexdigest() and scan.data_bytes == len(big) and scan.format == "csv"


@pytest.mark.parametrize("case", ["long_field", "long_last_line"])
def test_scan_refuses_a_line_over_the_field_limit_naming_file_and_line(case):
    head = b"trace_id,timestamp,lon,lat\na,1709280000,-8.61,41.15\n"
    long = b"a,1709280010,-8.61," + b"4" * 5000
    data = head + long + (b"\nb,1709280000,-8.61,41.15\n" if case == "long_field" else b"")
    with pytest.raises(formats.FileRejected) as err:
        formats.scan_file("f.csv", _ChunkSpy(data), len(data), formats.IngestLimits(max_line_bytes=4096))
    assert err.value.reason == "field_too_long"
    assert str(err.value).startswith("f.csv: line 3 is longer than 4096 bytes")


def _bad_files(folder: Path) -> dict[str, str]:
    """One file per refusal reason (limits set by `_SMALL_LIMITS`) -> expected reason."""
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.csv").write_bytes(b"")
    (folder / "corrupt.csv.gz").write_bytes(gzip.compress((INPUT / "times.csv").read_bytes())[:40])
    shutil.copy(INPUT / "wrong_format" / "not_probes.csv", folder / "not_probes.csv")
    (folder / "bomb.csv.gz").write_bytes(gzip.compress(b"trace_id,timestamp,lon,lat\n" + b"0" * (2 << 20)))
    (folder / "long.csv").write_bytes(b"trace_id,timestamp,lon,lat\nx,1709280000,-8.61," + b"1" * 70000 + b"\n")
    (folder / "huge.jsonl").write_bytes((INPUT / "probes.jsonl").read_bytes() * 200)
    return {"empty.csv": "empty_file", "corrupt.csv.gz": "unreadable_file", "not_probes.csv": "wrong_format",
            "bomb.csv.gz": "decompression_limit", "long.csv": "field_too_long", "huge.jsonl": "file_too_large"}


_SMALL_LIMITS = ["--max-file-bytes", "100000", "--max-decompressed-bytes", "1000000", "--max-line-bytes", "65536"]


def test_bad_files_are_refused_one_by_one_and_the_good_ones_ingested(spark, ingest_warehouse, tmp_path):
    """The Airflow form: a landing folder with one file per refusal reason and two good files -> exit 0, the good
    files' rows in probes, one rejected_files row per bad file, nothing else written for them."""
    from spark_apps.ingest_probes import main
    from speedprofile.spark import read_metrics, read_table

    landing = Path(ingest_warehouse) / "landing" / "dt=2024-03-01"
    expected = _bad_files(landing)
    shutil.copy(INPUT / "times.csv", landing / "times.csv")
    shutil.copy(INPUT / "midnight.csv", landing / "midnight.csv")
    assert main(["--warehouse", ingest_warehouse, "--date", "2024-03-01", *_SMALL_LIMITS]) == 0
    probes = read_table(spark, ingest_warehouse, "probes").toPandas()
    assert sorted({Path(p).name for p in probes["source_file"]}) == ["midnight.csv", "times.csv"]
    assert int((~probes["is_context"]).sum()) == EXPECTED["times.csv"]["rows_kept"] + EXPECTED["midnight.csv"]["rows_kept"]
    refused = read_table(spark, ingest_warehouse, "rejected_files").toPandas()
    assert dict(zip(refused["source_file"].map(lambda p: Path(p).name), refused["reason"], strict=True)) == expected
    assert refused["detail"].str.len().gt(0).all() and not refused["detail"].str.contains("\n").any()
    m = read_metrics(None, ingest_warehouse, "ingest_probes", "2024-03-01", None)
    assert m["files"] == 2 and m["rows_in"] == m["rows_kept"] + sum(m["rejected"].values())
    # The same landing folder again: still one row per refused file, no doubled probes.
    assert main(["--warehouse", ingest_warehouse, "--date", "2024-03-01", *_SMALL_LIMITS]) == 0
    assert read_table(spark, ingest_warehouse, "rejected_files").count() == len(expected)
    assert read_table(spark, ingest_warehouse, "probes").count() == len(probes)
    # Within the default limits the long-field and the large file are ingested (their rows accounted) and their
    # rejected_files rows go; the bomb (2 MB of zeros without a newline) still has a line over 1 MiB.
    assert main(["--warehouse", ingest_warehouse, "--date", "2024-03-01"]) == 0
    left = read_table(spark, ingest_warehouse, "rejected_files").toPandas()
    assert sorted(left["reason"]) == ["empty_file", "field_too_long", "unreadable_file", "wrong_format"]
    m = read_metrics(None, ingest_warehouse, "ingest_probes", "2024-03-01", None)
    assert m["files"] == 4 and m["rows_in"] == m["rows_kept"] + sum(m["rejected"].values())


@pytest.mark.parametrize("name", ["empty.csv", "corrupt.csv.gz", "bomb.csv.gz", "long.csv", "huge.jsonl"])
def test_cli_file_over_a_limit_or_unreadable_ends_with_one_line_naming_it(name, ingest_warehouse, tmp_path):
    reason = _bad_files(tmp_path / "in")[name]
    proc = _cli(str(tmp_path / "in" / name), "--warehouse", ingest_warehouse, *_SMALL_LIMITS)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and reason in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    from speedprofile import tables

    rows = tables.read_arrow(ingest_warehouse, "rejected_files").to_pylist()
    assert [(Path(r["source_file"]).name, r["reason"]) for r in rows] == [(name, reason)]


# ---- rejects that cannot be used: outside_network, future_time -------------------------------------------------

_NOW = pd.Timestamp("2024-03-01T08:05:00Z")


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_future_times_and_fixes_off_the_network_are_rejected_and_accounted(spark, ingest_warehouse, tmp_path):
    """Clock 08:05Z, skew 900 s: 08:19Z is kept, 08:21Z and 2099 are future_time; swapped lat/lon and a fix in
    Lisbon are outside_network (the network covers central Porto only). The same rules hold for Parquet input
    (pandas kernel)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from speedprofile.ingest.pipeline import ingest
    from speedprofile.spark import read_table

    _write(tmp_path / "in" / "clock.csv", "\n".join([
        "trace_id,timestamp,lon,lat",
        "c1,2024-03-01T08:00:00Z,-8.6100,41.1500",
        "c1,2024-03-01T08:19:00Z,-8.6000,41.1500",
        "c1,2024-03-01T08:21:00Z,-8.5990,41.1500",
        "c1,2099-12-31T00:00:00Z,-8.5980,41.1500",
        "c2,2024-03-01T08:00:00Z,41.1500,-8.6100",
        "c2,2024-03-01T08:00:10Z,-9.1393,38.7223",
        "c2,2024-03-01T08:00:20Z,-8.6100,41.1510",
    ]) + "\n")
    pq.write_table(pa.table({"trace_id": ["p1", "p1", "p1"],
                             "timestamp": ["2024-03-01T08:00:00Z", "2024-03-01T08:30:00Z", "2024-03-01T08:00:30Z"],
                             "lon": [-8.61, -8.609, 41.15], "lat": [41.16, 41.16, -8.61]}),
                   tmp_path / "in" / "clock.parquet")
    result = ingest(spark, ingest_warehouse, [str(tmp_path / "in")], now=_NOW, future_skew_s=900)
    rejected = read_table(spark, ingest_warehouse, "rejected_probes").toPandas()
    by_row = {(Path(f).name, int(r)): why for f, r, why in zip(rejected["source_file"], rejected["source_row"],
                                                                 rejected["reason"], strict=True)}
    assert by_row == {("clock.csv", 4): "future_time", ("clock.csv", 5): "future_time",
                      ("clock.csv", 6): "outside_network", ("clock.csv", 7): "outside_network",
                      ("clock.parquet", 2): "future_time", ("clock.parquet", 3): "outside_network"}
    detail = dict(zip(rejected["source_row"], rejected["detail"], strict=True))
    assert "later than 2024-03-01T08:20:00Z" in detail[4]
    assert result.rows_in == 10 == result.rows_kept + result.rows_rejected
    assert result.rejected["future_time"] == 3 and result.rejected["outside_network"] == 3
    probes = read_table(spark, ingest_warehouse, "probes").toPandas()
    assert sorted(probes["source_row"]) == [1, 2, 3, 8]
    assert set(probes["dt"].astype(str)) == {"2024-03-01"}  # no dt=2099-12-31 folder
    assert not (Path(ingest_warehouse) / "probes" / "dt=2099-12-31").exists()


def test_spark_sql_future_time_check_agrees_with_the_kernel(spark):
    from speedprofile.ingest import transforms

    texts = ["2024-03-01T08:20:00Z", "2024-03-01T08:20:01Z", "1709281201", "2099-01-01T00:00:00+01:00"]
    rec = pd.DataFrame({"source_file": "f", "source_row": range(1, 5), "raw": texts, "trace_id": "a",
                        "timestamp": texts, "lon": "-8.61", "lat": "41.15", "speed_kph": None, "heading_deg": None,
                        "accuracy_m": None, "reason": None, "detail": None})
    limit = pd.Timestamp("2024-03-01T08:20:00Z")
    exp = kernel.validate_records(rec.assign(prematched_segment_id=None), limit)
    got = transforms.validate_records(spark.createDataFrame(rec, transforms.RECORDS_DDL), limit).toPandas()
    assert got["reason"].tolist() == exp["reason"].tolist() == [None, "future_time", "future_time", "future_time"]
    assert got["detail"].tolist() == exp["detail"].tolist()


# ---- content-level idempotency ---------------------------------------------------------------------------------

def test_a_fix_already_in_probes_is_never_added_again_whatever_file_it_comes_in(spark, ingest_warehouse, tmp_path):
    """times.csv, then the same rows gzipped, then with one line appended, then as JSONL: probes keeps each
    (trace, time, position) once; re-deliveries are rejected as already_ingested and accounted per dt; the one
    new fix is kept as a new piece numbered after the stored ones."""
    import gzip

    from speedprofile.ingest.pipeline import ingest
    from speedprofile.spark import read_metrics, read_table

    src = (INPUT / "times.csv").read_text()
    first = ingest(spark, ingest_warehouse, [str(INPUT / "times.csv")], now=_NOW)
    assert first.rows_kept == 9
    gz = tmp_path / "again" / "times.csv.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(src.encode()))
    second = ingest(spark, ingest_warehouse, [str(gz)], now=_NOW)
    assert (second.rows_in, second.rows_kept, second.rejected["already_ingested"]) == (9, 0, 9)
    appended = _write(tmp_path / "more" / "times_plus.csv", src + "t_s,1709280090,-8.6082,41.1500\n")
    third = ingest(spark, ingest_warehouse, [appended], now=_NOW)
    assert (third.rows_in, third.rows_kept, third.rejected["already_ingested"]) == (10, 1, 9)
    jl = _write(tmp_path / "jl" / "times.jsonl", '{"trace_id": "t_ms", "timestamp": 1709280030000, '
                                                 '"lon": -8.6094, "lat": 41.15}\n')
    fourth = ingest(spark, ingest_warehouse, [jl], now=_NOW)
    assert (fourth.rows_kept, fourth.rejected["already_ingested"]) == (0, 1)
    probes = read_table(spark, ingest_warehouse, "probes").toPandas()
    owned = probes[~probes["is_context"]]
    assert len(owned) == 10
    assert not owned.duplicated(["trace_id", "timestamp_utc", "lon_deg", "lat_deg"]).any()
    assert not owned.duplicated(["trace_id", "timestamp_utc"]).any()
    t_s = owned[owned["trace_id"] == "t_s"]
    new = t_s[t_s["source_file"] == appended]
    assert len(new) == 1 and int(new["piece"].iloc[0]) > int(t_s[t_s["source_file"] != appended]["piece"].max())
    m = read_metrics(None, ingest_warehouse, "ingest_probes", "2024-03-01", None)
    assert m["files"] == 4 and m["rows_in"] == 9 + 9 + 10 + 1
    assert m["rows_kept"] == 10 and m["rejected"]["already_ingested"] == 19
    assert m["rows_in"] == m["rows_kept"] + sum(m["rejected"].values())
    # Re-ingesting the same bytes replaces that file's own rows: nothing is rejected against itself.
    again = ingest(spark, ingest_warehouse, [appended], now=_NOW)
    assert (again.rows_kept, again.rejected["already_ingested"]) == (1, 9)
    assert read_table(spark, ingest_warehouse, "probes").where("NOT is_context").count() == 10


def test_a_correction_same_trace_and_time_new_position_is_rejected_and_the_stored_fix_stays(
        spark, ingest_warehouse, tmp_path):
    """Rule: the fix delivered first stays. A later fix at the same trace and time but another position is
    rejected as conflicting_fix, its detail naming the stored position; probes is unchanged."""
    from speedprofile.ingest.pipeline import ingest
    from speedprofile.spark import read_table

    ingest(spark, ingest_warehouse, [str(INPUT / "times.csv")], now=_NOW)
    before = read_table(spark, ingest_warehouse, "probes").toPandas().sort_values(["trace_id", "timestamp_utc"])
    fix = _write(tmp_path / "fix" / "correction.csv",
                 "trace_id,timestamp,lon,lat\nt_s,1709280030,-8.6095,41.1502\n")
    result = ingest(spark, ingest_warehouse, [fix], now=_NOW)
    assert (result.rows_in, result.rows_kept, result.rejected["conflicting_fix"]) == (1, 0, 1)
    after = read_table(spark, ingest_warehouse, "probes").toPandas().sort_values(["trace_id", "timestamp_utc"])
    assert after[["trace_id", "timestamp_utc", "lon_deg", "lat_deg"]].values.tolist() == \
        before[["trace_id", "timestamp_utc", "lon_deg", "lat_deg"]].values.tolist()
    rej = read_table(spark, ingest_warehouse, "rejected_probes").where("reason = 'conflicting_fix'").first()
    assert rej["source_file"] == fix and "lon=-8.6094" in rej["detail"]


def test_ingest_tasks_and_read_splits_fill_whole_waves(spark):
    """Ingest's tasks and text read splits come in whole waves over the task slots, and a split stays at most
    128 MB (and at least 1 MB): 3 splits of an input on 2 cores would leave a core idle for a third of the parse."""
    from speedprofile.ingest import pipeline
    from speedprofile.ingest.formats import InputFile
    from speedprofile.spark import default_parallelism

    slots = default_parallelism(spark)
    mb = 1 << 20

    def files(*sizes_mb, fmt="csv"):
        return [InputFile(path=f"/in/{i}.csv", format=fmt, sha=f"{i:016x}", size=int(m * mb),
                          data_bytes=int(m * mb)) for i, m in enumerate(sizes_mb)]

    assert pipeline._split_bytes(spark, files(1)) == mb
    for sizes in [(70,), (345,), (1000,) * 7, (0.5, 300, 129)]:
        fs = files(*sizes)
        total = sum(f.size for f in fs)
        split = pipeline._split_bytes(spark, fs)
        n_splits = -(-total // split)
        assert split <= pipeline.BYTES_PER_TRACE_PARTITION and n_splits % slots == 0, (sizes, split)
        tasks = pipeline._ingest_tasks(spark, fs)
        assert tasks % slots == 0 and tasks * pipeline.BYTES_PER_TRACE_PARTITION >= total, (sizes, tasks)
    assert pipeline._split_bytes(spark, files(345)) == -(-345 * mb // 4)  # 4 splits of 86 MB, not 128+128+89
    assert pipeline._ingest_tasks(spark, files(345)) == 4


def test_probe_folders_are_packed_into_balanced_write_tasks(spark):
    """Each (dt, partition, src) folder goes whole to one write task, that task is the bin it was packed into, and
    no task holds more than the mean plus one folder; hashing the same 13 folders into 4 tasks is less even."""
    from datetime import date

    from pyspark.sql import functions as F

    from speedprofile.ingest import pipeline

    sizes = {(date(2026, 11, 3), f"cell{i:02d}", "a" if i % 3 else "b"): n
             for i, n in enumerate([900, 700, 650, 400, 390, 300, 250, 200, 120, 90, 60, 30, 10])}
    n_tasks = 4
    bins = pipeline.balanced_bins(spark, pipeline.pack_folders(sizes, n_tasks), n_tasks)
    assert bins.count() == len(sizes)
    rows = spark.createDataFrame([(*k, j) for k, n in sizes.items() for j in range(n)],
                                 "dt DATE, partition STRING, src STRING, j INT")
    placed = (rows.join(F.broadcast(bins), ["dt", "partition", "src"], "left").repartition(n_tasks, "_bin")
              .withColumn("task", F.spark_partition_id()))
    per_folder = placed.groupBy("dt", "partition", "src").agg(F.countDistinct("task").alias("tasks")).collect()
    assert len(per_folder) == len(sizes) and all(r["tasks"] == 1 for r in per_folder)
    loads = [r["count"] for r in placed.groupBy("task").count().collect()]
    assert len(loads) == n_tasks and sum(loads) == sum(sizes.values())
    assert max(loads) <= sum(sizes.values()) / n_tasks + max(sizes.values())
    assert max(loads) - min(loads) <= max(sizes.values())
    hashed = [r["count"] for r in rows.repartition(n_tasks, "dt", "partition", "src").groupBy(
        F.spark_partition_id()).count().collect()]
    assert max(loads) <= max(hashed)


def test_cells_of_gives_h3s_cell_for_every_position(data_dir):
    """cells_of calls H3 for a few positions and tests the rest against their neighbours' cells: the result is H3's
    own cell for every position, on real traces (Hof floating-car data, Kubička tracks) at the partition resolution
    and around it, and on clusters all over the globe (poles, the antimeridian, pentagons) at every resolution."""
    import gzip
    from unittest import mock

    import numpy as np
    from h3.api import basic_int

    def h3_cells(lon, lat, res):
        return np.array([basic_int.latlng_to_cell(a, o, res) for a, o in zip(lat.tolist(), lon.tolist(), strict=True)],
                        dtype="uint64")

    hof = pd.read_csv(data_dir / "hof_fcd" / "points.csv")
    xy = hof["geometry"].str.extract(r"POINT \(([-0-9.]+) ([-0-9.]+)\)").astype(float)
    traces = [(xy[0].to_numpy(), xy[1].to_numpy())]
    for track in ("00000000", "00000008", "00000032"):
        with gzip.open(data_dir / "kubicka2015" / track / f"{track}.track.gz", "rt") as fh:
            t = np.loadtxt(fh, usecols=(0, 1))
        traces.append((t[:, 0], t[:, 1]))  # lon, lat
    rng = np.random.default_rng(7)
    for lon, lat in traces:
        for res in (6, 7, 8, 9):
            assert (kernel.cells_of(lon, lat, res) == h3_cells(lon, lat, res)).all(), res
    for res in range(0, 13):
        z, th = rng.uniform(-1, 1, 300), rng.uniform(-np.pi, np.pi, 300)
        centre_lat = np.r_[np.degrees(np.arcsin(z)), 89.99, -89.99, 0.0, 10.0]
        centre_lon = np.r_[np.degrees(th), 0.0, 0.0, 179.999, -179.999]
        scale = 1.0 / 2.65 ** res  # about a cell's width
        lat = np.clip(np.repeat(centre_lat, 60) + rng.normal(0, scale, 60 * len(centre_lat)), -89.999, 89.999)
        lon = (np.repeat(centre_lon, 60) + rng.normal(0, scale, 60 * len(centre_lat)) + 180) % 360 - 180
        order = np.lexsort((lat, np.repeat(np.arange(len(centre_lat)), 60)))  # clustered, as a trace is
        for la, lo in ((lat, lon), (lat[order], lon[order])):
            assert (kernel.cells_of(lo, la, res) == h3_cells(lo, la, res)).all(), res
    # a 1 Hz drive: most positions fall inside a neighbour's cell and need no call of their own
    lon, lat = traces[1]
    with mock.patch.object(basic_int, "latlng_to_cell", wraps=basic_int.latlng_to_cell) as calls:
        kernel.cells_of(lon, lat, 7)
    assert calls.call_count < 0.15 * len(lon)
