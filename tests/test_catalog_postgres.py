"""The head node's table catalog: Iceberg's JDBC catalog in PostgreSQL, shared by Spark and pyiceberg, with
concurrent writers of different partitions all committing."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from schemas import SPEED_ESTIMATES
from speedprofile import tables


def _rows(partition: str, n: int, speed: float) -> pa.Table:
    cols = {f.name: pa.nulls(n, f.type) for f in SPEED_ESTIMATES.arrow_schema()}
    cols.update(segment_id=pa.array(range(n), pa.int64()), tow_bucket=pa.array([7] * n, pa.int16()),
                speed_kph=pa.array([speed] * n), partition=pa.array([partition] * n))
    return pa.table(cols, schema=SPEED_ESTIMATES.arrow_schema())


@pytest.fixture
def pg_catalog(postgis_dsn, monkeypatch, tmp_path) -> str:
    """A warehouse folder whose catalog is a fresh PostgreSQL database (credentials from the environment)."""
    location = postgis_dsn.split("@", 1)[1]
    monkeypatch.setenv(tables.CATALOG_ENV, f"postgresql://{location}")
    monkeypatch.setenv(tables.CATALOG_USER_ENV, "postgres")
    monkeypatch.setenv(tables.CATALOG_PASSWORD_ENV, "not-checked-by-trust-auth")
    return str(tmp_path / "wh")


def test_spark_writes_and_pyiceberg_reads_through_the_postgres_catalog(spark, pg_catalog, postgis_dsn):
    import psycopg2

    df = spark.createDataFrame(_rows("A", 5, 42.0).to_pandas())
    tables.write(df, pg_catalog, SPEED_ESTIMATES, [{"partition": "A"}])
    got = tables.read_arrow(pg_catalog, "speed_estimates")
    assert got.num_rows == 5 and set(got.column("speed_kph").to_pylist()) == {42.0}
    assert tables.read(spark, pg_catalog, "speed_estimates", partitions=["A"]).where(F.col("speed_kph") == 42.0).count() == 5
    with psycopg2.connect(postgis_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT table_name FROM iceberg_tables WHERE table_namespace = %s", (tables.NAMESPACE,))
        assert {r[0] for r in cur.fetchall()} >= {"speed_estimates", "probes", "road_segments"}
    # The catalog never stores the password; Spark's conf carries it only as a redacted key.
    assert "not-checked-by-trust-auth" not in tables.catalog(pg_catalog).jdbc()["uri"]


def test_concurrent_writers_of_different_partitions_all_commit(pg_catalog):
    tables.py_catalog(pg_catalog)
    errors: list[BaseException] = []

    def writer(cell: str) -> None:
        try:
            for i in range(3):
                tables.write_arrow(pg_catalog, "speed_estimates", _rows(cell, 10, float(i)), [{"partition": cell}])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(c,)) for c in "ABCD"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    got = tables.read_arrow(pg_catalog, "speed_estimates").to_pandas()
    assert got.groupby("partition").size().to_dict() == {c: 10 for c in "ABCD"}
    assert set(got["speed_kph"]) == {2.0}  # every partition holds its last write only


def test_a_postgres_catalog_url_with_credentials_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(tables.CATALOG_ENV, "postgresql://user:secret@127.0.0.1:5432/db")
    with pytest.raises(tables.TableError, match="must not carry credentials") as info:
        tables.catalog(str(tmp_path))
    assert "secret" not in str(info.value)
