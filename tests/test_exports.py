"""export: Valhalla historical traffic (DCT-II codec round trip), Mapbox Typical CSV, GeoJSON + GeoParquet."""

from __future__ import annotations

import base64
import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from speedprofile import warehouse as wh
from speedprofile.cli import main
from speedprofile.serve import predicted_speeds as ps
from speedprofile.serve.exports import HOUR_COLUMNS, export, fill_week
from speedprofile.serve.timeofweek import parse_time_of_week
from tests.plugins.serve import fixture_segments, profile_kph

WEEK = np.arange(2016)


def test_constant_speed_known_answer():
    # 50 km/h all week: only the DC term, 50 * 2016 / sqrt(2) * sqrt(2/2016) = 2245 (0x08C5, big-endian)
    coef = ps.compress(np.full(2016, 50.0))
    assert coef[0] == 2245 and not coef[1:].any()
    text = ps.encode(coef)
    assert len(text) == ps.ENCODED_LENGTH == 536
    assert base64.b64decode(text)[:4] == bytes([0x08, 0xC5, 0, 0])
    assert np.abs(ps.decompress(ps.decode(text)) - 50.0).max() < 0.02


@pytest.mark.parametrize("free_flow", [30.0, 48.0, 105.0])
def test_round_trip_smooth_profile_within_2_kph(free_flow):
    speeds = profile_kph(free_flow, WEEK)
    decoded = ps.decompress(ps.decode(ps.encode(ps.compress(speeds))))
    err = np.abs(decoded - speeds)
    assert err.max() < 2.0 and err.mean() < 0.5


def test_codec_matches_the_dct_definition():
    rng = np.random.default_rng(7)
    speeds = 40 + 10 * np.sin(2 * np.pi * WEEK / 288) + rng.normal(0, 1, 2016)
    n = np.arange(2016)
    k = 17
    raw = np.sum(speeds * np.cos(np.pi / 2016 * (n + 0.5) * k))  # textbook DCT-II term k
    assert ps.compress(speeds)[k] == int(np.round(raw * np.sqrt(2 / 2016)))
    batch = ps.compress(np.vstack([speeds, speeds * 0.5]))
    assert batch.shape == (2, 200) and batch.dtype == np.int16
    with pytest.raises(ValueError, match="expected=400"):
        ps.decode(base64.b64encode(b"\0" * 398).decode())
    with pytest.raises(ValueError, match="finite"):
        ps.compress(np.full(2016, np.nan))


def test_fill_week_interpolates_across_the_week_boundary():
    row = np.full((2, 2016), np.nan)
    row[0, 10], row[0, 2010] = 40.0, 20.0
    filled, has = fill_week(row)
    assert has.tolist() == [True, False]
    assert filled[0, 10] == 40 and filled[0, 2010] == 20
    assert filled[0, 0] == pytest.approx(20 + 20 * 6 / 16)  # between bucket 2010 (-6) and bucket 10


def test_valhalla_export_round_trips_the_warehouse(serve_warehouse, tmp_path, capsys):
    assert main(["export", "--warehouse", str(serve_warehouse), "--format", "valhalla", "--out", str(tmp_path)]) == 0
    assert "valhalla: 8 segments" in capsys.readouterr().out
    with open(tmp_path / "valhalla_historical_traffic.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["osm_way_id", "from_node_id", "to_node_id", "freeflow_speed", "constrained_speed",
                             "historical_speeds"]
    segs = {(s["osm_way_id"], s["from_node_id"], s["to_node_id"]): s for s in fixture_segments()}
    assert {(int(r["osm_way_id"]), int(r["from_node_id"]), int(r["to_node_id"])) for r in rows} == set(segs)
    for r in rows:
        seg = segs[(int(r["osm_way_id"]), int(r["from_node_id"]), int(r["to_node_id"]))]
        truth = (np.full(2016, seg["free_flow_kph"] * 0.8) if seg.get("source") == "road_class_prior"
                 else np.round(profile_kph(seg["free_flow_kph"], WEEK), 2))
        decoded = ps.decompress(ps.decode(r["historical_speeds"]))
        assert np.abs(decoded - truth).max() < 2.0
        assert int(r["freeflow_speed"]) == round(seg["free_flow_kph"])
        assert int(r["constrained_speed"]) < int(r["freeflow_speed"]) or seg.get("source")
        fri_0800 = parse_time_of_week("Fri 08:00")
        assert decoded[fri_0800] == pytest.approx(truth[fri_0800], abs=2.0)
    metrics = json.load(open(wh.metrics_path(str(serve_warehouse), "export_valhalla", None, None)))
    assert metrics["segments_in"] == metrics["rows_written"] + sum(metrics["skipped"].values())


def test_mapbox_typical_export(serve_warehouse, tmp_path):
    r = export(str(serve_warehouse), "mapbox", tmp_path)
    lines = (tmp_path / "mapbox_typical.csv").read_text().splitlines()
    assert r["rows_written"] == len(lines) == 8
    by_nodes = {(s["from_node_id"], s["to_node_id"]): s for s in fixture_segments()}
    for line in lines:
        vals = [int(v) for v in line.split(",")]
        assert len(vals) == 2 + 2016
        seg = by_nodes[(vals[0], vals[1])]
        if seg.get("source") != "road_class_prior":
            expected = np.round(np.round(profile_kph(seg["free_flow_kph"], WEEK), 2)).astype(int)
            assert vals[2:] == expected.tolist()  # Sunday 00:00 first
            assert vals[2 + parse_time_of_week("Fri 08:00")] < vals[2 + parse_time_of_week("Fri 03:00")]


def test_geojson_and_geoparquet_for_qgis(serve_warehouse, tmp_path):
    r = export(str(serve_warehouse), "geojson", tmp_path, partitions=["8739220f0ffffff"])
    fc = json.loads((tmp_path / "speed_segments.geojson").read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == r["features_written"] == 5
    f101 = next(f for f in fc["features"] if f["properties"]["segment_id"] == 101)
    seg = next(s for s in fixture_segments() if s["segment_id"] == 101)
    assert f101["geometry"] == {"type": "LineString", "coordinates": [list(p) for p in zip(seg["lon"], seg["lat"], strict=True)]}
    hour = np.round(profile_kph(48, WEEK), 2)[parse_time_of_week("Fri 08:00"):][:12].mean()
    assert f101["properties"]["kph_fri_08"] == pytest.approx(hour, abs=0.06)
    assert f101["properties"]["name"] == "Rua de Santa Catarina" and len(HOUR_COLUMNS) == 168
    assert next(f for f in fc["features"] if f["properties"]["segment_id"] == 105)["properties"]["name"] is None
    table = pq.read_table(tmp_path / "speed_segments.parquet")
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    wkb = table.column("geometry")[table.column("segment_id").to_pylist().index(101)].as_py()
    assert wkb[:5] == bytes([1, 2, 0, 0, 0])  # little-endian LineString
    xy = np.frombuffer(wkb, "<f8", offset=9).reshape(-1, 2)
    assert xy[:, 0].tolist() == seg["lon"] and xy[:, 1].tolist() == seg["lat"]


def test_geoparquet_is_read_as_geometry_by_duckdb(serve_warehouse, tmp_path):
    # DuckDB recognises GeoParquet metadata natively and types the column GEOMETRY('OGC:CRS84')
    import duckdb

    export(str(serve_warehouse), "geojson", tmp_path)
    rel = duckdb.sql(f"SELECT segment_id, geometry::VARCHAR AS wkt FROM '{tmp_path}/speed_segments.parquet'")
    (kind,) = [r[1] for r in duckdb.sql(f"DESCRIBE SELECT geometry FROM '{tmp_path}/speed_segments.parquet'").fetchall()]
    assert "GEOMETRY" in kind
    wkt = dict(rel.fetchall())
    assert len(wkt) == 8
    assert wkt[203] == "LINESTRING (-8.652 41.172, -8.65 41.1735)"


def test_unknown_partition_is_one_line_error(serve_warehouse, tmp_path, capsys):
    assert main(["export", "--warehouse", str(serve_warehouse), "--format", "mapbox", "--out", str(tmp_path),
                 "--partition", "nope"]) == 2
    assert "not in speed_estimates" in capsys.readouterr().err
