"""The head node's table catalog: Iceberg's JDBC catalog in PostgreSQL, shared by Spark and pyiceberg, with
concurrent writers of different partitions all committing. The catalog's role logs in with a password
(scram-sha-256), which reaches pgjdbc and psycopg2 through a private password file, never through a Spark conf."""

from __future__ import annotations

import os
import secrets
import stat
import threading
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from schemas import SPEED_ESTIMATES
from speedprofile import tables

ROLE = "sp_catalog_login"
# ':' and '\' must be escaped in a password file; both drivers must read them back
PASSWORD = f"cat:{secrets.token_hex(8)}\\pw"


def _rows(partition: str, n: int, speed: float) -> pa.Table:
    cols = {f.name: pa.nulls(n, f.type) for f in SPEED_ESTIMATES.arrow_schema()}
    cols.update(segment_id=pa.array(range(n), pa.int64()), tow_bucket=pa.array([7] * n, pa.int16()),
                speed_kph=pa.array([speed] * n), partition=pa.array([partition] * n))
    return pa.table(cols, schema=SPEED_ESTIMATES.arrow_schema())


@pytest.fixture(scope="module")
def password_role(postgres_cluster) -> str:
    """A login role of the session cluster that must give its password (scram-sha-256 from 127.0.0.1; every
    other role keeps the cluster's trust)."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(postgres_cluster)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET password_encryption = 'scram-sha-256'")
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD)))
        cur.execute("SHOW hba_file")
        hba = Path(cur.fetchone()[0])
        hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        cur.execute("SELECT pg_reload_conf()")
    conn.close()
    return ROLE


@pytest.fixture
def pg_catalog(postgis_dsn, password_role, monkeypatch, tmp_path) -> str:
    """A warehouse folder whose catalog is a fresh PostgreSQL database owned by the password role (login from the
    environment, the password file in a private runtime folder)."""
    import psycopg2
    from psycopg2 import sql

    with psycopg2.connect(postgis_dsn) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
            sql.Identifier(postgis_dsn.rsplit("/", 1)[1]), sql.Identifier(password_role)))
    location = postgis_dsn.split("@", 1)[1]
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv(tables.CATALOG_ENV, f"postgresql://{location}")
    monkeypatch.setenv(tables.CATALOG_USER_ENV, password_role)
    monkeypatch.setenv(tables.CATALOG_PASSWORD_ENV, PASSWORD)
    return str(tmp_path / "wh")


def test_the_catalog_role_needs_its_password(pg_catalog, postgis_dsn):
    import psycopg2

    host_port, db = postgis_dsn.split("@", 1)[1].split("/")
    host, port = host_port.split(":")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host=host, port=port, dbname=db, user=ROLE, password="wrong")


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
    assert PASSWORD not in tables.catalog(pg_catalog).jdbc()["uri"]


def test_no_spark_conf_holds_the_catalog_password(spark, pg_catalog):
    """Spark reads and writes through the catalog while neither the session's confs nor the SparkContext's conf
    (what executors get) hold the password: pgjdbc in the driver JVM reads it from the private password file."""
    df = spark.createDataFrame(_rows("B", 3, 50.0).to_pandas())
    tables.write(df, pg_catalog, SPEED_ESTIMATES, [{"partition": "B"}])
    assert tables.read(spark, pg_catalog, "speed_estimates", partitions=["B"]).count() == 3
    name = tables.spark_catalog(spark, pg_catalog)
    session = dict(spark.conf.getAll)
    context = dict(spark.sparkContext.getConf().getAll())
    assert session[f"spark.sql.catalog.{name}.jdbc.user"] == ROLE
    assert f"spark.sql.catalog.{name}.jdbc.password" not in session
    assert [k for k, v in {**session, **context}.items() if PASSWORD in v] == []
    # the JVM knows the file's path only; the file and its folder are this user's alone
    jvm = spark.sparkContext._jvm
    path = Path(jvm.java.lang.System.getProperty(tables.PGPASSFILE_PROPERTY))
    assert path == tables.catalog(pg_catalog).passfile() and path.parent == Path(os.environ["XDG_RUNTIME_DIR"]) / "speedprofile"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert PASSWORD not in str(path)
    props = jvm.java.lang.System.getProperties()
    assert [k for k in props.stringPropertyNames() if PASSWORD in (props.getProperty(k) or "")] == []
    # pyiceberg's URL names the file, not the password
    uri = tables.catalog(pg_catalog).sqlalchemy_uri()
    assert "passfile=" in uri and PASSWORD not in uri and quote(PASSWORD, safe="") not in uri


def test_the_password_file_escapes_and_keeps_other_logins(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    a = tables.write_passfile("db1", "5432", "cat", "u", "p:1\\x")
    assert a.read_text() == "db1:5432:cat:u:p\\:1\\\\x\n"
    b = tables.write_passfile("db2", "6543", "cat", "u", "p2")
    c = tables.write_passfile("db1", "5432", "cat", "u", "p3")  # a new password replaces the old line
    assert a == b == c
    assert a.read_text() == "db2:6543:cat:u:p2\ndb1:5432:cat:u:p3\n"
    with pytest.raises(tables.TableError, match="line break"):
        tables.write_passfile("db1", "5432", "cat", "u", "p\nq")
    os.chmod(tmp_path / "speedprofile", 0o755)
    tables.write_passfile("db1", "5432", "cat", "u", "p3")
    assert stat.S_IMODE((tmp_path / "speedprofile").stat().st_mode) == 0o700


def test_a_connect_server_gets_the_password_file_instead_of_the_password(pg_catalog, tmp_path):
    from speedprofile import server

    env = server.server_env(tmp_path)
    assert tables.CATALOG_PASSWORD_ENV not in env
    assert not [k for k, v in env.items() if PASSWORD in v]
    line = Path(env["PGPASSFILE"]).read_text().splitlines()[-1]
    assert line.endswith(f":{ROLE}:" + PASSWORD.replace("\\", "\\\\").replace(":", "\\:"))


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
