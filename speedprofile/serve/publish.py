"""`speedprofile publish`: speed_estimates + road_segments geometry -> PostgreSQL/PostGIS, one partition at a time.

Grain: `<schema>.speed_estimates` one row per segment x tow_bucket (local time-of-week, Sunday 00:00 = 0);
`<schema>.road_segments` one row per directed segment with a LineString (EPSG:4326). Each partition is replaced
inside one transaction (advisory lock, DELETE the partition's rows, bulk COPY the new ones, record the
publication, COMMIT): readers see the old partition or the new one, never a mix, and a failure rolls back.
"""

from __future__ import annotations

import argparse
import io
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from schemas.bucketed_traversals import N_BUCKETS
from speedprofile import warehouse as wh
from speedprofile.errors import UserError

STAGE = "publish_estimates"
DEFAULT_SCHEMA = "speedprofile"
COPY_BATCH_ROWS = 250_000

SEGMENT_COLUMNS = ("segment_id", "osm_way_id", "from_node_id", "to_node_id", "reverse_segment_id", "length_m",
                   "road_class", "maxspeed_kph", "name", "timezone", "partition", "geom")
ESTIMATE_COLUMNS = ("segment_id", "tow_bucket", "speed_kph", "p15_kph", "p85_kph", "mean_kph", "harmonic_mean_kph",
                    "n_obs", "n_traces", "confidence", "free_flow_kph", "source", "window", "partition")
REJECT_REASONS = ("null_key", "bad_bucket", "null_speed", "no_segment", "duplicate_key")


def ddl(schema: str) -> list[str]:
    """Statements creating the PostGIS extension, schema, tables and indexes when missing (idempotent)."""
    s = _ident(schema)
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"""CREATE TABLE IF NOT EXISTS {s}.road_segments (
            segment_id bigint PRIMARY KEY,
            osm_way_id bigint,
            from_node_id bigint NOT NULL,
            to_node_id bigint NOT NULL,
            reverse_segment_id bigint,
            length_m double precision NOT NULL,
            road_class text NOT NULL,
            maxspeed_kph double precision,
            name text,
            timezone text,
            "partition" text NOT NULL,
            geom geometry(LineString, 4326) NOT NULL,
            published_at timestamptz NOT NULL DEFAULT now())""",
        f"CREATE INDEX IF NOT EXISTS road_segments_geom_gist ON {s}.road_segments USING gist (geom)",
        f'CREATE INDEX IF NOT EXISTS road_segments_partition ON {s}.road_segments ("partition")',
        f"CREATE INDEX IF NOT EXISTS road_segments_way_nodes ON {s}.road_segments (osm_way_id, from_node_id, to_node_id)",
        f"""CREATE TABLE IF NOT EXISTS {s}.speed_estimates (
            segment_id bigint NOT NULL,
            tow_bucket smallint NOT NULL CHECK (tow_bucket BETWEEN 0 AND {N_BUCKETS - 1}),
            speed_kph double precision NOT NULL,
            p15_kph double precision,
            p85_kph double precision,
            mean_kph double precision,
            harmonic_mean_kph double precision,
            n_obs bigint NOT NULL,
            n_traces bigint NOT NULL,
            confidence double precision NOT NULL,
            free_flow_kph double precision,
            source text NOT NULL,
            "window" text,
            "partition" text NOT NULL,
            published_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (segment_id, tow_bucket))""",
        f'CREATE INDEX IF NOT EXISTS speed_estimates_partition ON {s}.speed_estimates ("partition")',
        f"""CREATE TABLE IF NOT EXISTS {s}.publications (
            "partition" text PRIMARY KEY,
            "window" text,
            published_at timestamptz NOT NULL,
            segments bigint NOT NULL,
            estimates bigint NOT NULL,
            rejected jsonb NOT NULL)""",
    ]


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum() or not name[0].isalpha():
        raise UserError(f"invalid schema name {name!r}: letters, digits and _ only")
    return f'"{name}"'


def connect(dsn: str):
    """psycopg2 connection (autocommit off); a bad DSN or unreachable server is a one-line UserError."""
    import psycopg2

    if not dsn.startswith(("postgresql://", "postgres://")) and "=" not in dsn:
        raise UserError(f"--dsn must look like postgresql://user@host:port/dbname (got {dsn!r})")
    try:
        return psycopg2.connect(dsn, connect_timeout=10, application_name="speedprofile")
    except psycopg2.Error as exc:
        raise UserError(f"cannot connect to PostgreSQL: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def ensure_schema(conn, schema: str = DEFAULT_SCHEMA) -> None:
    """CREATE EXTENSION postgis + tables/indexes if missing; a server without PostGIS is a one-line UserError."""
    import psycopg2

    with conn.cursor() as cur:
        cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'postgis'")
        if cur.fetchone() is None:
            try:
                cur.execute("CREATE EXTENSION IF NOT EXISTS postgis")
            except psycopg2.Error as exc:
                conn.rollback()
                raise UserError(
                    f"PostGIS is not available in database {conn.info.dbname!r}: {_first_line(exc)} "
                    "(install it on the server, e.g. Debian 'postgresql-15-postgis-3', or have an admin run "
                    "CREATE EXTENSION postgis)"
                ) from None
        for stmt in ddl(schema):
            cur.execute(stmt)
    conn.commit()


def validate(estimates: pd.DataFrame, segment_ids: np.ndarray) -> tuple[pd.DataFrame, dict[str, int]]:
    """Split estimates into publishable rows and reject counts per reason (rows in = kept + rejected)."""
    n = len(estimates)
    reason = np.full(n, "", dtype=object)

    def mark(mask: np.ndarray, why: str) -> None:
        reason[(reason == "") & mask] = why

    seg = estimates["segment_id"]
    bucket = estimates["tow_bucket"]
    speed = pd.to_numeric(estimates["speed_kph"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    mark(seg.isna().to_numpy(), "null_key")
    b = bucket.to_numpy(dtype=float, na_value=np.nan)
    mark(~((b >= 0) & (b < N_BUCKETS)), "bad_bucket")
    mark(~np.isfinite(speed) | (speed < 0), "null_speed")
    mark(~seg.isin(segment_ids).to_numpy(), "no_segment")
    ok = reason == ""
    dup = np.zeros(n, dtype=bool)
    dup[ok] = estimates.loc[ok, ["segment_id", "tow_bucket"]].duplicated(keep="first").to_numpy()
    mark(dup, "duplicate_key")
    rejected = {r: int((reason == r).sum()) for r in REJECT_REASONS}
    return estimates.loc[reason == ""], rejected


def linestring_ewkt(lon: Sequence[float], lat: Sequence[float]) -> str | None:
    """EWKT LineString (EPSG:4326) of a polyline; None when it has < 2 finite vertices."""
    x, y = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    if len(x) < 2 or len(x) != len(y) or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return None
    return "SRID=4326;LINESTRING(" + ",".join(f"{a:.7f} {b:.7f}" for a, b in zip(x, y, strict=True)) + ")"


def _csv(df: pd.DataFrame) -> io.BytesIO:
    """DataFrame -> CSV bytes for COPY (nulls unquoted-empty, strings quoted)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    pacsv.write_csv(pa.Table.from_pandas(df, preserve_index=False), buf,
                    pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    buf.seek(0)
    return buf


def _copy(cur, schema: str, table: str, columns: Sequence[str], df: pd.DataFrame) -> None:
    cols = ", ".join(f'"{c}"' for c in columns)
    for start in range(0, len(df), COPY_BATCH_ROWS):
        chunk = df.iloc[start:start + COPY_BATCH_ROWS][list(columns)]
        cur.copy_expert(f"COPY {_ident(schema)}.{table} ({cols}) FROM STDIN WITH (FORMAT csv)", _csv(chunk))


def publish_partition(conn, schema: str, partition: str, segments: pd.DataFrame, estimates: pd.DataFrame,
                      before_commit: Callable[[], None] | None = None) -> dict:
    """Replace one partition in PostGIS in a single transaction; returns row accounting for it."""
    import json

    import psycopg2

    t0 = time.perf_counter()
    geom = [linestring_ewkt(lo, la) for lo, la in zip(segments["geom_lon_deg"], segments["geom_lat_deg"], strict=True)]
    segs = segments.assign(geom=geom, partition=partition)
    bad_geom = segs["geom"].isna()
    segs = segs.loc[~bad_geom]
    kept, rejected = validate(estimates, segs["segment_id"].to_numpy())
    kept = kept.assign(partition=partition)
    for c in ("n_obs", "n_traces"):
        kept[c] = kept[c].fillna(0).astype("int64")
    kept["tow_bucket"] = kept["tow_bucket"].astype("int16")
    window = None
    if len(kept) and "window" in kept:
        windows = sorted(str(w) for w in kept["window"].dropna().unique())
        window = ",".join(windows) or None
    s = _ident(schema)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"speedprofile.publish:{partition}",))
            cur.execute(f'DELETE FROM {s}.speed_estimates WHERE "partition" = %s', (partition,))
            cur.execute(f'DELETE FROM {s}.road_segments WHERE "partition" = %s', (partition,))
            _copy(cur, schema, "road_segments", SEGMENT_COLUMNS, segs)
            t_copy = time.perf_counter()
            _copy(cur, schema, "speed_estimates", ESTIMATE_COLUMNS, kept)
            copy_s = time.perf_counter() - t_copy
            cur.execute(
                f'''INSERT INTO {s}.publications ("partition", "window", published_at, segments, estimates, rejected)
                    VALUES (%s, %s, now(), %s, %s, %s)
                    ON CONFLICT ("partition") DO UPDATE SET "window" = EXCLUDED."window",
                      published_at = EXCLUDED.published_at, segments = EXCLUDED.segments,
                      estimates = EXCLUDED.estimates, rejected = EXCLUDED.rejected
                    RETURNING published_at''',
                (partition, window, len(segs), len(kept), json.dumps(rejected)),
            )
            published_at = cur.fetchone()[0]
        if before_commit is not None:
            before_commit()
        conn.commit()
    except psycopg2.Error as exc:
        conn.rollback()
        raise UserError(f"publishing partition {partition} failed, nothing changed: {_first_line(exc)}") from None
    except BaseException:
        conn.rollback()
        raise
    seconds = time.perf_counter() - t0
    return {
        "partition": partition,
        "rows_in": len(estimates),
        "rows_published": len(kept),
        "rows_rejected": int(sum(rejected.values())),
        "rejected": rejected,
        "segments_in": len(segments),
        "segments_published": len(segs),
        "segments_rejected": {"bad_geometry": int(bad_geom.sum())},
        "window": window,
        "published_at": published_at.isoformat(),
        "seconds": round(seconds, 3),
        "copy_estimates_seconds": round(copy_s, 3),
        "copy_rows_per_second": round(len(kept) / copy_s) if copy_s > 0 else math.inf,
    }


def publish(warehouse: str, dsn: str, partitions: Sequence[str] | None = None, schema: str = DEFAULT_SCHEMA,
            before_commit: Callable[[str], None] | None = None) -> list[dict]:
    """Publish the named partitions (default: all in speed_estimates); writes per-partition metrics."""
    from speedprofile.serve.data import estimate_partitions, load_estimates, load_segments

    cells = list(partitions) if partitions else estimate_partitions(warehouse)
    missing = sorted(set(cells) - set(estimate_partitions(warehouse)))
    if missing:
        raise UserError(f"partition(s) {', '.join(missing)} not in speed_estimates of {warehouse}")
    conn = connect(dsn)
    try:
        ensure_schema(conn, schema)
        results = []
        for cell in cells:
            segments = load_segments(warehouse, [cell])
            estimates = load_estimates(warehouse, [cell])
            hook = (lambda c=cell: before_commit(c)) if before_commit else None
            counts = publish_partition(conn, schema, cell, segments, estimates, before_commit=hook)
            wh.write_local_json(wh.metrics_path(warehouse, STAGE, None, cell), counts)
            results.append(counts)
        return results
    finally:
        conn.close()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dsn", default=None,
                   help=f"PostgreSQL DSN, e.g. postgresql://user@localhost:5432/speeds (default: ${DSN_ENV}; keep a "
                        "DSN holding a password in that variable: a command line is visible to other local users)")
    p.add_argument("--partition", default=None, help="comma-separated partition cells (default: all)")
    p.add_argument("--schema", default=DEFAULT_SCHEMA, help="PostgreSQL schema for the tables (default: %(default)s)")


DSN_ENV = "SPEEDPROFILE_PG_DSN"


def cli(args: argparse.Namespace) -> int:
    import os

    dsn = args.dsn or os.environ.get(DSN_ENV, "")
    if not dsn:
        raise UserError(f"no PostgreSQL DSN: set ${DSN_ENV} (or pass --dsn)")
    cells = [c.strip() for c in args.partition.split(",") if c.strip()] if args.partition else None
    for r in publish(args.warehouse, dsn, cells, args.schema):
        rej = ", ".join(f"{k} {v}" for k, v in r["rejected"].items() if v) or "none"
        print(f"partition {r['partition']}: {r['segments_published']} segments, {r['rows_published']} estimates "
              f"published ({r['copy_rows_per_second']:,} rows/s COPY); rejected: {rej}")
    return 0
