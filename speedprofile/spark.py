"""Spark plumbing shared by every job: session, partition-scoped reads, idempotent writes, stage metrics.

Jobs name exactly the partitions they read and write; cluster wiring (master, S3 endpoint, memory) comes from
spark-submit / spark-defaults, never from here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date

from pyspark.sql import DataFrame, SparkSession

from schemas import Table
from speedprofile import storage, tables
from speedprofile import warehouse as wh

SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # partitioned writes keep up to 16 folder writers open per task instead of sorting the task's rows by folder
    # (a partition-day job writes few folders; beyond 16 Spark falls back to the sort)
    "spark.sql.maxConcurrentOutputFileWriters": "16",
    # A whole-stage method over 8,000 bytecodes is never JIT-compiled by HotSpot and runs interpreted: ingest's
    # parse-and-validate projection is one. Above this size Spark generates code per operator instead (ingest's
    # parse and checks: about 35 % less CPU per row, measured on 1 M CSV rows).
    "spark.sql.codegen.hugeMethodLimit": "8000",
}
# Fixed when the session starts (not settable on a running one): Python workers forked from our daemon, whose
# import path keeps the per-task cache invalidation of pyspark's worker cheap (speedprofile.pydaemon).
START_CONF = {"spark.python.daemon.module": "speedprofile.pydaemon"}


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect client session (no JVM in this process)."""
    from pyspark.sql.utils import is_remote

    return is_remote() or type(spark).__module__.startswith("pyspark.sql.connect")


def session_builder(app_name: str) -> SparkSession.Builder:
    """A builder for a classic (JVM) session as the apps start it: table jars, worker daemon, session conf; callers
    may add their own (a master, memory) before getOrCreate."""
    builder = SparkSession.builder.appName(app_name).config("spark.ui.showConsoleProgress", "false")
    builder = builder.config("spark.jars", tables.spark_jars())
    for k, v in {**START_CONF, **SESSION_CONF}.items():
        builder = builder.config(k, v)
    return builder


def get_session(app_name: str) -> SparkSession:
    """The active session (tests, spark-submit, a Spark Connect client when SPARK_REMOTE is set) or a new one;
    UTC, dynamic partition overwrite, Arrow on, concurrent writers for partitioned writes."""
    from pyspark.sql.utils import is_remote

    if is_remote() or os.environ.get("SPARK_REMOTE"):
        # a long-lived Spark Connect server: no JVM start, no Python worker pool start; session confs only
        spark = SparkSession.builder.getOrCreate()
    else:
        spark = session_builder(app_name).getOrCreate()
    for k, v in SESSION_CONF.items():
        spark.conf.set(k, v)
    return spark


def default_parallelism(spark: SparkSession) -> int:
    """Task slots of the cluster (classic sessions ask the SparkContext; Connect clients read the conf)."""
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    for key in ("spark.default.parallelism", "spark.sql.leafNodeDefaultParallelism"):
        try:
            value = spark.conf.get(key, None)
        except Exception:  # an unset conf without a default
            value = None
        if value:
            return int(value)
    return max(2, os.cpu_count() or 2)


def whole_waves(spark: SparkSession, tasks: int) -> int:
    """`tasks` rounded up to a whole number of waves over the cluster's task slots (default parallelism).

    Tasks of one stage take about as long as each other, so a stage of 3 such tasks on 2 cores runs 2 waves, the
    second on one core; 4 smaller tasks finish in about 3/4 of that time."""
    slots = max(1, default_parallelism(spark))
    return max(1, -(-tasks // slots) * slots)


@contextmanager
def session_conf(spark: SparkSession, conf: dict[str, str]) -> Iterator[None]:
    """Set session confs for a block and restore the earlier values (or unset them) afterwards."""
    old = {k: spark.conf.get(k, None) for k in conf}
    for k, v in conf.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, before in old.items():
            if before is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, before)


def exists(spark: SparkSession | None, path: str) -> bool:
    return storage.exists(path)


def delete(spark: SparkSession | None, path: str) -> None:
    storage.delete(path)


def list_dir(spark: SparkSession | None, path: str) -> list[str]:
    """Names of the entries directly under path ([] if missing)."""
    return storage.list_dir(path)


def read_text(spark: SparkSession | None, path: str) -> str:
    return storage.read_text(path)


def write_text(spark: SparkSession | None, path: str, text: str) -> None:
    storage.write_text(path, text)


def empty_frame(spark: SparkSession, table: Table) -> DataFrame:
    return spark.createDataFrame([], table.spark_schema())


def read_table(
    spark: SparkSession,
    warehouse: str,
    table: str | Table,
    dates: Sequence[date | str] | None = None,
    partitions: Sequence[str] | None = None,
    extra_keys: dict[str, Sequence[str]] | None = None,
) -> DataFrame:
    """Committed rows of `table` restricted to the given dt values and partition cells (None = all), typed by the
    schema (speedprofile.tables.read)."""
    return tables.read(spark, warehouse, table, dates=dates, partitions=partitions, extra_keys=extra_keys)


def write_table(
    df: DataFrame,
    warehouse: str,
    table: str | Table,
    replace: Iterable[dict[str, object]],
) -> None:
    """Replace exactly the partitions listed in `replace` with the rows of df, in one atomic commit
    (speedprofile.tables.write)."""
    tables.write(df, warehouse, table, replace)


def write_metrics(
    spark: SparkSession | None, warehouse: str, stage: str, dt: object, partition: str | None, counts: dict
) -> None:
    """Row accounting of one stage for one partition-day, read by tests and the Airflow quality gates."""
    write_text(spark, wh.metrics_path(warehouse, stage, dt, partition), json.dumps(counts, indent=2, sort_keys=True, default=str))


def read_metrics(spark: SparkSession | None, warehouse: str, stage: str, dt: object, partition: str | None) -> dict | None:
    try:
        return json.loads(storage.read_text(wh.metrics_path(warehouse, stage, dt, partition)))
    except FileNotFoundError:
        return None


OBSERVED_COUNT_LIMIT = 256  # above this many key combinations, count with a separate aggregation pass


def counted(df: DataFrame, key_values: dict[str, Sequence[object]], name: str,
            limit: int = OBSERVED_COUNT_LIMIT) -> tuple[DataFrame, Callable[[], dict[tuple, int]]]:
    """Row counts per combination of key values, gathered while the next action on the returned frame runs.

    key_values: column -> the values it can take (None allowed, matched null-safely). Returns (frame, get); after
    one action on `frame` (e.g. its write), get() gives {(v1, v2, ...): rows} for every combination, so the stage
    accounts for its input without a second pass. With more than `limit` combinations get() runs one grouped count
    of `df` instead. get() raises if some row matched no listed combination (the counts would not add up).
    """
    import itertools

    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    cols = list(key_values)
    combos = list(itertools.product(*(list(v) for v in key_values.values())))
    if len(combos) > limit:
        def grouped() -> dict[tuple, int]:
            rows = df.groupBy(*cols).count().collect()
            got = {tuple(r[c] for c in cols): r["count"] for r in rows}
            extra = set(got) - set(combos)
            if extra:
                raise ValueError(f"{name}: rows with unexpected {cols} values {sorted(map(str, extra))[:5]}")
            return {c: got.get(c, 0) for c in combos}
        return df, grouped

    obs = Observation(name)

    def cond(combo: tuple):
        c = F.lit(True)
        for col, v in zip(cols, combo, strict=True):
            c = c & (F.col(col).isNull() if v is None else F.col(col).eqNullSafe(F.lit(v)))
        return c

    exprs = [F.count_if(cond(combo)).alias(f"c{i}") for i, combo in enumerate(combos)]
    observed = df.observe(obs, F.count(F.lit(1)).alias("rows"), *exprs)

    def get() -> dict[tuple, int]:
        m = obs.get
        out = {combo: int(m[f"c{i}"]) for i, combo in enumerate(combos)}
        if sum(out.values()) != m["rows"]:
            raise ValueError(f"{name}: {m['rows'] - sum(out.values())} rows outside the listed {cols} values")
        return out

    return observed, get
