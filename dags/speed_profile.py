"""Daily DAGs: `ingest_probes` (landing/dt=<D>/ -> probes, all partitions) and one `speed_profile__<cell>` per
spatial partition listed in `<warehouse>/road_segments/_partitions.json`.

Grain: one run = one UTC day (the data interval [D 00:00, D+1 00:00) UTC; `--date` is D); a speed_profile run
covers one partition. ingest_probes: wait_for_landing -> ingest_probes -> check_ingest_probes.
speed_profile__<cell>: wait_for_probes -> match_traces -> check_match_traces -> bucket_traversals -> check_bucket_traversals ->
build_histograms -> check_build_histograms -> estimate_speeds -> check_estimate_speeds -> publish.
Wiring only: the stages are `spark_apps/<stage>.py` (spark-submit on the `spark_default` connection), the gates
live in `speedprofile.quality`, publishing is `speedprofile publish`. See docs/airflow.md.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param, chain, task

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SPARK_APPS = REPO / "spark_apps"
STAGES = ("match_traces", "bucket_traversals", "build_histograms", "estimate_speeds")
# Table each stage writes: its Asset (lineage in the UI), one per table and partition.
OUTPUT_TABLE = {
    "match_traces": "segment_traversals",
    "bucket_traversals": "bucketed_traversals",
    "build_histograms": "speed_histograms",
    "estimate_speeds": "speed_estimates",
}
WINDOWED = ("build_histograms", "estimate_speeds")  # stages taking --window-weeks
POSTGIS_CONN_ID = "speedprofile_postgis"
DSN_ENV = "SPEEDPROFILE_PG_DSN"

DATE = "{{ data_interval_start | ds }}"
DEFAULT_ARGS = {
    "owner": "speedprofile",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=20),
    "execution_timeout": timedelta(hours=1),
}


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
        return [str(p["cell"]) for p in listing["partitions"]]
    except FileNotFoundError:
        log.warning("speedprofile: no partition list at %s (run `speedprofile network build`); "
                    "no speed_profile DAGs generated.", path)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("speedprofile: unreadable partition list %s (%s); no speed_profile DAGs generated.", path, exc)
    return []


@task.sensor(task_id="wait_for_probes", mode="reschedule", poke_interval=600, timeout=12 * 3600,
             execution_timeout=None, retries=0)
def wait_for_probes(warehouse: str, cell: str, data_interval_start=None) -> bool:
    """True once ingest has delivered the day (the partition may legitimately have no probes that day)."""
    from speedprofile.quality import probes_status

    st = probes_status(warehouse, data_interval_start.date(), cell)
    log.info("probes for dt=%s partition=%s: day ingested=%s, %d rows (%s)",
             data_interval_start.date(), cell, st.day_ingested, st.partition_rows, st.evidence)
    return st.day_ingested


@task.sensor(task_id="wait_for_landing", mode="reschedule", poke_interval=600, timeout=12 * 3600,
             execution_timeout=None, retries=0)
def wait_for_landing(warehouse: str, data_interval_start=None) -> bool:
    """True once the day's landing folder holds a file."""
    from speedprofile.quality import landed

    ok, path = landed(warehouse, data_interval_start.date())
    log.info("landing folder %s: %s", path, "has files" if ok else "missing or empty")
    return ok


@task(task_id="check_ingest_probes", retries=0, execution_timeout=timedelta(minutes=10))
def check_ingest(warehouse: str, data_interval_start=None) -> dict:
    from airflow.sdk.exceptions import AirflowFailException

    from speedprofile.quality import QualityError, ingest_gate

    try:
        res = ingest_gate(warehouse, data_interval_start.date())
    except QualityError as exc:
        raise AirflowFailException(str(exc)) from None
    log.info("%s", res.summary())
    return res.facts


def make_gate(stage: str):
    @task(task_id=f"check_{stage}", retries=0, execution_timeout=timedelta(minutes=10))
    def check(warehouse: str, cell: str, params=None, data_interval_start=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from speedprofile.quality import QualityError, Thresholds, gate

        try:
            res = gate(stage, warehouse, data_interval_start.date(), cell, Thresholds.from_params(params),
                       window_weeks=int(params["window_weeks"]))
        except QualityError as exc:
            raise AirflowFailException(str(exc)) from None  # data does not heal on retry
        log.info("%s", res.summary())
        return res.facts

    return check


@task(task_id="publish", retries=1, execution_timeout=timedelta(minutes=30))
def publish(warehouse: str, cell: str) -> str:
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
    cmd = [str(exe) if exe.exists() else "speedprofile", "publish", "--warehouse", warehouse, "--dsn", dsn,
           "--partition", cell]
    log.info("publishing partition %s to the DSN from %s", cell, source)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        log.info("%s", line.replace(dsn, "<dsn>"))
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["(no output)"]
        raise AirflowException(f"publish of partition {cell} failed (exit {proc.returncode}): "
                               f"{last[0].replace(dsn, '<dsn>')}")
    return f"published partition {cell}"


def daily() -> CronDataIntervalTimetable:
    """Data interval = one UTC day, run just after it ends (a bare cron string would be zero-width in Airflow 3)."""
    return CronDataIntervalTimetable("0 0 * * *", timezone="UTC")


def build_ingest_dag(warehouse: str) -> DAG:
    with DAG(
        dag_id="ingest_probes",
        description="raw probe files landed for one UTC day -> probes / rejected_probes (every partition)",
        schedule=daily(),
        start_date=datetime(2024, 1, 1),
        catchup=False,
        max_active_runs=1,
        max_active_tasks=1,
        dagrun_timeout=timedelta(hours=14),
        default_args=DEFAULT_ARGS,
        tags=["speedprofile"],
        doc_md=__doc__,
    ) as dag:
        chain(
            wait_for_landing(warehouse),
            SparkSubmitOperator(
                task_id="ingest_probes",
                application=str(SPARK_APPS / "ingest_probes.py"),
                conn_id="spark_default",
                name="ingest_probes",
                application_args=["--warehouse", warehouse, "--date", DATE],
                outlets=[asset(warehouse, "probes"), asset(warehouse, "rejected_probes")],
            ),
            check_ingest(warehouse),
        )
    return dag


def build_dag(cell: str, warehouse: str) -> DAG:
    with DAG(
        dag_id=f"speed_profile__{cell}",
        description=f"speed profiles of H3 partition {cell}, one UTC day per run",
        schedule=daily(),
        start_date=datetime(2024, 1, 1),
        catchup=False,  # history goes through `airflow backfill create` (docs/airflow.md)
        max_active_runs=1,  # one partition-day at a time per partition: a 2-core box runs one Spark app per slot
        max_active_tasks=1,
        dagrun_timeout=timedelta(hours=6),
        default_args=DEFAULT_ARGS,
        params={
            "window_weeks": Param(4, type="integer", minimum=1, description="rolling histogram window, weeks"),
            "min_match_rate": Param(0.5, type="number", minimum=0, maximum=1,
                                    description="gate: minimum matched share of match_traces' input"),
            "max_speed_kph": Param(200.0, type="number", description="gate: highest plausible speed, km/h"),
        },
        tags=["speedprofile", f"partition:{cell}"],
        doc_md=__doc__,
    ) as dag:
        steps: list = [wait_for_probes.override(inlets=[asset(warehouse, "probes")])(warehouse, cell)]
        for stage in STAGES:
            args = ["--warehouse", warehouse, "--date", DATE, "--partition", cell]
            if stage in WINDOWED:
                args += ["--window-weeks", "{{ params.window_weeks }}"]
            steps.append(SparkSubmitOperator(
                task_id=stage,
                application=str(SPARK_APPS / f"{stage}.py"),
                conn_id="spark_default",
                name=f"{stage}__{cell}",
                application_args=args,
                outlets=[asset(warehouse, OUTPUT_TABLE[stage], cell)],
            ))
            steps.append(make_gate(stage)(warehouse, cell))
        steps.append(publish(warehouse, cell))
        chain(*steps)
    return dag


WAREHOUSE = warehouse_root()
ingest_probes = build_ingest_dag(WAREHOUSE)
for _cell in partition_cells(WAREHOUSE):
    globals()[f"speed_profile__{_cell}"] = build_dag(_cell, WAREHOUSE)
