"""The table layer: the only way a stage, gate, CLI verb or server reads or writes a warehouse table.

Every table of `schemas.TABLES` is an Apache Iceberg table in one catalog per warehouse:
- the catalog is a JDBC catalog: a SQLite file `<warehouse>/catalog.db` for a local warehouse (the default), or the
  PostgreSQL database named by $SPEEDPROFILE_CATALOG (`postgresql://host:port/db`; user and password from
  $SPEEDPROFILE_CATALOG_USER / $SPEEDPROFILE_CATALOG_PASSWORD, never from a URL or the code). The password reaches
  the drivers (pgjdbc in the JVM, psycopg2 under pyiceberg) through a private PostgreSQL password file, never
  through a Spark conf, which Spark ships to executors;
- table data and metadata live under `<warehouse>/<table>/` (local paths, `s3a://` or `s3://`);
- Spark reads and writes through Iceberg's Spark runtime (jars of conf/jars.lock); everything without a JVM
  (gates, query, publish, exports, ingest's small tables) through pyiceberg, on the same catalog.

Replacing a partition-day is one Iceberg commit (`overwrite` by a partition filter): readers see the old rows or
the new, never none or half; two writers of different partitions both commit (Iceberg retries the later commit on
the new snapshot); a writer killed before its commit leaves the table as it was.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import stat
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas import TABLES, Table
from speedprofile import warehouse as wh
from speedprofile.errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession

NAMESPACE = "speedprofile"
CATALOG_ENV = "SPEEDPROFILE_CATALOG"
CATALOG_USER_ENV = "SPEEDPROFILE_CATALOG_USER"
CATALOG_PASSWORD_ENV = "SPEEDPROFILE_CATALOG_PASSWORD"
# pgjdbc (42.3 and later) reads a password file named by this JVM system property, else by $PGPASSFILE, else
# ~/.pgpass, whenever the connection properties hold no password; libpq (psycopg2) by its `passfile` parameter.
PGPASSFILE_PROPERTY = "org.postgresql.pgpassfile"
PASSFILE_NAME = "catalog.pgpass"
SQLITE_NAME = "catalog.db"
SQLITE_BUSY_MS = 120_000  # a writer waits this long for another process's catalog transaction
COMMIT_RETRIES = 20  # Iceberg retries a commit that lost a race with another partition's commit
REPO = Path(__file__).resolve().parents[1]
JARS_LOCK = REPO / "conf" / "jars.lock"

# Table properties: Iceberg's own commit retry (different partitions never conflict, a retry re-applies the
# overwrite on the newer snapshot); old metadata files are pruned as snapshots expire.
TABLE_PROPERTIES = {
    "commit.retry.num-retries": str(COMMIT_RETRIES),
    "commit.retry.min-wait-ms": "50",
    "commit.retry.max-wait-ms": "5000",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "50",
    "format-version": "2",
    # Writers lay rows out themselves (a partition-day job writes few folders): no extra shuffle by partition
    # key; see tables.write for how many files a task keeps open.
    "write.distribution-mode": "none",
    "write.spark.fanout.enabled": "false",
    # Exact min/max of every column, so a delete by a non-key column (ingest's `src`) drops whole files.
    "write.metadata.metrics.default": "full",
}


# Most partitions a Spark write keeps open at once (one file each) before it sorts its rows by partition key.
FANOUT_MAX_PARTITIONS = 16

# Partition fields beside the table's own keys: ingest replaces the rows of one input file (`src`) at a time, and
# Iceberg drops whole files only, so each file holds one source.
EXTRA_PARTITION_FIELDS = {"probes": ("src",), "rejected_probes": ("src",)}


class TableError(UserError):
    """A table operation that cannot be done as asked (unknown table, catalog not configured)."""


# -- jars and catalog settings ---------------------------------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("SPEEDPROFILE_CACHE", Path.home() / ".cache" / "speedprofile"))


def jar_paths() -> list[str]:
    """Local paths of the jars of conf/jars.lock in the cache (scripts/fetch_jars.sh puts them there). Where the
    lock is not shipped (an installed wheel on a node), every jar of the cache's jars/ folder, which the
    deployment fills from the same lock."""
    folder = cache_dir() / "jars"
    lock = Path(os.environ.get("SPEEDPROFILE_JARS_LOCK", JARS_LOCK))
    if not lock.is_file():
        found = sorted(str(p) for p in folder.glob("*.jar"))
        if not found:
            raise TableError(f"no jars in {folder}: run `make setup` (scripts/fetch_jars.sh) or deploy them there")
        return found
    out = []
    for line in lock.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        _, artifact, version = line.split()[0].split(":")
        path = folder / f"{artifact}-{version}.jar"
        if not path.is_file():
            raise TableError(f"missing {path}: run `make setup` (scripts/fetch_jars.sh fetches the pinned jars)")
        out.append(str(path))
    return out


def spark_jars() -> str:
    """The `spark.jars` / `--jars` value: Iceberg's Spark runtime, the catalog's JDBC drivers, s3a."""
    return ",".join(jar_paths())


@dataclass(frozen=True)
class Catalog:
    """Where one warehouse's table catalog lives."""

    warehouse: str
    kind: str  # "sqlite" | "postgresql"
    location: str  # the SQLite file, or host:port/db

    @property
    def name(self) -> str:
        """A catalog name unique to this warehouse and catalog (one Spark session may use several)."""
        digest = hashlib.sha256(f"{self.warehouse_uri}|{self.kind}|{self.location}".encode()).hexdigest()[:12]
        return f"sp_{digest}"

    @property
    def warehouse_uri(self) -> str:
        """The warehouse root as Iceberg file IO expects it (s3a:// stays s3a:// for Hadoop's S3A)."""
        if wh.is_remote(self.warehouse):
            uri = self.warehouse.rstrip("/")
            return "s3a://" + uri.removeprefix("s3://") if uri.startswith("s3://") else uri
        return "file://" + os.path.abspath(self.warehouse.removeprefix("file://"))

    def jdbc(self) -> dict[str, str]:
        """JDBC catalog properties for Iceberg's Java catalog (no secret: callers add the user; the password comes
        from the password file)."""
        if self.kind == "sqlite":
            return {"uri": f"jdbc:sqlite:{self.location}?busy_timeout={SQLITE_BUSY_MS}&journal_mode=WAL"}
        props = {"uri": f"jdbc:postgresql://{self.location}"}
        return props

    def spark_conf(self) -> dict[str, str]:
        """The session confs that register the catalog: location, warehouse, S3A settings and the PostgreSQL user,
        never a password (Spark ships SQL confs to executors and shows them to anyone reading the session's conf)."""
        prefix = f"spark.sql.catalog.{self.name}"
        conf = {
            prefix: "org.apache.iceberg.spark.SparkCatalog",
            f"{prefix}.type": "jdbc",
            f"{prefix}.warehouse": self.warehouse_uri,
            f"{prefix}.cache-enabled": "false",  # every read sees the newest commit of any process
        }
        for k, v in self.jdbc().items():
            conf[f"{prefix}.{k}"] = v
        for k, v in s3a_conf().items():  # the catalog's file IO (Hadoop S3A) on an object-store warehouse
            conf[f"{prefix}.hadoop.{k}"] = v
        if self.kind == "postgresql":
            user, _ = _catalog_credentials()
            conf[f"{prefix}.jdbc.user"] = user
        return conf

    def passfile(self) -> Path:
        """This user's private PostgreSQL password file, holding the catalog's login (written when missing or
        stale)."""
        return _catalog_passfile(self.location)

    def sqlalchemy_uri(self) -> str:
        """pyiceberg's database URL: the PostgreSQL user and, instead of the password, the password file."""
        if self.kind == "sqlite":
            return f"sqlite:///{self.location}?timeout={SQLITE_BUSY_MS // 1000}"
        from urllib.parse import quote

        user, _ = _catalog_credentials()
        sep = "&" if "?" in self.location else "?"
        passfile = quote(str(self.passfile()), safe="/")
        return f"postgresql+psycopg2://{quote(user, safe='')}@{self.location}{sep}passfile={passfile}"


def _catalog_credentials() -> tuple[str, str]:
    user, password = os.environ.get(CATALOG_USER_ENV), os.environ.get(CATALOG_PASSWORD_ENV)
    if not user or password is None:
        raise TableError(f"${CATALOG_ENV} names a PostgreSQL catalog: set ${CATALOG_USER_ENV} and "
                         f"${CATALOG_PASSWORD_ENV} too")
    return user, password


def _catalog_passfile(location: str) -> Path:
    user, password = _catalog_credentials()
    return write_passfile(*_pg_address(location), user, password)


def _pg_address(location: str) -> tuple[str, str, str]:
    """host, port and database of `host[:port]/db[?params]` as pgjdbc and libpq match them against a password
    file (port 5432 when not given)."""
    from urllib.parse import unquote

    netloc, _, rest = location.partition("/")
    host, port = netloc, "5432"
    if ":" in netloc and not netloc.endswith("]"):
        host, port = netloc.rsplit(":", 1)
    return host, port or "5432", unquote(rest.split("?", 1)[0])


def private_dir() -> Path:
    """A folder of this user alone (0700) for files holding secrets: $XDG_RUNTIME_DIR/speedprofile when the
    session has a runtime folder, else <tmp>/speedprofile-<uid>. Refused when it is someone else's or a link."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isdir(runtime):
        folder = Path(runtime) / "speedprofile"
    else:
        folder = Path(tempfile.gettempdir()) / f"speedprofile-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise TableError(f"{folder} is not a folder of this user: remove it, or set $XDG_RUNTIME_DIR")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(folder, 0o700)
    return folder


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def write_passfile(host: str, port: str, database: str, user: str, password: str) -> Path:
    """Put the login into this user's password file (PostgreSQL's `.pgpass` format, mode 0600, in private_dir):
    one line per host, port, database and user, replaced in one rename, so concurrent drivers of this user, and
    JVMs that read the file while it changes, see it whole."""
    if any(c in v for v in (host, port, database, user, password) for c in "\r\n"):
        raise TableError("a catalog login with a line break cannot go into a PostgreSQL password file")
    folder = private_dir()
    path = folder / PASSFILE_NAME
    key = ":".join(_pgpass_field(v) for v in (host, port, database, user)) + ":"
    line = key + _pgpass_field(password)
    with open(folder / f"{PASSFILE_NAME}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            old = path.read_text().splitlines()
        except FileNotFoundError:
            old = []
        if line in old and stat.S_IMODE(path.stat().st_mode) == 0o600:
            return path
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{PASSFILE_NAME}.")  # mode 0600
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{ln}\n" for ln in [*(ln for ln in old if not ln.startswith(key)), line]))
        os.replace(tmp, path)
    return path


def passfile_env() -> dict[str, str]:
    """{"PGPASSFILE": path} for a JVM started from this environment (a Spark Connect server) when
    $SPEEDPROFILE_CATALOG is a PostgreSQL catalog with its login set, else {}."""
    setting = os.environ.get(CATALOG_ENV, "").strip()
    if not setting.startswith(("postgresql://", "postgres://")) or not os.environ.get(CATALOG_USER_ENV) \
            or os.environ.get(CATALOG_PASSWORD_ENV) is None:
        return {}
    return {"PGPASSFILE": str(_catalog_passfile(setting.split("://", 1)[1]))}


def s3a_conf() -> dict[str, str]:
    """Hadoop S3A settings from the environment shared with pyarrow and pyiceberg: the endpoint of
    $AWS_ENDPOINT_URL (path-style requests, TLS as its scheme says). Keys come from S3A's default credential
    chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), never from here."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "").strip()
    if not endpoint:
        return {}
    return {
        "fs.s3a.endpoint": endpoint,
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": str(endpoint.startswith("https://")).lower(),
        "fs.s3a.endpoint.region": os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
    }


def catalog(warehouse: str) -> Catalog:
    """The catalog of `warehouse`: $SPEEDPROFILE_CATALOG when set, else `<warehouse>/catalog.db` (local only)."""
    setting = os.environ.get(CATALOG_ENV, "").strip()
    if setting.startswith(("postgresql://", "postgres://")):
        location = setting.split("://", 1)[1]
        if "@" in location:
            raise TableError(f"${CATALOG_ENV} must not carry credentials; use ${CATALOG_USER_ENV} and "
                             f"${CATALOG_PASSWORD_ENV}")
        return Catalog(warehouse, "postgresql", location)
    if setting:
        path = setting.removeprefix("sqlite://").removeprefix("file://")
        return Catalog(warehouse, "sqlite", os.path.abspath(path))
    if wh.is_remote(warehouse):
        raise TableError(f"warehouse {warehouse} is on an object store: set ${CATALOG_ENV} to the catalog "
                         f"(postgresql://host:port/db, or a local SQLite file for a one-host setup)")
    root = os.path.abspath(warehouse.removeprefix("file://"))
    return Catalog(warehouse, "sqlite", os.path.join(root, SQLITE_NAME))


# -- pyiceberg side ---------------------------------------------------------------------------------------------------

_py_catalogs: dict[Catalog, Any] = {}
_lock = threading.Lock()


def _fileio_props() -> dict[str, str]:
    """pyiceberg's S3 settings from the same environment the rest of the stack uses."""
    props = {}
    env = os.environ
    if env.get("AWS_ENDPOINT_URL"):
        props["s3.endpoint"] = env["AWS_ENDPOINT_URL"]
    if env.get("AWS_ACCESS_KEY_ID"):
        props["s3.access-key-id"] = env["AWS_ACCESS_KEY_ID"]
    if env.get("AWS_SECRET_ACCESS_KEY"):
        props["s3.secret-access-key"] = env["AWS_SECRET_ACCESS_KEY"]
    props["s3.region"] = env.get("AWS_REGION", env.get("AWS_DEFAULT_REGION", "us-east-1"))
    if env.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        props["s3.force-virtual-addressing"] = "false"
    return props


def py_catalog(warehouse: str):
    """The pyiceberg catalog of `warehouse`, with the namespace and every table of schemas.TABLES created."""
    cat = catalog(warehouse)
    with _lock:
        got = _py_catalogs.get(cat)
        if got is not None:
            return got
        from pyiceberg.catalog.sql import SqlCatalog

        if cat.kind == "sqlite":
            os.makedirs(os.path.dirname(cat.location), exist_ok=True)
            _sqlite_wal(cat.location)
        c = SqlCatalog(cat.name, uri=cat.sqlalchemy_uri(), warehouse=cat.warehouse_uri, **_fileio_props())
        _create_all(c, cat)
        _py_catalogs[cat] = c
        return c


def _sqlite_wal(path: str) -> None:
    """WAL journal: readers never block the one writer (set once per file; it persists)."""
    con = sqlite3.connect(path, timeout=SQLITE_BUSY_MS / 1000)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def identifier(table: str) -> str:
    return f"{NAMESPACE}.{table}"


def _create_all(c, cat: Catalog) -> None:
    from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError

    try:
        c.create_namespace_if_not_exists(NAMESPACE)
    except NamespaceAlreadyExistsError:
        pass
    existing = {t[-1] for t in c.list_tables(NAMESPACE)}
    for t in TABLES.values():
        if t.name in existing:
            _add_new_columns(c, t)
            continue
        try:
            _create(c, cat, t)
        except TableAlreadyExistsError:  # another process created it meanwhile
            pass


def _add_new_columns(c, t: Table) -> None:
    """Schema evolution of a table made by an older release: columns the schema has gained are added (nullable; the
    rows already written read them as null). Iceberg adds columns by metadata alone, without rewriting data."""
    from pyiceberg.exceptions import CommitFailedException

    tbl = c.load_table(identifier(t.name))
    schema = iceberg_schema(t)
    if set(schema.names) <= {f.name for f in tbl.schema().fields}:
        return
    try:
        with tbl.update_schema() as update:
            update.union_by_name(schema)
    except CommitFailedException:  # another process evolved it meanwhile
        pass


def iceberg_schema(t: Table):
    """The table's schema as Arrow types Iceberg has (no 8/16-bit integers: they are stored as int)."""
    import pyarrow as pa

    fields = []
    for f in t.arrow_schema():
        typ = f.type
        if typ in (pa.int8(), pa.int16()):
            typ = pa.int32()
        elif pa.types.is_list(typ) and typ.value_type in (pa.int8(), pa.int16()):
            typ = pa.list_(pa.int32())
        fields.append(pa.field(f.name, typ, nullable=True))
    return pa.schema(fields)


def partition_keys(t: Table) -> tuple[str, ...]:
    """The table's Iceberg partition fields (identity transforms): its schema's keys, then any extra ones."""
    return (*t.partition_by, *EXTRA_PARTITION_FIELDS.get(t.name, ()))


def _create(c, cat: Catalog, t: Table) -> None:
    location = wh.table_path(cat.warehouse_uri, t.name)
    table = c.create_table(identifier(t.name), schema=iceberg_schema(t), location=location,
                           properties=TABLE_PROPERTIES)
    keys = partition_keys(t)
    if keys:
        with table.update_spec() as spec:
            for key in keys:
                spec.add_identity(key)


def load(warehouse: str, table: str | Table):
    """The pyiceberg Table, refreshed to the newest commit."""
    t = _table(table)
    return py_catalog(warehouse).load_table(identifier(t.name))


def committed_table(warehouse: str, table: str | Table):
    """The pyiceberg Table when it has a commit, else None; asking never creates a local warehouse's catalog."""
    cat = catalog(warehouse)
    if cat.kind == "sqlite" and not os.path.exists(cat.location):
        return None
    tbl = load(warehouse, table)
    return tbl if tbl.current_snapshot() is not None else None


def key_filter(table: str | Table, keys: Mapping[str, object]):
    """pyiceberg filter: the rows whose keys equal `keys` ({} = every row)."""
    return _py_replace_filter(_table(table), [keys])


def _table(table: str | Table) -> Table:
    if isinstance(table, Table):
        return table
    if table not in TABLES:
        raise TableError(f"unknown table {table!r}; tables: {', '.join(sorted(TABLES))}")
    return TABLES[table]


def _key_values(t: Table, dates, partitions, extra_keys) -> list[tuple[str, list[str]]]:
    out = []
    for key in t.partition_by:
        if key == "dt":
            vals = [str(d) for d in dates] if dates is not None else None
        elif key == "partition":
            vals = [str(p) for p in partitions] if partitions is not None else None
        else:
            got = (extra_keys or {}).get(key)
            vals = [str(v) for v in got] if got is not None else None
        if vals is not None:
            out.append((key, vals))
    for key, got in (extra_keys or {}).items():
        if key not in t.partition_by and got is not None:
            out.append((key, [str(v) for v in got]))
    return out


def _py_filter(t: Table, key_values: list[tuple[str, list[str]]]):
    from pyiceberg.expressions import AlwaysFalse, AlwaysTrue, And, In

    if any(not vals for _, vals in key_values):
        return AlwaysFalse()
    terms = [In(k, [_py_literal(t, k, v) for v in vals]) for k, vals in key_values]  # type: ignore[call-arg, arg-type]
    return reduce(And, terms) if terms else AlwaysTrue()  # type: ignore[arg-type]


def _py_literal(t: Table, key: str, value: str):
    typ = t.column(key).type
    if typ == "date":
        return date.fromisoformat(value)
    if typ.startswith("int"):
        return int(value)
    return value


def conform(t: Table, data: pa.Table, columns: Sequence[str] | None = None) -> pa.Table:
    """Rows read from Iceberg in the table's declared column order (or `columns`) and types (int8/int16 back
    from int)."""
    import pyarrow as pa

    schema = t.arrow_schema()
    if columns:
        schema = pa.schema([schema.field(c) for c in columns])
    cols = []
    for f in schema:
        col = data.column(f.name) if f.name in data.column_names else pa.nulls(data.num_rows, f.type)
        cols.append(col.cast(f.type) if col.type != f.type else col)
    return pa.Table.from_arrays(cols, schema=schema)


def read_arrow(
    warehouse: str, table: str | Table, dates: Sequence[date | str] | None = None,
    partitions: Sequence[str] | None = None, extra_keys: Mapping[str, Sequence[object]] | None = None,
    columns: Sequence[str] | None = None, snapshot_id: int | None = None,
) -> pa.Table:
    """Committed rows of `table` (optionally restricted to dt values, partitions and other key values, or as of a
    snapshot), typed by the schema; an empty table when nothing matches."""
    t = _table(table)
    tbl = load(warehouse, t)
    scan = tbl.scan(row_filter=_py_filter(t, _key_values(t, dates, partitions, extra_keys)),
                    snapshot_id=snapshot_id, selected_fields=tuple(columns) if columns else ("*",))
    return conform(t, scan.to_arrow(), columns)


def has_rows(warehouse: str, table: str | Table, dates: Sequence[date | str] | None = None,
             excluding: Mapping[str, Sequence[object]] | None = None) -> bool:
    """Whether the committed table holds rows on the given dt values, other than those whose key (e.g. `src`) is
    in `excluding`; read from the manifests (no data file is opened)."""
    from pyiceberg.expressions import And, Not

    t = _table(table)
    tbl = committed_table(warehouse, t)
    if tbl is None:
        return False
    flt = _py_filter(t, _key_values(t, dates, None, None))
    for key, vals in (excluding or {}).items():
        if vals:
            flt = And(flt, Not(_py_filter(t, [(key, [str(v) for v in vals])])))
    return any(_file_rows(tbl, flt))


def _file_rows(tbl, flt) -> Iterator[int]:
    """Record counts of the data files a scan with filter `flt` would read, from the manifests."""
    return (task.file.record_count for task in tbl.scan(row_filter=flt).plan_files())


def count_rows(warehouse: str, table: str | Table, dates: Sequence[date | str] | None = None,
               partitions: Sequence[str] | None = None, extra_keys: Mapping[str, Sequence[object]] | None = None
               ) -> int:
    """Committed rows of `table` in the data files that hold the given dt values, partitions and key values, from
    the manifests (no data file is opened); 0 for a table never written."""
    t = _table(table)
    tbl = committed_table(warehouse, t)
    if tbl is None:
        return 0
    return sum(_file_rows(tbl, _py_filter(t, _key_values(t, dates, partitions, extra_keys))))


def read_pandas(warehouse: str, table: str | Table, **kw):
    return read_arrow(warehouse, table, **kw).to_pandas()


def _py_replace_filter(t: Table, replace: Iterable[Mapping[str, object]]):
    from pyiceberg.expressions import AlwaysFalse, AlwaysTrue, And, EqualTo, Or

    ors = []
    for keys in replace:
        terms = [EqualTo(k, _py_literal(t, k, str(v))) for k, v in keys.items()]  # type: ignore[call-arg, arg-type]
        ors.append(reduce(And, terms) if terms else AlwaysTrue())  # type: ignore[arg-type]
    return reduce(Or, ors) if ors else AlwaysFalse()  # type: ignore[arg-type]


def write_arrow(warehouse: str, table: str | Table, data: pa.Table,
                replace: Iterable[Mapping[str, object]]) -> None:
    """Replace the rows matching any of `replace` (each {key: value}; [{}] = the whole table) with `data`, in one
    commit; retried on a lost race with another writer."""
    from pyiceberg.exceptions import CommitFailedException
    from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

    t = _table(table)
    replace = list(replace)
    data = data.select(t.names).cast(iceberg_schema(t))

    @retry(retry=retry_if_exception_type(CommitFailedException), stop=stop_after_attempt(COMMIT_RETRIES),
           wait=wait_random_exponential(multiplier=0.05, max=5), reraise=True)
    def commit() -> None:
        tbl = load(warehouse, t)
        flt = _py_replace_filter(t, replace)
        with warnings.catch_warnings():  # replacing nothing is normal (a first write), not worth a warning
            warnings.filterwarnings("ignore", message="Delete operation did not match any records")
            if data.num_rows:
                tbl.overwrite(data, overwrite_filter=flt)
            else:
                tbl.delete(delete_filter=flt)

    commit()


# -- Spark side -------------------------------------------------------------------------------------------------------

_registered: dict[int, set[str]] = {}


def spark_catalog(spark: SparkSession, warehouse: str) -> str:
    """Register the warehouse's catalog in the session (runtime confs) and return its Spark name."""
    cat = catalog(warehouse)
    py_catalog(warehouse)  # namespace and tables exist before Spark looks
    seen = _registered.setdefault(id(spark), set())
    if cat.name not in seen:
        if cat.kind == "postgresql":
            _jvm_passfile(spark, cat)
        for k, v in cat.spark_conf().items():
            spark.conf.set(k, v)
        seen.add(cat.name)
    return cat.name


def _jvm_passfile(spark: SparkSession, cat: Catalog) -> None:
    """Point pgjdbc in this process's driver JVM at the password file (a JVM system property: the JVM's
    environment is fixed at its start). A Spark Connect server reads its own, $PGPASSFILE of its environment."""
    from speedprofile.spark import is_connect

    if not is_connect(spark):
        path = cat.passfile()
        spark.sparkContext._jvm.java.lang.System.setProperty(PGPASSFILE_PROPERTY, str(path))  # type: ignore[union-attr]


def spark_identifier(spark: SparkSession, warehouse: str, table: str | Table) -> str:
    return f"{spark_catalog(spark, warehouse)}.{NAMESPACE}.{_table(table).name}"


def _spark_literal(t: Table, key: str, value: object):
    from pyspark.sql import functions as F

    typ = t.column(key).type
    if typ == "date":
        return F.lit(str(value)).cast("date")
    if typ.startswith("int"):
        return F.lit(int(str(value)))
    return F.lit(str(value))


def read(
    spark: SparkSession, warehouse: str, table: str | Table, dates: Sequence[date | str] | None = None,
    partitions: Sequence[str] | None = None, extra_keys: Mapping[str, Sequence[object]] | None = None,
    snapshot_id: int | None = None,
) -> DataFrame:
    """Committed rows of `table` as a Spark frame, restricted like read_arrow, typed by the schema."""
    from pyspark.sql import functions as F

    t = _table(table)
    reader = spark.read
    if snapshot_id is not None:
        reader = reader.option("snapshot-id", str(snapshot_id))
    df = reader.table(spark_identifier(spark, warehouse, t))
    for key, vals in _key_values(t, dates, partitions, extra_keys):
        if not vals:
            df = df.where(F.lit(False))
        else:
            df = df.where(F.col(key).isin([_spark_literal(t, key, v) for v in vals]))
    sch = t.spark_schema()
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in sch.fields])


def _spark_replace_condition(t: Table, replace: list[Mapping[str, object]]) -> Column:
    from pyspark.sql import functions as F

    ors = []
    for keys in replace:
        terms = [F.col(k) == _spark_literal(t, k, v) for k, v in keys.items()]
        ors.append(reduce(lambda a, b: a & b, terms) if terms else F.lit(True))
    return reduce(lambda a, b: a | b, ors) if ors else F.lit(False)


def write(df: DataFrame, warehouse: str, table: str | Table, replace: Iterable[Mapping[str, object]],
          partitions_per_task: int | None = None) -> None:
    """Replace exactly the rows of the partitions listed in `replace` (each {key: value}) with the rows of df, as
    one atomic Iceberg commit. A partition whose new output is empty loses its old rows; other partitions are
    never touched. Rows of df outside the listed partitions are an error (they would escape the replace).

    `partitions_per_task`: when the caller has laid df out so that no task holds rows of more than this many
    partitions (ingest packs whole folders into its write tasks), and that is at most FANOUT_MAX_PARTITIONS, each
    task writes them with one open file per partition instead of sorting its rows first."""
    from pyspark.sql import functions as F

    t = _table(table)
    replace = list(replace)
    cond = _spark_replace_condition(t, replace)
    sch = iceberg_schema(t)
    out = df.select(*[F.col(f.name).cast(_spark_type(f.type)).alias(f.name) for f in sch])
    if replace and any(replace):
        out = out.where(F.when(cond, F.lit(True)).otherwise(F.raise_error(F.lit(
            f"{t.name}: a row outside the partitions being replaced"))))
    # A write into a few named partitions (a partition-day stage) keeps one open file per partition (fanout, no
    # sort). Any other write (ingest, `run --all` over many cells) sorts each task's rows by the partition keys and
    # keeps one file open at a time: memory per task stays one Parquet row group however many partitions it holds
    # (a file open per partition ran out of a 3 GB heap at 1 M probes spread over ~1,700 day-cells).
    keys = partition_keys(t)
    few = (0 < len(replace) <= FANOUT_MAX_PARTITIONS and set(keys) == set(t.partition_by)
           and all(set(r) == set(keys) for r in replace))
    few = few or (partitions_per_task is not None and 0 < partitions_per_task <= FANOUT_MAX_PARTITIONS)
    if keys and not few:
        out = out.sortWithinPartitions(*keys)
    (out.writeTo(spark_identifier(df.sparkSession, warehouse, t)).option("fanout-enabled", str(few).lower())
     .overwrite(cond))


def _spark_type(arrow_type) -> str:
    import pyarrow as pa

    simple = {pa.string(): "string", pa.int32(): "int", pa.int64(): "bigint", pa.float32(): "float",
              pa.float64(): "double", pa.bool_(): "boolean", pa.date32(): "date", pa.binary(): "binary",
              pa.timestamp("us", tz="UTC"): "timestamp"}
    if arrow_type in simple:
        return simple[arrow_type]
    if pa.types.is_list(arrow_type):
        return f"array<{_spark_type(arrow_type.value_type)}>"
    raise TableError(f"no Spark type for {arrow_type}")


# -- maintenance and history -----------------------------------------------------------------------------------------

def snapshots(warehouse: str, table: str | Table) -> list[dict]:
    """Snapshots of the table, oldest first: id, committed_at (UTC), operation, added/deleted rows."""
    tbl = load(warehouse, table)
    out = []
    for s in tbl.snapshots():
        summary = s.summary.additional_properties if s.summary else {}
        out.append({
            "snapshot_id": s.snapshot_id,
            "committed_at": datetime.fromtimestamp(s.timestamp_ms / 1000, tz=UTC).isoformat(),
            "operation": str(s.summary.operation.value) if s.summary else "",
            "added_rows": int(summary.get("added-records", 0)),
            "deleted_rows": int(summary.get("deleted-records", 0)),
            "total_rows": int(summary.get("total-records", 0)),
        })
    return out


def expire_snapshots(warehouse: str, older_than: datetime, retain_last: int = 1,
                     tables: Sequence[str] | None = None) -> dict[str, int]:
    """Expire snapshots committed before `older_than`, keeping at least the newest `retain_last` of each table;
    returns the number expired per table. Data files only old snapshots referenced become unreachable."""
    out = {}
    cutoff_ms = int(older_than.timestamp() * 1000)
    for name in tables or sorted(TABLES):
        tbl = load(warehouse, name)
        snaps = sorted(tbl.snapshots(), key=lambda s: s.timestamp_ms)
        current = tbl.current_snapshot()
        keep = {s.snapshot_id for s in snaps[-retain_last:]} if retain_last > 0 else set()
        if current is not None:
            keep.add(current.snapshot_id)
        ids = [s.snapshot_id for s in snaps if s.timestamp_ms < cutoff_ms and s.snapshot_id not in keep]
        if ids:
            tbl.maintenance.expire_snapshots().by_ids(ids).commit()
        out[name] = len(ids)
    return out


def remove_orphan_files(warehouse: str, older_than: datetime, tables: Sequence[str] | None = None) -> dict[str, int]:
    """Delete files under each table's folder that no remaining snapshot references (data of expired snapshots,
    files of writes killed before their commit) and that are older than `older_than` (a write in progress is
    younger); returns the number deleted per table."""
    import pyarrow.fs as pafs

    from speedprofile import storage

    cutoff = older_than.timestamp()
    out = {}
    for name in tables or sorted(TABLES):
        tbl = load(warehouse, name)
        keep: set[str] = set()
        if tbl.current_snapshot() is not None:
            keep |= set(tbl.inspect.all_files().column("file_path").to_pylist())
            keep |= set(tbl.inspect.all_manifests().column("path").to_pylist())
        keep |= {snap.manifest_list for snap in tbl.snapshots()}
        keep |= {e.metadata_file for e in tbl.metadata.metadata_log}
        keep.add(tbl.metadata_location)
        keep = {_norm(p) for p in keep}
        root = wh.table_path(catalog(warehouse).warehouse_uri, name)
        fs, base = storage.filesystem(root)
        if fs.get_file_info(base).type != pafs.FileType.Directory:
            out[name] = 0
            continue
        gone = 0
        for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            if info.type != pafs.FileType.File or _norm(info.path) in keep:
                continue
            if info.mtime is not None and info.mtime.timestamp() >= cutoff:
                continue
            fs.delete_file(info.path)
            gone += 1
        out[name] = gone
    return out


def _norm(path: str) -> str:
    """A file's path without scheme (file:, s3a:, s3:), to compare catalog paths with listed ones."""
    for prefix in ("file://", "file:", "s3a://", "s3://"):
        if path.startswith(prefix):
            return "/" + path[len(prefix):].lstrip("/")
    return "/" + path.lstrip("/")


def export(warehouse: str, table: str | Table, out_dir: str, dates: Sequence[date | str] | None = None,
           partitions: Sequence[str] | None = None, snapshot_id: int | None = None) -> dict:
    """Write the committed rows as plain hive-partitioned Parquet under out_dir (replacing out_dir/<table>)."""
    import pyarrow.dataset as ds

    from speedprofile import storage

    t = _table(table)
    data = read_arrow(warehouse, t, dates=dates, partitions=partitions, snapshot_id=snapshot_id)
    dest = wh.join(out_dir, t.name)
    storage.delete(dest)
    fs, path = storage.filesystem(dest)
    fs.create_dir(path, recursive=True)
    if t.partition_by:
        part = ds.partitioning(data.select(list(t.partition_by)).schema, flavor="hive")
    else:
        part = None
    ds.write_dataset(data, path, filesystem=fs, format="parquet", partitioning=part,
                     existing_data_behavior="overwrite_or_ignore", basename_template="part-{i}.parquet")
    return {"table": t.name, "rows": data.num_rows, "path": dest}
