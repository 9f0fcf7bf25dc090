"""Spark plumbing shared by every job: session, partition-scoped reads, idempotent writes, stage metrics.

Jobs name exactly the partitions they read and write; cluster wiring (master, S3 endpoint, memory) comes from
spark-submit / spark-defaults, never from here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import date

from pyspark.sql import DataFrame, SparkSession

from schemas import TABLES, Table
from speedprofile import warehouse as wh


def get_session(app_name: str) -> SparkSession:
    """The active session (tests, spark-submit) or a new one; UTC, dynamic partition overwrite, Arrow on."""
    builder = (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.ui.showConsoleProgress", "false")
    )
    spark = builder.getOrCreate()
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.sources.partitionOverwriteMode", "dynamic")
    return spark


def _fs(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def exists(spark: SparkSession, path: str) -> bool:
    fs, hpath = _fs(spark, path)
    return bool(fs.exists(hpath))


def delete(spark: SparkSession, path: str) -> None:
    fs, hpath = _fs(spark, path)
    if fs.exists(hpath):
        fs.delete(hpath, True)


def list_dir(spark: SparkSession, path: str) -> list[str]:
    """Names of the entries directly under path ([] if missing)."""
    fs, hpath = _fs(spark, path)
    if not fs.exists(hpath):
        return []
    return [st.getPath().getName() for st in fs.listStatus(hpath)]


def read_text(spark: SparkSession, path: str) -> str:
    if not wh.is_remote(path):
        with open(path.removeprefix("file://")) as fh:
            return fh.read()
    fs, hpath = _fs(spark, path)
    stream = fs.open(hpath)
    try:
        reader = spark.sparkContext._jvm.java.io.BufferedReader(
            spark.sparkContext._jvm.java.io.InputStreamReader(stream, "UTF-8")
        )
        lines = []
        while (line := reader.readLine()) is not None:
            lines.append(line)
        return "\n".join(lines)
    finally:
        stream.close()


def write_text(spark: SparkSession | None, path: str, text: str) -> None:
    if not wh.is_remote(path):
        import os

        path = path.removeprefix("file://")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(path + ".tmp", path)
        return
    assert spark is not None, "writing to a remote warehouse needs a Spark session"
    fs, hpath = _fs(spark, path)
    out = fs.create(hpath, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


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
    """Rows of `table` restricted to the given dt values and partition cells (None = all), typed by the schema.

    Missing partition folders are simply absent (an empty frame when none exist), never an error.
    """
    t = TABLES[table] if isinstance(table, str) else table
    root = wh.table_path(warehouse, t.name)
    if not exists(spark, root):
        return empty_frame(spark, t)
    key_values: list[tuple[str, list[str] | None]] = []
    for key in t.partition_by:
        if key == "dt":
            key_values.append((key, [str(d) for d in dates] if dates is not None else None))
        elif key == "partition":
            key_values.append((key, list(partitions) if partitions is not None else None))
        else:
            vals = (extra_keys or {}).get(key)
            key_values.append((key, list(vals) if vals is not None else None))
    # Expand explicit paths as deep as the keys are fixed; below that, let Spark discover.
    paths = [root]
    for key, values in key_values:
        if values is None:
            break
        paths = [wh.join(p, f"{key}={v}") for p in paths for v in values]
    paths = [p for p in paths if exists(spark, p)]
    if not paths:
        return empty_frame(spark, t)
    df = (
        spark.read.schema(t.spark_schema())
        .option("basePath", root)
        .parquet(*paths)
    )
    for key, values in key_values:
        if values is not None:
            df = df.where(df[key].cast("string").isin(values))
    return df.select(*t.names)


def write_table(
    df: DataFrame,
    warehouse: str,
    table: str | Table,
    replace: Iterable[dict[str, object]],
) -> None:
    """Replace exactly the partitions listed in `replace` (each a {key: value} dict) with the rows of df.

    Idempotent: the listed partitions are cleared first (so a partition whose new output is empty does not keep
    stale rows), then the frame is appended partitioned by the table's keys. Other partitions are never touched.
    """
    t = TABLES[table] if isinstance(table, str) else table
    spark = df.sparkSession
    for keys in replace:
        delete(spark, wh.partition_path(warehouse, t.name, **keys))
    out = df.select(*t.names)
    for c in t.partition_by:
        out = out.withColumn(c, out[c].cast("string")) if c == "dt" else out
    (
        out.write.mode("append")
        .partitionBy(*t.partition_by)
        .parquet(wh.table_path(warehouse, t.name))
    )


def write_metrics(
    spark: SparkSession | None, warehouse: str, stage: str, dt: object, partition: str | None, counts: dict
) -> None:
    """Row accounting of one stage for one partition-day, read by tests and the Airflow quality gates."""
    write_text(spark, wh.metrics_path(warehouse, stage, dt, partition), json.dumps(counts, indent=2, sort_keys=True, default=str))


def read_metrics(spark: SparkSession | None, warehouse: str, stage: str, dt: object, partition: str | None) -> dict | None:
    path = wh.metrics_path(warehouse, stage, dt, partition)
    try:
        if spark is None or not wh.is_remote(path):
            with open(path.removeprefix("file://")) as fh:
                return json.load(fh)
        return json.loads(read_text(spark, path))
    except FileNotFoundError:
        return None
