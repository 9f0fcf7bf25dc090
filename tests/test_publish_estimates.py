"""publish_estimates: warehouse -> PostGIS with COPY, per-partition transactional replace, row accounting."""

from __future__ import annotations

import json
import uuid

import psycopg2
import pytest

from speedprofile import warehouse as wh
from speedprofile.cli import main
from speedprofile.errors import UserError
from speedprofile.serve.publish import STAGE, publish
from tests.plugins.serve import fixture_segments, make_serve_warehouse

P1, P2 = "8739220f0ffffff", "87392201affffff"


def _counts(dsn: str) -> dict[str, int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute('SELECT "partition", count(*) FROM speedprofile.speed_estimates GROUP BY 1')
        return dict(cur.fetchall())


def test_publish_loads_geometry_estimates_and_indexes(tmp_path, postgis_dsn, capsys):
    warehouse = make_serve_warehouse(tmp_path / "w")
    assert main(["publish", "--warehouse", str(warehouse), "--dsn", postgis_dsn]) == 0
    assert "partition 8739220f0ffffff: 5 segments, 10080 estimates published" in capsys.readouterr().out
    segs = {s["segment_id"]: s for s in fixture_segments()}
    with psycopg2.connect(postgis_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT segment_id, ST_SRID(geom), GeometryType(geom), ST_NPoints(geom), "
                    "ST_X(ST_StartPoint(geom)), ST_Y(ST_EndPoint(geom)), name FROM speedprofile.road_segments")
        rows = {r[0]: r for r in cur.fetchall()}
        assert set(rows) == set(segs)
        for sid, (_, srid, gtype, npts, x0, y1, name) in rows.items():
            assert (srid, gtype, npts) == (4326, "LINESTRING", len(segs[sid]["lon"]))
            assert x0 == pytest.approx(segs[sid]["lon"][0], abs=1e-7)
            assert y1 == pytest.approx(segs[sid]["lat"][-1], abs=1e-7)
            assert name == segs[sid]["name"]
        cur.execute("SELECT count(*), count(DISTINCT segment_id), min(tow_bucket), max(tow_bucket) "
                    "FROM speedprofile.speed_estimates")
        assert cur.fetchone() == (8 * 2016, 8, 0, 2015)
        # Fri 08:00 = bucket 5*288 + 96: speed on segment 101 as in the warehouse.
        cur.execute("SELECT speed_kph, source, \"window\", published_at IS NOT NULL FROM speedprofile.speed_estimates "
                    "WHERE segment_id = 101 AND tow_bucket = 1536")
        speed, source, window, has_ts = cur.fetchone()
        assert source == "observed" and window == "2026-11-01..2026-11-28" and has_ts
        assert speed == pytest.approx(round(48 * 0.35, 2), abs=0.01)
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'speedprofile'")
        idx = dict(cur.fetchall())
        assert "USING gist (geom)" in idx["road_segments_geom_gist"]
        assert "speed_estimates_pkey" in idx and "speed_estimates_partition" in idx
        # the GiST index serves nearest-neighbour search
        cur.execute("SET enable_seqscan = off; EXPLAIN SELECT segment_id FROM speedprofile.road_segments "
                    "ORDER BY geom <-> ST_SetSRID(ST_MakePoint(-8.61, 41.15), 4326) LIMIT 1")
        assert "road_segments_geom_gist" in " ".join(r[0] for r in cur.fetchall())
        cur.execute('SELECT "partition", segments, estimates FROM speedprofile.publications ORDER BY 1')
        assert cur.fetchall() == [(P2, 3, 3 * 2016), (P1, 5, 5 * 2016)]


def test_publish_accounts_for_every_row_and_rejects_with_reasons(tmp_path, postgis_dsn):
    warehouse = make_serve_warehouse(tmp_path / "w", bad_rows=True)
    results = {r["partition"]: r for r in publish(str(warehouse), postgis_dsn)}
    r = results[P1]
    assert r["rejected"] == {"null_key": 0, "bad_bucket": 1, "null_speed": 1, "no_segment": 1, "duplicate_key": 1}
    assert r["rows_in"] == 5 * 2016 + 4 == r["rows_published"] + r["rows_rejected"]
    metrics = json.loads(open(wh.metrics_path(str(warehouse), STAGE, None, P1)).read())
    assert metrics["rows_in"] == metrics["rows_published"] + sum(metrics["rejected"].values())
    assert _counts(postgis_dsn) == {P1: r["rows_published"], P2: 3 * 2016}


def test_republish_replaces_one_partition_only(tmp_path, postgis_dsn):
    warehouse = make_serve_warehouse(tmp_path / "w")
    publish(str(warehouse), postgis_dsn)
    first = _counts(postgis_dsn)
    with psycopg2.connect(postgis_dsn) as conn, conn.cursor() as cur:
        cur.execute('SELECT published_at FROM speedprofile.publications WHERE "partition" = %s', (P2,))
        p2_published = cur.fetchone()[0]
    assert main(["publish", "--warehouse", str(warehouse), "--dsn", postgis_dsn, "--partition", P1]) == 0
    assert _counts(postgis_dsn) == first  # replaced, not appended
    with psycopg2.connect(postgis_dsn) as conn, conn.cursor() as cur:
        cur.execute('SELECT "partition", published_at FROM speedprofile.publications')
        ts = dict(cur.fetchall())
    assert ts[P2] == p2_published and ts[P1] > p2_published


def test_failed_publish_leaves_previous_partition_visible(tmp_path, postgis_dsn):
    warehouse = make_serve_warehouse(tmp_path / "w")
    publish(str(warehouse), postgis_dsn)
    before = _counts(postgis_dsn)
    seen_by_reader: list[int] = []

    def crash_before_commit(cell: str) -> None:
        # another session during the open transaction still sees the complete old partition
        with psycopg2.connect(postgis_dsn) as other, other.cursor() as cur:
            cur.execute('SELECT count(*) FROM speedprofile.speed_estimates WHERE "partition" = %s', (cell,))
            seen_by_reader.append(cur.fetchone()[0])
        raise RuntimeError("simulated crash after COPY, before COMMIT")

    with pytest.raises(RuntimeError, match="simulated crash"):
        publish(str(warehouse), postgis_dsn, partitions=[P1], before_commit=crash_before_commit)
    assert seen_by_reader == [before[P1]]
    assert _counts(postgis_dsn) == before


def test_wrong_dsn_is_one_line_error(tmp_path, capsys):
    warehouse = make_serve_warehouse(tmp_path / "w")
    from tests.plugins.serve import _free_port

    rc = main(["publish", "--warehouse", str(warehouse), "--dsn", f"postgresql://nobody@127.0.0.1:{_free_port()}/x"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot connect to PostgreSQL" in err
    assert main(["publish", "--warehouse", str(warehouse), "--dsn", "not a dsn"]) == 2
    assert "--dsn must look like" in capsys.readouterr().err


def test_missing_postgis_is_one_line_error(tmp_path, postgis_dsn, capsys):
    # a role that may not create the extension sees PostGIS as unavailable in this database
    role = f"reader_{uuid.uuid4().hex[:8]}"  # roles are cluster-wide: unique per run
    with psycopg2.connect(postgis_dsn) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN")
    dsn = postgis_dsn.replace("postgres@", f"{role}@")
    warehouse = make_serve_warehouse(tmp_path / "w")
    rc = main(["publish", "--warehouse", str(warehouse), "--dsn", dsn])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "PostGIS is not available" in err
    with pytest.raises(UserError, match="not in speed_estimates"):
        publish(str(warehouse), postgis_dsn, partitions=["nosuchcell"])
