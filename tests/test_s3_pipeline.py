"""The seed's stack for real: every stage on a Spark standalone cluster (master + 2 workers) with the warehouse on
a real S3 object store (MinIO, `s3a://`), giving the tables of a local run; keys reach the processes through the
environment only, never a command line or a log."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from speedprofile import storage, tables
from speedprofile.cli import main as sp
from tests.plugins.infra import load_cluster_module
from tests.plugins.orchestration import SIM_DAYS

pytestmark = pytest.mark.slow

STAGE_TABLES = ("segment_traversals", "bucketed_traversals", "speed_histograms", "speed_estimates")


@contextmanager
def environ(extra: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def s3_cluster(minio_server, tmp_path_factory):
    """A secured standalone cluster whose daemons (and so their executors) hold the object store's keys in their
    environment, as the Pi roles' s3a.env gives them."""
    mod = load_cluster_module()
    state = tmp_path_factory.mktemp("s3-cluster")
    with environ(minio_server.env()):
        cluster = mod.Cluster(state_dir=str(state), auth=True)
        cluster.start(workers=2, cores=1, memory="1g")
    yield cluster
    cluster.stop()


def _rows(warehouse: str, table: str) -> list[str]:
    """The table's rows, sorted, floats to 12 significant digits (sums may differ in the last bits when rows reach
    a kernel in another order)."""
    t = tables.read_arrow(warehouse, table)
    t = t.select(sorted(t.column_names))

    def norm(v):
        return float(f"{v:.12g}") if isinstance(v, float) else v

    return sorted(json.dumps({k: norm(v) for k, v in r.items()}, sort_keys=True, default=str) for r in t.to_pylist())


def _write_inputs(src: Path, inputs: dict, dst: str) -> None:
    """The stage inputs of a local warehouse (partition list, road_segments, probes rows) into dst."""
    storage.write_text(f"{dst}/road_segments/_partitions.json",
                       (src / "road_segments" / "_partitions.json").read_text())
    for name, rows in inputs.items():
        tables.write_arrow(dst, name, rows, replace=[{}])


def test_pipeline_on_an_s3a_warehouse_on_the_cluster_equals_a_local_run(
        airflow_warehouse, minio_server, s3_cluster, tmp_path, monkeypatch, capfd):
    inputs = {name: tables.read_arrow(str(airflow_warehouse), name) for name in ("road_segments", "probes")}
    args = ["run", "--date", SIM_DAYS[0], "--to-date", SIM_DAYS[1], "--all", "--window-weeks", "1"]
    assert sp([*args, "--warehouse", str(airflow_warehouse)]) == 0
    local = {t: _rows(str(airflow_warehouse), t) for t in STAGE_TABLES}

    for k, v in minio_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(tables.CATALOG_ENV, str(tmp_path / "catalog.db"))
    s3_wh = minio_server.uri(f"pipeline-{uuid.uuid4().hex[:8]}")
    _write_inputs(Path(airflow_warehouse), inputs, s3_wh)
    monkeypatch.setenv("SPARK_CONF_DIR", str(s3_cluster.conf_dir))  # the cluster's secret (RPC auth)
    apps_before = len(s3_cluster.state().get("completedapps", []))
    assert sp([*args, "--warehouse", s3_wh, "--master", s3_cluster.url, "--log-dir", str(tmp_path / "logs"),
               "--conf", "spark.executor.memory=512m", "--conf", "spark.sql.shuffle.partitions=8"]) == 0

    for table in STAGE_TABLES:
        assert local[table], table
        assert _rows(s3_wh, table) == local[table], table
    # The data is in the bucket, under the warehouse prefix.
    assert storage.list_files(f"{s3_wh}/speed_estimates/data")
    # The cluster ran every stage app (not a local fallback).
    assert len(s3_cluster.state().get("completedapps", [])) - apps_before >= 4
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log"))
    # No key in any log or console output.
    out = capfd.readouterr()
    for text in (logs, out.out, out.err, minio_server.log()):
        assert minio_server.secret_key not in text
