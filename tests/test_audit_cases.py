"""The hardening audit's cases in one list: what an attacker or a careless data provider tried (bad files, bombs,
path traversal, concurrency, kills), how each must end (a clear one-line error, a `rejected_files` quarantine row or
a `rejected_probes` row with its reason, never a lost fix or a write outside the warehouse) and the test that proves
it. The cases no other module covered are tested here: all their bad files in one ingest run.
"""

from __future__ import annotations

import ast
import gzip
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
INPUT = REPO / "fixtures" / "ingest_probes" / "input"

ING = "tests/test_ingest_probes.py"
PATHS = "tests/test_path_safety.py"
E2E = "tests/test_pipeline_e2e.py"
SIGNALS = "tests/test_run_signals.py"
HERE = "tests/test_audit_cases.py"

# (case, how it must end, tests that prove it)
AUDIT_CASES: list[tuple[str, str, tuple[str, ...]]] = [
    # -- bad files: each is refused on its own, the rest of the batch is ingested --------------------------------
    ("empty file", "rejected_files empty_file",
     (f"{ING}::test_bad_files_are_refused_one_by_one_and_the_good_ones_ingested",)),
    ("truncated gzip", "rejected_files unreadable_file",
     (f"{ING}::test_bad_files_are_refused_one_by_one_and_the_good_ones_ingested",)),
    ("gzip bomb", "rejected_files decompression_limit, read in chunks, refused early",
     (f"{ING}::test_scan_refuses_a_gzip_bomb_early_reading_in_chunks",
      f"{ING}::test_bad_files_are_refused_one_by_one_and_the_good_ones_ingested")),
    ("64 MiB field", "rejected_files field_too_long naming file and line, within the default limits",
     (f"{HERE}::test_hostile_files_end_as_quarantine_rows_in_one_ingest_run",
      f"{ING}::test_scan_refuses_a_line_over_the_field_limit_naming_file_and_line")),
    ("file over the size limit", "rejected_files file_too_large",
     (f"{ING}::test_bad_files_are_refused_one_by_one_and_the_good_ones_ingested",)),
    ("wrong format: CSV without probe columns, text named .parquet, HTML named .gpx",
     "one-line error naming the file; rejected_files wrong_format in a batch",
     (f"{ING}::test_cli_wrong_format_file_ends_with_one_line_error",
      f"{ING}::test_bad_files_are_refused_one_by_one_and_the_good_ones_ingested")),
    ("binary junk as .csv, .csv.gz, .jsonl, .parquet, .gpx, unknown extension; junk rows after a good header",
     "rejected_files wrong_format per file (unknown extension in a folder: left aside, in the summary); junk rows "
     "in rejected_probes, accounted",
     (f"{HERE}::test_hostile_files_end_as_quarantine_rows_in_one_ingest_run",)),
    ("XXE GPX: external entity, external parameter entity", "refused (unreadable_file) or parsed without "
     "fetching: nothing outside the file is read", (f"{HERE}::test_hostile_files_end_as_quarantine_rows_in_one_ingest_run",)),
    ("billion-laughs GPX", "rejected_files unreadable_file (expat's amplification limit)",
     (f"{HERE}::test_hostile_files_end_as_quarantine_rows_in_one_ingest_run",)),
    ("malformed rows (one per bad-row class)", "rejected_probes with a reason each; rows_in = kept + rejected",
     (f"{ING}::test_kernel_rejects_every_bad_row_class_with_its_reason",
      f"{ING}::test_batch_counts_per_file_match_expected_and_add_up")),
    ("missing file, format forced to a wrong one", "one-line error, non-zero exit",
     (f"{ING}::test_cli_unreadable_and_mismatched_inputs_end_with_one_line_error",)),
    ("a refused file named on the command line", "one line naming the file and the reason; rejected_files row",
     (f"{ING}::test_cli_file_over_a_limit_or_unreadable_ends_with_one_line_naming_it",)),
    # -- re-deliveries and corrections ---------------------------------------------------------------------------
    ("same bytes again under another name", "the file's rows replaced, never doubled",
     (f"{ING}::test_reingest_same_file_replaces_and_other_file_adds",)),
    ("duplicate delivery gzipped, or as JSONL", "rejected_probes already_ingested; probes unchanged",
     (f"{ING}::test_a_fix_already_in_probes_is_never_added_again_whatever_file_it_comes_in",)),
    ("duplicate delivery with one line appended", "the new fix kept, the others already_ingested",
     (f"{ING}::test_a_fix_already_in_probes_is_never_added_again_whatever_file_it_comes_in",)),
    ("correction: same trace and time, new position", "rejected_probes conflicting_fix; the first fix stays",
     (f"{ING}::test_a_correction_same_trace_and_time_new_position_is_rejected_and_the_stored_fix_stays",)),
    # -- fixes that cannot be used -------------------------------------------------------------------------------
    ("lat/lon swapped, a fix far off the network", "rejected_probes outside_network; no cell no DAG runs",
     (f"{ING}::test_future_times_and_fixes_off_the_network_are_rejected_and_accounted",)),
    ("far-future time (2099)", "rejected_probes future_time; no dt=2099-12-31 folder",
     (f"{ING}::test_future_times_and_fixes_off_the_network_are_rejected_and_accounted",
      f"{ING}::test_spark_sql_future_time_check_agrees_with_the_kernel")),
    # -- names that become paths ---------------------------------------------------------------------------------
    ("run --partition 'x/../../../../victim'", "one-line error (not an H3 cell); the folder outside survives",
     (f"{PATHS}::test_run_refuses_a_partition_that_climbs_out_of_the_warehouse",
      f"{PATHS}::test_fuzzed_cli_arguments_end_in_a_clear_error_and_touch_nothing_outside")),
    ("a stage app (spark-submit form) given a traversing --partition", "refused before any Spark work",
     (f"{PATHS}::test_stage_app_refuses_a_traversing_partition_before_any_spark_work",
      f"{PATHS}::test_fuzzed_job_arguments_never_build_a_path_outside_the_warehouse")),
    ("--date that is not a date ('2026-11-02/../../x', '2026-02-30')", "one-line error (not a date)",
     (f"{PATHS}::test_dates_must_be_real_yyyy_mm_dd_dates",)),
    ("ingest --date with a path in it", "refused before the landing folder is looked up",
     (f"{HERE}::test_ingest_date_must_be_a_date_not_a_path",)),
    ("_partitions.json with a traversing cell", "run --all refuses the list; no DAG is made for the cell",
     (f"{PATHS}::test_run_all_refuses_a_partition_list_with_a_bad_cell",
      f"{PATHS}::test_dags_are_made_only_for_valid_cells_of_the_partition_list")),
    ("a traversing partition value inside the data", "written inside the table (the table layer's paths)",
     (f"{PATHS}::test_write_table_keeps_a_traversing_partition_value_inside_the_table",
      f"{PATHS}::test_fuzzed_names_never_escape_the_warehouse_layer")),
    # -- concurrency ---------------------------------------------------------------------------------------------
    ("two partitions run at once", "the same tables as running them in turn",
     (f"{E2E}::test_two_partitions_at_once_give_the_tables_of_running_them_in_turn",)),
    ("readers while a stage replaces a partition", "the old rows or the new, never a mix",
     (f"{E2E}::test_readers_see_the_old_rows_or_the_new_while_a_stage_replaces_them",)),
    # -- kills ---------------------------------------------------------------------------------------------------
    ("SIGTERM / SIGINT to speedprofile run", "spark-submit group stopped, exit 128 + signal, no orphan",
     (f"{SIGNALS}::test_signal_stops_the_spark_submit_group_and_exits_non_zero",)),
    ("SIGTERM / SIGINT to speedprofile ingest", "its Spark JVM ends, exit 128 + signal",
     (f"{SIGNALS}::test_signal_to_ingest_ends_its_spark_jvm_and_exits_non_zero",)),
    ("a stage SIGKILLed mid-write", "tables as last committed; a re-run completes",
     (f"{E2E}::test_a_stage_killed_mid_write_leaves_the_tables_as_committed_and_a_rerun_completes",)),
    ("a Spark worker or a MinIO node killed mid-run", "the job finishes with the same output",
     ("tests/test_cluster.py::test_pipeline_survives_a_worker_killed_mid_stage",
      "tests/test_object_store_cluster.py::test_one_storage_node_killed_reads_and_writes_go_on_and_it_heals_on_return")),
]


def test_every_audit_case_names_tests_that_exist():
    assert len(AUDIT_CASES) == 30
    assert len({case for case, _, _ in AUDIT_CASES}) == 30
    missing = []
    for case, _, tests in AUDIT_CASES:
        assert tests, case
        for node in tests:
            path, name = node.split("::")
            tree = ast.parse((REPO / path).read_text())
            if name not in {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}:
                missing.append(node)
    assert missing == []


# ---- the cases no other module covered ---------------------------------------------------------------------------

_NOW = pd.Timestamp("2024-03-01T08:05:00Z")
MARKER = "outside-file-marker-7e1d"
GPX_HEAD = '<gpx version="1.1" creator="audit" xmlns="http://www.topografix.com/GPX/1/1"><trk>'
GPX_POINTS = ('<trkseg><trkpt lat="41.1500" lon="-8.6100"><time>2024-03-01T08:00:00Z</time></trkpt>'
              '<trkpt lat="41.1501" lon="-8.6099"><time>2024-03-01T08:00:10Z</time></trkpt></trkseg></trk></gpx>\n')


def _junk(name: str, n: int = 65536) -> bytes:
    return random.Random(name).randbytes(n)


def _hostile_files(folder: Path, outside: Path) -> dict[str, str | None]:
    """Bad files -> the rejected_files reason each must get (None: the file is ingested, its bad rows rejected, or,
    for an unknown extension in a folder, left aside and counted in the run's summary)."""
    folder.mkdir(parents=True)
    files: dict[str, bytes] = {
        "junk.csv": _junk("csv"), "junk.jsonl": _junk("jsonl"), "junk.parquet": _junk("parquet"),
        "junk.gpx": _junk("gpx"), "junk.bin": _junk("bin"), "junk.csv.gz": gzip.compress(_junk("gz")),
        # a good header, then binary rows (NUL bytes, invalid UTF-8, stray quotes and newlines)
        "junk_rows.csv": b"trace_id,timestamp,lon,lat\n" + _junk("rows", 4096) + b"\n",
        "xxe.gpx": (f'<?xml version="1.0"?>\n<!DOCTYPE gpx [<!ENTITY xxe SYSTEM "file://{outside}">]>\n'
                    f"{GPX_HEAD}<name>&xxe;</name>{GPX_POINTS}").encode(),
        "laughs.gpx": ('<?xml version="1.0"?>\n<!DOCTYPE gpx [\n<!ENTITY l0 "lol">\n'
                       + "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">\n' for i in range(1, 10))
                       + f"]>\n{GPX_HEAD}<name>&l9;</name>{GPX_POINTS}").encode(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    # an external parameter entity is never fetched: the file parses as the GPX it otherwise is
    (folder / "xxe_param.gpx").write_text(
        f'<?xml version="1.0"?>\n<!DOCTYPE gpx [<!ENTITY % ext SYSTEM "file://{outside}"> %ext;]>\n'
        + GPX_HEAD + GPX_POINTS.replace("41.1500", "41.1502").replace("41.1501", "41.1503"))
    with open(folder / "field64m.csv", "wb") as fh:  # one 64 MiB field; the default line limit is 1 MiB
        fh.write(b"trace_id,timestamp,lon,lat\nf,1709280000,-8.61,41.15\nf,1709280010,-8.61,")
        fh.write(b"4" * (64 << 20) + b"\n")
    shutil.copy(INPUT / "times.csv", folder / "times.csv")
    return {"junk.csv": "wrong_format", "junk.jsonl": "wrong_format", "junk.parquet": "wrong_format",
            "junk.gpx": "wrong_format", "junk.bin": None, "junk.csv.gz": "wrong_format",
            "xxe.gpx": "unreadable_file", "laughs.gpx": "unreadable_file", "field64m.csv": "field_too_long",
            "junk_rows.csv": None, "xxe_param.gpx": None, "times.csv": None}


def _outside_state(root: Path, warehouse: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.is_file() and not p.is_relative_to(warehouse)}


def test_hostile_files_end_as_quarantine_rows_in_one_ingest_run(spark, ingest_warehouse, tmp_path):
    """One landing folder: binary junk under every extension, junk rows after a valid header, XXE (entity and
    parameter entity pointing at a file outside), billion laughs, a 64 MiB field, and a good file. Each bad file
    gets its rejected_files row with a one-line detail; the good rows are all kept; rows balance; nothing outside the
    warehouse changes and the outside file's content appears nowhere."""
    from speedprofile import tables
    from speedprofile.errors import UserError
    from speedprofile.ingest.pipeline import ingest

    outside = tmp_path / "outside" / "secret.txt"
    outside.parent.mkdir()
    outside.write_text(MARKER + "\n")
    expected = _hostile_files(tmp_path / "landing", outside)
    before = _outside_state(tmp_path, Path(ingest_warehouse))
    result = ingest(spark, ingest_warehouse, [str(tmp_path / "landing")], now=_NOW)

    refused = tables.read_arrow(ingest_warehouse, "rejected_files").to_pylist()
    assert {Path(r["source_file"]).name: r["reason"] for r in refused} == {
        name: reason for name, reason in expected.items() if reason}
    for r in refused:
        assert r["detail"] and "\n" not in r["detail"] and len(r["detail"]) < 600, r
    field = next(r for r in refused if r["source_file"].endswith("field64m.csv"))
    assert "line 3 is longer than 1048576 bytes" in field["detail"] and field["size_bytes"] > 64 << 20

    probes = tables.read_arrow(ingest_warehouse, "probes").to_pandas()
    owned = probes[~probes["is_context"]]
    by_file = owned.groupby(owned["source_file"].map(lambda p: Path(p).name)).size().to_dict()
    assert by_file == {"times.csv": 9, "xxe_param.gpx": 2}  # nothing lost, nothing from a refused file
    rejected = tables.read_arrow(ingest_warehouse, "rejected_probes").to_pandas()
    junk_rows = rejected[rejected["source_file"].str.endswith("junk_rows.csv")]
    assert len(junk_rows) > 0 and junk_rows["reason"].notna().all()
    assert result.rows_in == result.rows_kept + result.rows_rejected
    assert result.rows_kept == 11 and result.rows_rejected == len(rejected)

    for name, table in (("probes", probes), ("rejected_probes", rejected), ("rejected_files", pd.DataFrame(refused))):
        text = table.astype(str).to_csv()
        assert MARKER not in text, f"the outside file's content reached {name}"
    assert _outside_state(tmp_path, Path(ingest_warehouse)) == before
    # a file of unknown extension in a folder is left aside and said so; named explicitly it is refused
    assert [Path(f).name for f in result.ignored_files] == ["junk.bin"]
    assert "ignored 1 file(s) with unknown extensions" in "\n".join(result.summary_lines())
    with pytest.raises(UserError, match=r"junk\.bin: cannot tell the input format"):
        ingest(spark, ingest_warehouse, [str(tmp_path / "landing" / "junk.bin")], now=_NOW)
    refused = tables.read_arrow(ingest_warehouse, "rejected_files").to_pylist()
    assert {Path(r["source_file"]).name: r["reason"] for r in refused}["junk.bin"] == "wrong_format"


@pytest.mark.parametrize("bad", ["2024-03-01/../../../victim", "../2024-03-01", "2024-13-01", "landing"])
def test_ingest_date_must_be_a_date_not_a_path(ingest_warehouse, tmp_path, bad):
    from spark_apps.ingest_probes import main
    from speedprofile.errors import UserError

    victim = tmp_path / "victim"
    victim.mkdir()
    with pytest.raises(UserError, match="bad --date"):
        main(["--warehouse", ingest_warehouse, f"--date={bad}"])
    assert list(victim.iterdir()) == [] and sorted(p.name for p in Path(ingest_warehouse).iterdir()) == [
        "road_segments"]
