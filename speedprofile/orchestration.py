"""Builders of the Airflow DAGs, read off the stage registry (speedprofile/stages.py). The DAG files in dags/
(`ingest_probes.py`, `speed_profile_shard_NN.py`) only call these.

Grain: one run = one UTC day (the data interval [D 00:00, D+1 00:00) UTC; `--date` is D); a speed_profile run covers
one partition. The partition DAGs are spread over SHARDS files by a stable hash of the cell, so the DAG processor
parses each file (and meets its import timeout) with 1/SHARDS of the partitions; a task run builds only its own DAG
(Airflow's parsing context). Wiring only: Airflow and the standard library, no I/O beyond the partition list.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, get_parsing_context

from speedprofile.stages import Stage, partition_day_stages, stage

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SPARK_APPS = REPO / "spark_apps"
SHARDS = 16  # DAG files holding the partition DAGs (speed_profile_shard_00.py .. _15.py)
POSTGIS_CONN_ID = "speedprofile_postgis"
DSN_ENV = "SPEEDPROFILE_PG_DSN"
DATE = "{{ data_interval_start | ds }}"
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "speedprofile",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=20),
    "execution_timeout": timedelta(hours=1),
}
GATE_ARGS: dict[str, Any] = {"retries": 0, "execution_timeout": timedelta(minutes=10)}  # bad data does not heal on retry
SENSOR_ARGS: dict[str, Any] = {"mode": "reschedule", "poke_interval": 600, "timeout": 12 * 3600, "execution_timeout": None,
               "retries": 0}
# Run settings a trigger may override with its conf (`--conf '{"window_weeks": 2}'`): the registry's stage flags
# plus the gate thresholds. Read from dag_run.conf, not declared as DAG params: Airflow deep-copies the params into
# every task it builds, which doubled the parse time per DAG (benchmarks/dag_parse.py).
GATE_SETTINGS = {"min_match_rate": 0.5, "max_speed_kph": 200.0}
START = datetime(2024, 1, 1)


def warehouse_root() -> str:
    """$SPEEDPROFILE_WAREHOUSE (relative paths are taken from the repo root), else <repo>/warehouse."""
    root = os.environ.get("SPEEDPROFILE_WAREHOUSE", "warehouse")
    if "://" in root:
        return root.rstrip("/")
    return str((REPO / root).resolve())


def asset(warehouse: str, table: str, cell: str | None = None) -> Asset:
    """The Asset standing for one table (or one partition of it) in the warehouse."""
    uri = warehouse if "://" in warehouse else f"file://{warehouse}"
    if cell is None:
        return Asset(name=f"speedprofile.{table}", uri=f"{uri}/{table}", group="speedprofile")
    return Asset(name=f"speedprofile.{table}.{cell}", uri=f"{uri}/{table}/partition={cell}", group="speedprofile",
                 extra={"table": table, "partition": cell})


def partition_cells(warehouse: str) -> list[str]:
    """Cells from the partition list; [] with one log line when there is none yet (zero DAGs, no import error)."""
    path = os.environ.get("SPEEDPROFILE_PARTITIONS_FILE") or f"{warehouse}/road_segments/_partitions.json"
    if "://" in path:
        log.warning("speedprofile: cannot read %s at parse time; set SPEEDPROFILE_PARTITIONS_FILE to a local copy "
                    "of the partition list. No speed_profile DAGs generated.", path)
        return []
    try:
        with open(path) as fh:
            listing = json.load(fh)
        from speedprofile.validate import is_cell

        cells = [p["cell"] for p in listing["partitions"]]
        bad = [c for c in cells if not is_cell(c)]
        if bad:  # a cell names folders and DAG ids: anything but an H3 cell gets no DAG
            log.warning("speedprofile: %d entries of %s are not H3 cells (e.g. %r); no DAGs for them.",
                        len(bad), path, str(bad[0])[:60])
        return [c for c in cells if is_cell(c)]
    except FileNotFoundError:
        log.warning("speedprofile: no partition list at %s (run `speedprofile network build`); "
                    "no speed_profile DAGs generated.", path)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("speedprofile: unreadable partition list %s (%s); no speed_profile DAGs generated.", path, exc)
    return []


def shard_of(cell: str) -> int:
    """The DAG file (0..SHARDS-1) holding a partition's DAG: a stable hash, so a cell never changes file."""
    return zlib.crc32(cell.encode()) % SHARDS


def daily() -> CronDataIntervalTimetable:
    """Data interval = one UTC day, run just after it ends (a bare cron string would be zero-width in Airflow 3)."""
    return CronDataIntervalTimetable("0 0 * * *", timezone="UTC")


# -- task callables (imported work happens at run time, never at parse time) ----------------------------------------


def _day(context: dict[str, Any]):
    return context["data_interval_start"].date()


def poke_probes(warehouse: str, cell: str, **context) -> bool:
    """True once ingest has delivered the day (the partition may legitimately have no probes that day)."""
    from speedprofile.quality import probes_status

    st = probes_status(warehouse, _day(context), cell)
    log.info("probes for dt=%s partition=%s: day ingested=%s, %d rows (%s)",
             _day(context), cell, st.day_ingested, st.partition_rows, st.evidence)
    return st.day_ingested


def poke_landing(warehouse: str, **context) -> bool:
    """True once the day's landing folder holds a file."""
    from speedprofile.quality import landed

    ok, path = landed(warehouse, _day(context))
    log.info("landing folder %s: %s", path, "has files" if ok else "missing or empty")
    return ok


def run_gate(stage_name: str, warehouse: str, cell: str | None, **context) -> dict:
    """The stage's quality gate for this partition-day; a failure fails the task at once (no retry)."""
    from airflow.sdk.exceptions import AirflowFailException

    from speedprofile.quality import QualityError, Thresholds, gate, ingest_gate

    params = settings(context)
    try:
        if cell is None:
            res = ingest_gate(warehouse, _day(context))
        else:
            res = gate(stage_name, warehouse, _day(context), cell, Thresholds.from_params(params),
                       window_weeks=int(params.get("window_weeks", 4)))
    except QualityError as exc:
        raise AirflowFailException(str(exc)) from None
    log.info("%s", res.summary())
    return res.facts


def publish_partition(warehouse: str, cell: str) -> str:
    """`speedprofile publish` of the partition when a DSN is configured (connection, else env); skipped otherwise."""
    import subprocess
    import sys

    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException, AirflowSkipException

    try:
        dsn = BaseHook.get_connection(POSTGIS_CONN_ID).get_uri().replace("postgres://", "postgresql://", 1)
        source = f"connection {POSTGIS_CONN_ID}"
    except AirflowNotFoundException:
        dsn, source = os.environ.get(DSN_ENV, ""), f"${DSN_ENV}"
    if not dsn:
        raise AirflowSkipException(f"no PostGIS DSN configured (connection {POSTGIS_CONN_ID} or ${DSN_ENV}): "
                                   "publish skipped")
    exe = Path(sys.executable).with_name("speedprofile")
    cmd = [str(exe) if exe.exists() else "speedprofile", "publish", "--warehouse", warehouse, "--partition", cell]
    log.info("publishing partition %s to the DSN from %s", cell, source)
    # the DSN (password included) goes through the environment: a command line is readable by every local user
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, DSN_ENV: dsn})
    for line in (proc.stdout + proc.stderr).splitlines():
        log.info("%s", line.replace(dsn, "<dsn>"))
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["(no output)"]
        raise AirflowException(f"publish of partition {cell} failed (exit {proc.returncode}): "
                               f"{last[0].replace(dsn, '<dsn>')}")
    return f"published partition {cell}"


# -- DAG builders ---------------------------------------------------------------------------------------------------


def _submit(st: Stage, warehouse: str, cell: str | None) -> SparkSubmitOperator:
    """The stage's task: spark-submit on a `spark` connection, a Spark Connect client on a `spark_connect` one."""
    from speedprofile.airflow_stage import StageOperator

    args = ["--warehouse", warehouse, "--date", DATE]
    if cell is not None:
        args += ["--partition", cell]
    for f in st.flags:
        args += [f.flag, "{{ (dag_run.conf or {}).get('" + f.param + "', " + repr(f.default) + ") }}"]
    return StageOperator(
        task_id=st.name, application=str(REPO / (st.app or "")), conn_id="spark_default",
        name=st.name if cell is None else f"{st.name}__{cell}", application_args=args,
        outlets=[asset(warehouse, t, cell) for t in st.outputs if "." not in t],
    )


PARTITION_STAGES = partition_day_stages(runner=None)
SETTINGS = {**{f.param: f.default for s in PARTITION_STAGES for f in s.flags}, **GATE_SETTINGS}


DOC_MD = __doc__ + f"""
Run settings (defaults; override per run with the trigger's conf, e.g. `{{"window_weeks": 2}}`):
{", ".join(f"`{k}` = {v}" for k, v in SETTINGS.items())}. Stages and their order: `speedprofile stages`.
"""


def settings(context: dict[str, Any]) -> dict[str, Any]:
    """The run's settings: defaults overridden by the trigger's conf."""
    dag_run = context.get("dag_run")
    conf = (getattr(dag_run, "conf", None) or {}) if dag_run is not None else {}
    return {**SETTINGS, **{k: v for k, v in conf.items() if k in SETTINGS}}


def build_ingest_dag(warehouse: str) -> DAG:
    """`ingest_probes`: landing/dt=<D>/ -> probes, every partition; waits for files, then its gate."""
    st = stage("ingest_probes")
    with DAG(
        dag_id="ingest_probes",
        description="raw probe files landed for one UTC day -> probes / rejected_probes (every partition)",
        schedule=daily(), start_date=START, catchup=False, max_active_runs=1, max_active_tasks=1,
        dagrun_timeout=timedelta(hours=14), default_args=DEFAULT_ARGS, tags=["speedprofile"],
        doc_md=__doc__,
    ) as dag:
        wait = PythonSensor(task_id="wait_for_landing", python_callable=poke_landing,
                            op_kwargs={"warehouse": warehouse}, **SENSOR_ARGS)
        run = _submit(st, warehouse, None)
        check = PythonOperator(task_id=st.gate_task, python_callable=run_gate,
                               op_kwargs={"stage_name": st.name, "warehouse": warehouse, "cell": None}, **GATE_ARGS)
        wait >> run >> check
    return dag


# Warehouse maintenance: how long replaced rows stay readable (time travel for a backfill's before and after).
SNAPSHOT_RETENTION_DAYS = int(os.environ.get("SPEEDPROFILE_SNAPSHOT_RETENTION_DAYS", "7"))
SNAPSHOTS_KEPT = 5  # newest snapshots every table keeps, however old


def maintain_warehouse(warehouse: str, retention_days: int = SNAPSHOT_RETENTION_DAYS,
                       keep_last: int = SNAPSHOTS_KEPT, **context) -> dict:
    """Expire snapshots older than the retention (keeping the newest `keep_last`), then delete the files no
    snapshot references any more (replaced rows, writes killed before their commit) once older than a day."""
    from datetime import UTC

    from speedprofile import tables

    now = datetime.now(UTC)
    expired = tables.expire_snapshots(warehouse, now - timedelta(days=retention_days), retain_last=keep_last)
    removed = tables.remove_orphan_files(warehouse, now - timedelta(days=1))
    log.info("expired snapshots %s; removed unreferenced files %s", expired, removed)
    return {"expired": expired, "removed_files": removed}


def build_maintenance_dag(warehouse: str) -> DAG:
    """`warehouse_maintenance`: daily snapshot expiry and unreferenced-file removal for every table."""
    with DAG(
        dag_id="warehouse_maintenance",
        description=f"expire table snapshots older than {SNAPSHOT_RETENTION_DAYS} days; delete unreferenced files",
        schedule=daily(), start_date=START, catchup=False, max_active_runs=1, default_args=DEFAULT_ARGS,
        tags=["speedprofile", "maintenance"], doc_md=maintain_warehouse.__doc__,
    ) as dag:
        PythonOperator(task_id="expire_snapshots", python_callable=maintain_warehouse,
                       op_kwargs={"warehouse": warehouse}, retries=1)
    return dag


def build_dag(cell: str, warehouse: str) -> DAG:
    """`speed_profile__<cell>`: the partition-day stages of the registry, wired along their upstream stages."""
    with DAG(
        dag_id=f"speed_profile__{cell}",
        description=f"speed profiles of H3 partition {cell}, one UTC day per run",
        schedule=daily(), start_date=START,
        catchup=False,  # history goes through `airflow backfill create` (docs/airflow.md)
        max_active_runs=1,  # one partition-day at a time per partition: a 2-core box runs one Spark app per slot
        max_active_tasks=1,
        dagrun_timeout=timedelta(hours=6), default_args=DEFAULT_ARGS,
        tags=["speedprofile", f"partition:{cell}"],
        doc_md=DOC_MD,
    ) as dag:
        done: dict[str, Any] = {}  # stage name -> the task its downstream stages wait for (its gate, if any)
        for st in PARTITION_STAGES:
            task: SparkSubmitOperator | PythonOperator
            if st.runner == "spark":
                task = _submit(st, warehouse, cell)
            else:  # the registry's only Airflow-side stage: publishing to PostGIS
                task = PythonOperator(task_id=st.name, python_callable=publish_partition, retries=1,
                                      execution_timeout=timedelta(minutes=30),
                                      op_kwargs={"warehouse": warehouse, "cell": cell})
            for up in st.upstream:
                if up not in done:
                    done[up] = _wait_for(stage(up), warehouse, cell)
                if done[up] is not None:
                    done[up] >> task
            done[st.name] = task
            if st.gate:
                gate = PythonOperator(task_id=st.gate_task, python_callable=run_gate,
                                      op_kwargs={"stage_name": st.name, "warehouse": warehouse, "cell": cell},
                                      **GATE_ARGS)
                task >> gate
                done[st.name] = gate
    return dag


def _wait_for(up: Stage, warehouse: str, cell: str) -> PythonSensor | None:
    """A sensor for an upstream stage outside the partition-day DAG (ingest: its day); None for the network."""
    if up.scope != "day":
        return None
    table = up.outputs[0]
    return PythonSensor(task_id=f"wait_for_{table}", python_callable=poke_probes,
                        op_kwargs={"warehouse": warehouse, "cell": cell},
                        inlets=[asset(warehouse, table)], **SENSOR_ARGS)


def build_shard(namespace: dict[str, Any], shard: int) -> int:
    """Put the DAGs of shard `shard` into a DAG file's globals; a task run builds only the DAG it runs."""
    warehouse = warehouse_root()
    wanted = get_parsing_context().dag_id
    n = 0
    for cell in partition_cells(warehouse):
        dag_id = f"speed_profile__{cell}"
        if shard_of(cell) != shard or (wanted is not None and wanted != dag_id):
            continue
        namespace[dag_id] = build_dag(cell, warehouse)
        n += 1
    return n
