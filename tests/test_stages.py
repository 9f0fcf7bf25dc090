"""The stage registry is the one list of stages: every app, fixture folder, test file, schema, gate and doc row
agrees with it, and a new stage is one registry entry plus its own files (shown on a copy of the repository)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(os.environ.get("SPEEDPROFILE_REPO", Path(__file__).resolve().parents[1]))


def registry():
    from speedprofile import stages

    return stages


def test_registry_is_a_consistent_graph():
    st = registry()
    assert st.check() == []
    names = [s.name for s in st.in_order()]
    assert len(names) == len(set(names)) == len(st.REGISTRY)
    for s in st.REGISTRY:  # upstream stages come first
        assert all(names.index(u) < names.index(s.name) for u in s.upstream), s.name


def test_every_spark_app_is_a_registered_spark_stage():
    st = registry()
    apps = {p.stem for p in (REPO / "spark_apps").glob("*.py") if not p.name.startswith("_")}
    assert apps == {s.name for s in st.REGISTRY if s.runner == "spark"}


def test_every_fixture_folder_and_test_file_belongs_to_a_registered_stage():
    st = registry()
    folders = {p.name for p in (REPO / "fixtures").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert folders == set(st.STAGES), "fixtures/<stage>/ and the registry disagree"
    for name in st.STAGES:
        assert (REPO / "tests" / f"test_{name}.py").is_file(), f"tests/test_{name}.py missing for stage {name}"


def test_every_table_has_one_schema_and_one_writer():
    from schemas import TABLES

    st = registry()
    written = [t for s in st.REGISTRY for t in s.outputs if "." not in t]
    assert len(written) == len(set(written)), "a table written by two stages"
    assert set(written) == set(TABLES), "schemas/ and the registry's output tables disagree"
    for s in st.REGISTRY:
        for t in s.inputs:
            assert t in TABLES or st.producer(t) is None, (s.name, t)
        if s.keys and s.outputs[0] in TABLES:
            assert tuple(TABLES[s.outputs[0]].partition_by) == s.keys, s.name


def test_every_gate_kind_exists_and_every_gate_function_is_used():
    from speedprofile.quality import GATES

    st = registry()
    kinds = {s.gate for s in st.REGISTRY if s.gate}
    assert kinds <= set(GATES) | {"ingest_probes"}
    assert set(GATES) - {"accounting"} <= kinds


def test_run_and_demo_read_the_registry():
    from speedprofile import demo, run

    st = registry()
    assert list(run.STAGES) == [s.name for s in st.partition_day_stages("spark")]
    assert list(demo.TABLES) == st.tables()


def test_docs_name_only_registered_stages():
    st = registry()
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Stages", 1)[1].split("\n\n", 2)[1]
    rows = re.findall(r"^\| `(\w+)`", table, flags=re.M)
    assert rows and set(rows) <= set(st.STAGES), f"README stage table names unregistered stages: {rows}"
    airflow_doc = (REPO / "docs" / "airflow.md").read_text()
    gates = set(re.findall(r"`check_(\w+)`", airflow_doc))
    assert gates and gates <= set(st.STAGES), f"docs/airflow.md names gates of unregistered stages: {gates}"


def test_stage_names_are_not_typed_out_again_in_consumers():
    """The DAG builder, run, quality and demo list no stage sequence of their own (they read the registry)."""
    st = registry()
    spark = [s.name for s in st.partition_day_stages("spark")]
    for rel in ("speedprofile/orchestration.py", "speedprofile/run.py", "speedprofile/demo.py", *(
            str(p.relative_to(REPO)) for p in (REPO / "dags").glob("*.py"))):
        text = (REPO / rel).read_text()
        hits = [n for n in spark if f'"{n}"' in text]
        assert len(hits) <= 1, f"{rel} lists stages {hits} itself"


# -- adding a stage: registry + app + schema + fixture + test, nothing else ----------------------------------------

NEW_STAGE = '''    Stage(
        name="count_traversals", runner="spark",
        inputs=("segment_traversals",), outputs=("traversal_counts",), keys=("dt", "partition"),
        scope="partition_day", upstream=("match_traces",), gate="accounting",
        doc="traversals per segment and day", grain="one segment x day: traversal count",
    ),
'''
NEW_SCHEMA = '''"""traversal_counts: traversals per segment and day."""

from schemas._base import Column, Table

TRAVERSAL_COUNTS = Table(
    name="traversal_counts",
    grain="one segment x UTC day",
    partition_by=("dt", "partition"),
    columns=(
        Column("segment_id", "int64", "road segment"),
        Column("n_traversals", "int64", "traversals of the segment that day"),
        Column("dt", "date", "UTC day of the traversals"),
        Column("partition", "string", "partition of the segment"),
    ),
)
'''
NEW_APP = '''"""count_traversals: segment_traversals (dt, partition) -> traversal_counts, one row per segment and day."""

from __future__ import annotations

from speedprofile.jobargs import parse_job_args, run_app

STAGE = "count_traversals"


def main(argv: list[str] | None = None) -> int:
    from pyspark.sql import functions as F

    from speedprofile.spark import get_session, read_table, write_metrics, write_table

    args = parse_job_args(argv, __doc__.splitlines()[0])
    spark = get_session(STAGE)
    trav = read_table(spark, args.warehouse, "segment_traversals", dates=args.dates, partitions=args.partitions)
    counts = trav.groupBy("dt", "partition", "segment_id").agg(F.count(F.lit(1)).alias("n_traversals"))
    write_table(counts, args.warehouse, "traversal_counts",
                replace=[{"dt": d, "partition": p} for d in args.dates for p in args.partitions])
    for d in args.dates:
        for p in args.partitions:
            n_in = trav.where((F.col("dt") == str(d)) & (F.col("partition") == p)).count()
            write_metrics(spark, args.warehouse, STAGE, d, p, {"rows_in": n_in, "rows_out": n_in, "rejected": {}})
    return 0


if __name__ == "__main__":
    run_app(main)
'''
NEW_TEST = '''"""count_traversals: traversals per segment and day."""

import json
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "count_traversals"


def test_fixture_counts():
    rows = [json.loads(x) for x in (FIXTURE / "input" / "segment_traversals.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (FIXTURE / "expected" / "traversal_counts.jsonl").read_text().splitlines()]
    assert sum(e["n_traversals"] for e in expected) == len(rows)
'''


def _copy_repo(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", "warehouse", "demo_out", "results")
    for d in ("speedprofile", "schemas", "spark_apps", "dags", "fixtures", "tests", "docs", "conf"):
        shutil.copytree(REPO / d, dest / d, ignore=ignore)
    shutil.copy(REPO / "README.md", dest / "README.md")
    return dest


def _add_dummy_stage(root: Path, with_registry_entry: bool = True) -> None:
    """The five things a new stage needs: registry entry, app, schema, fixture, test."""
    if with_registry_entry:
        reg = root / "speedprofile" / "stages.py"
        text = reg.read_text()
        anchor = "\n)\n\nSTAGES: dict"
        assert anchor in text
        reg.write_text(text.replace(anchor, "\n" + NEW_STAGE.rstrip("\n") + "\n)\n\nSTAGES: dict", 1))
    (root / "spark_apps" / "count_traversals.py").write_text(NEW_APP)
    (root / "schemas" / "traversal_counts.py").write_text(NEW_SCHEMA)
    init = root / "schemas" / "__init__.py"
    text = init.read_text()
    text = text.replace("from schemas._base import Column, Table\n",
                        "from schemas._base import Column, Table\nfrom schemas.traversal_counts import TRAVERSAL_COUNTS\n")
    text = text.replace("SPEED_ESTIMATES,\n", "SPEED_ESTIMATES, TRAVERSAL_COUNTS,\n", 1)
    init.write_text(text)
    fx = root / "fixtures" / "count_traversals"
    (fx / "input").mkdir(parents=True)
    (fx / "expected").mkdir()
    (fx / "README.md").write_text("# count_traversals fixtures\n\n- two traversals of segment 1, one of 2.\n")
    (fx / "input" / "segment_traversals.jsonl").write_text(
        "\n".join(json.dumps({"segment_id": s, "trace_id": t}) for s, t in ((1, "a"), (1, "b"), (2, "a"))))
    (fx / "expected" / "traversal_counts.jsonl").write_text(
        "\n".join(json.dumps({"segment_id": s, "n_traversals": n}) for s, n in ((1, 2), (2, 1))))
    (root / "tests" / "test_count_traversals.py").write_text(NEW_TEST)


PROBE = r"""
import json, sys
from pathlib import Path
from airflow.dag_processing.dagbag import DagBag
from tests.seed import put_rows
from speedprofile import stages, run
from speedprofile.quality import gate
from speedprofile.warehouse import metrics_path

root, wh = Path(sys.argv[1]), Path(sys.argv[2])
cell = "87392c8a1ffffff"
out = {"stages_file": stages.__file__, "run_stages": list(run.STAGES)}
bag = DagBag(dag_folder=str(root / "dags"))
dag = bag.dags[f"speed_profile__{cell}"]
out["import_errors"] = list(bag.import_errors)
out["upstream"] = sorted(dag.task_dict["count_traversals"].upstream_task_ids)
out["gate_upstream"] = sorted(dag.task_dict["check_count_traversals"].upstream_task_ids)
out["app"] = dag.task_dict["count_traversals"].application
out["dry_run"] = [" ".join(c) for c in [run.stage_command("count_traversals", str(wh), "2024-03-05", "2024-03-05",
                                                           [cell])]]
# the new table is in this copy's schemas.TABLES, so the table layer has created it in the catalog like any other
for table, n in (("segment_traversals", 3), ("traversal_counts", 2)):
    put_rows(wh, table, {"dt": "2024-03-05", "partition": cell}, {"segment_id": list(range(n))})
m = Path(metrics_path(str(wh), "count_traversals", "2024-03-05", cell))
m.parent.mkdir(parents=True, exist_ok=True)
m.write_text(json.dumps({"rows_in": 3, "rows_out": 2, "rejected": {}}))
try:
    gate("count_traversals", str(wh), "2024-03-05", cell)
    out["gate"] = "passed"
except Exception as exc:
    out["gate"] = str(exc)
print(json.dumps(out))
"""


def _env(root: Path, tmp: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(root), SPEEDPROFILE_REPO=str(root), SPEEDPROFILE_WAREHOUSE=str(tmp / "wh"),
               AIRFLOW_HOME=str(tmp / "airflow"))
    env.pop("SPEEDPROFILE_PARTITIONS_FILE", None)
    return env


def test_a_new_stage_is_a_registry_entry_plus_its_own_files(tmp_path):
    def consistency(root: Path) -> list[str]:
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                str(root / "tests" / "test_stages.py"), "-k", "not new_stage"]

    root = _copy_repo(tmp_path / "repo")
    _add_dummy_stage(root, with_registry_entry=False)
    # the app, schema, fixture and test without the registry entry: the registry tests fail
    proc = subprocess.run(consistency(root), cwd=root, env=_env(root, tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "spark_app" in proc.stdout and "fixture" in proc.stdout

    # the same plus one registry entry: every consumer picks the stage up and the registry tests pass
    root = _copy_repo(tmp_path / "repo2")
    _add_dummy_stage(root)
    env = _env(root, tmp_path)
    (tmp_path / "wh" / "road_segments").mkdir(parents=True)
    (tmp_path / "wh" / "road_segments" / "_partitions.json").write_text(
        json.dumps({"h3_res": 7, "partitions": [{"cell": "87392c8a1ffffff"}]}))
    proc = subprocess.run(consistency(root), cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    proc = subprocess.run([sys.executable, "-c", PROBE, str(root), str(tmp_path / "wh")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["stages_file"].startswith(str(root))
    assert out["import_errors"] == []
    assert "count_traversals" in out["run_stages"]
    assert out["upstream"] == ["check_match_traces"] and out["gate_upstream"] == ["count_traversals"]
    assert out["app"] == str(root / "spark_apps" / "count_traversals.py")
    assert "spark_apps/count_traversals.py --warehouse" in out["dry_run"][0]
    assert out["gate"].startswith("quality gate after count_traversals failed") and \
        "rows_in 3 != rows_out 2 + rejected 0" in out["gate"]


@pytest.mark.parametrize("stage_name", ["match_traces", "estimate_speeds"])
def test_stage_lookup(stage_name):
    st = registry()
    assert st.stage(stage_name).app == f"spark_apps/{stage_name}.py"
    with pytest.raises(KeyError, match="known: build_network"):
        st.stage("nope")
