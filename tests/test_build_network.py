"""build_network: OSM and node/arc graphs -> road_segments (real Porto, Baltimore, Kubicka data; tag cases)."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import h3
import numpy as np
import osmium
import pandas as pd
import pytest

from schemas.road_segments import DEFAULT_H3_RES, ROAD_SEGMENTS
from speedprofile import tables
from speedprofile import warehouse as wh
from speedprofile.cli import main
from speedprofile.network.build import build
from speedprofile.network.graph import load_road_segments, read_node_arc_graph, to_pandas
from speedprofile.network.osm import oneway_code, parse_maxspeed, read_osm_table
from tests.seed import commit_pandas, copy_warehouse

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "build_network"
SPEEDPROFILE = Path(sys.executable).parent / "speedprofile"


def _way_nodes(pbf: Path, way_id: int) -> tuple[list[int], dict]:
    """Node ids and tags of one way, read independently with pyosmium."""
    for w in osmium.FileProcessor(str(pbf), osmium.osm.WAY).with_filter(osmium.filter.IdFilter([way_id])):
        return [n.ref for n in w.nodes], dict(w.tags)
    raise AssertionError(f"way {way_id} not in {pbf}")


# ---- tag parsing (kernel) -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "kph"), [
    ("50", 50.0), ("50 km/h", 50.0), ("50km/h", 50.0), ("30 mph", 48.28), ("20mph", 32.19), ("10 knots", 18.52),
    ("PT:urban", 50.0), ("GB:nsl_single", 96.56), ("50;30", 50.0), ("7,5", 7.5),
    ("none", None), ("signals", None), ("walk", None), ("variable", None), ("fast", None), ("", None),
    ("XX:urban", None), ("0", None), (None, None),
])
def test_maxspeed_parsing(raw, kph):
    assert parse_maxspeed(raw) == kph


@pytest.mark.parametrize(("tags", "highway", "code"), [
    ({"oneway": "yes"}, "residential", 1), ({"oneway": "true"}, "residential", 1), ({"oneway": "1"}, "primary", 1),
    ({"oneway": "-1"}, "residential", -1), ({"oneway": "reverse"}, "residential", -1),
    ({}, "motorway", 1), ({"oneway": "no"}, "motorway", 0), ({"junction": "roundabout"}, "tertiary", 1),
    ({"junction": "circular"}, "residential", 1), ({"junction": "roundabout", "oneway": "no"}, "tertiary", 0),
    ({}, "motorway_link", 0), ({}, "primary", 0), ({"oneway": "reversible"}, "primary", 0),
])
def test_oneway_codes(tags, highway, code):
    assert oneway_code(tags, highway) == code


def test_osm_tag_cases_match_expected():
    table, counts = read_osm_table(str(FIX / "input" / "tags.osm"), DEFAULT_H3_RES)
    got = table.select(["osm_way_id", "from_node_id", "to_node_id", "is_oneway", "maxspeed_kph", "name",
                        "road_class"]).to_pandas()
    got = got.sort_values(["osm_way_id", "from_node_id", "to_node_id"]).reset_index(drop=True)
    want = pd.read_csv(FIX / "expected" / "tags_segments.csv", dtype={"name": object})
    want["name"] = want["name"].astype(object).where(want["name"].notna(), None)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    # access=private (7), area=yes (10), footway (9), construction (12) are dropped; the accounting adds up
    assert not set(got.osm_way_id) & {7, 9, 10, 12}
    dropped = counts["not_drivable_class"] + counts["area"] + counts["no_car_access"] + counts["too_few_nodes"]
    assert counts["highway_ways"] == 15 == counts["kept_ways"] + dropped
    assert counts["pieces_missing_nodes"] == 1
    # every two-way segment points at its twin, which runs the other way
    df = to_pandas(table)
    by_id = df.set_index("segment_id")
    for row in df.itertuples():
        if row.is_oneway:
            assert pd.isna(row.reverse_segment_id)
        else:
            twin = by_id.loc[row.reverse_segment_id]
            assert (twin.from_node_id, twin.to_node_id) == (row.to_node_id, row.from_node_id)
            assert twin.reverse_segment_id == row.segment_id
            np.testing.assert_allclose(twin.geom_lon_deg, row.geom_lon_deg[::-1])
    assert df.segment_id.is_unique and (df.segment_id > 0).all()
    assert set(df.timezone) == {"Europe/Lisbon"}


# ---- real OSM extracts ----------------------------------------------------------------------------------------

def test_porto_network(porto_warehouse, data_dir):
    meta = wh.read_partitions(porto_warehouse)
    df = load_road_segments(porto_warehouse)
    assert list(df.columns) == ROAD_SEGMENTS.names
    assert meta["h3_res"] == DEFAULT_H3_RES and meta["source"] == "osm:porto.osm.pbf"
    cells = [p["cell"] for p in meta["partitions"]]
    assert cells == sorted(cells) == sorted(df.partition.unique())
    # the default resolution splits central Porto into several real partitions
    assert sum(p["segments"] >= 100 for p in meta["partitions"]) >= 3
    assert sum(p["segments"] for p in meta["partitions"]) == len(df)
    assert 3000 < len(df) < 5000
    assert df.segment_id.is_unique
    # every segment lies in its partition cell and geometry starts/ends at its nodes' coordinates
    row = df.iloc[len(df) // 2]
    assert h3.get_resolution(row.partition) == DEFAULT_H3_RES
    assert (df.length_m > 0).all() and df.length_m.sum() / 1000 == pytest.approx(
        sum(p["length_km"] for p in meta["partitions"]), rel=1e-3)
    assert set(df.timezone) == {"Europe/Lisbon"}
    assert df.osm_way_id.notna().all() and df.road_class.isin(
        ["motorway", "trunk", "primary", "secondary", "tertiary", "motorway_link", "trunk_link", "primary_link",
         "secondary_link", "tertiary_link", "unclassified", "residential", "living_street", "service", "road"]).all()
    metrics = json.loads(Path(wh.metrics_path(porto_warehouse, "build_network", None, None)).read_text())
    c = metrics["counts"]
    assert c["highway_ways"] == 4656  # SOURCE.md: 4,656 highway=* ways
    assert c["highway_ways"] == c["kept_ways"] + c["not_drivable_class"] + c["area"] + c["no_car_access"] + c["too_few_nodes"]
    assert metrics["segments"] == len(df)


def _check_direction(df: pd.DataFrame, nodes: list[int], way_id: int, forward: bool | None):
    segs = df[df.osm_way_id == way_id]
    assert len(segs) > 0
    pos = {n: i for i, n in enumerate(nodes)}
    steps = [pos[b] - pos[a] for a, b in zip(segs.from_node_id, segs.to_node_id, strict=True)]
    if forward is True:
        assert all(s > 0 for s in steps) and segs.is_oneway.all() and segs.reverse_segment_id.isna().all()
    elif forward is False:
        assert all(s < 0 for s in steps) and segs.is_oneway.all() and segs.reverse_segment_id.isna().all()
    else:
        assert sum(s > 0 for s in steps) == sum(s < 0 for s in steps) == len(segs) // 2
        assert (~segs.is_oneway).all() and segs.reverse_segment_id.notna().all()
        assert set(segs.reverse_segment_id) == set(segs.segment_id)
    # the segments of a way cover it end to end (split only at intersections)
    fwd = [(pos[a], pos[b]) for a, b, s in zip(segs.from_node_id, segs.to_node_id, steps, strict=True) if s > 0] or \
          [(pos[b], pos[a]) for a, b in zip(segs.from_node_id, segs.to_node_id, strict=True)]
    fwd.sort()
    assert fwd[0][0] == 0 and fwd[-1][1] == len(nodes) - 1
    assert all(x[1] == y[0] for x, y in itertools.pairwise(fwd))


def test_porto_oneway_twoway_private(porto_warehouse, data_dir):
    pbf = data_dir / "osm_porto" / "porto.osm.pbf"
    df = load_road_segments(porto_warehouse)
    nodes, tags = _way_nodes(pbf, 8366896)  # Rua de José Falcão, oneway=yes
    assert tags["oneway"] == "yes"
    _check_direction(df, nodes, 8366896, True)
    nodes, tags = _way_nodes(pbf, 8367070)  # Rua dos Bragas, no oneway tag
    assert "oneway" not in tags
    _check_direction(df, nodes, 8367070, None)
    nodes, tags = _way_nodes(pbf, 98753921)  # a service road with access=private
    assert tags["access"] == "private"
    assert 98753921 not in set(df.osm_way_id)


def test_baltimore_network(tmp_path, data_dir):
    pbf = data_dir / "osm_baltimore" / "baltimore.osm.pbf"
    s = build(str(tmp_path), osm=str(pbf))
    df = load_road_segments(str(tmp_path))
    assert s["segments"] == len(df) and 10_000 < len(df) < 20_000
    assert s["partitions"] >= 8
    assert set(df.timezone) == {"America/New_York"}
    for way_id, forward in [(5319448, True), (6017285, False), (5250726, None)]:  # Dundalk Ave, N Robinson St, Wells Ave
        nodes, _ = _way_nodes(pbf, way_id)
        _check_direction(df, nodes, way_id, forward)
    assert 5250692 not in set(df.osm_way_id)  # Woods Parkway, access=private
    # mph limits are converted (US data is tagged "25 mph" etc.)
    mph = df.maxspeed_kph.dropna()
    assert len(mph) > 0 and np.isin(np.round(mph, 2), np.round(np.arange(5, 80, 5) * 1.609344, 2)).mean() > 0.9


def test_segment_ids_stable_across_builds(tmp_path, data_dir, porto_warehouse):
    build(str(tmp_path), osm=str(data_dir / "osm_porto" / "porto.osm.pbf"))
    a = load_road_segments(porto_warehouse).sort_values("segment_id").reset_index(drop=True)
    b = load_road_segments(str(tmp_path)).sort_values("segment_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    # and identical committed rows, partition by partition (data file names are the table format's own)
    for cell in wh.partition_cells(porto_warehouse):
        a, b = (tables.read_arrow(w, "road_segments", partitions=[cell]).sort_by("segment_id")
                for w in (porto_warehouse, str(tmp_path)))
        assert a.num_rows > 0 and a.equals(b), cell


# ---- node/arc graphs ------------------------------------------------------------------------------------------

def test_kubicka_graph_arc_ids_and_counts(data_dir, tmp_path):
    d = data_dir / "kubicka2015" / "00000000"
    df = read_node_arc_graph(str(d / "00000000.nodes.gz"), str(d / "00000000.arcs.gz"))
    arcs = np.loadtxt(gzip.open(d / "00000000.arcs.gz"), dtype=np.int64, ndmin=2)
    nodes = np.loadtxt(gzip.open(d / "00000000.nodes.gz"), ndmin=2)
    assert len(df) == len(arcs)
    assert (df.segment_id.to_numpy() == np.arange(len(arcs))).all()
    assert (df.from_node_id.to_numpy() == arcs[:, 0]).all() and (df.to_node_id.to_numpy() == arcs[:, 1]).all()
    assert df.osm_way_id.isna().all() and (df.road_class == "unknown").all()
    first = df.iloc[0]
    assert list(first.geom_lon_deg) == [nodes[arcs[0, 0], 0], nodes[arcs[0, 1], 0]]
    assert first.length_m == pytest.approx(
        h3.great_circle_distance(tuple(nodes[arcs[0, 0], ::-1]), tuple(nodes[arcs[0, 1], ::-1]), unit="m"), rel=1e-3)
    pairs = {(a, b): i for i, (a, b) in enumerate(arcs.tolist())}
    for row in df.sample(200, random_state=1).itertuples():
        twin = pairs.get((row.to_node_id, row.from_node_id))
        assert (pd.isna(row.reverse_segment_id) and twin is None) or row.reverse_segment_id == twin
        assert row.is_oneway == (twin is None)
    # plain text reads the same as gzip
    (tmp_path / "n.txt").write_bytes(gzip.decompress((d / "00000000.nodes.gz").read_bytes()))
    (tmp_path / "a.txt").write_bytes(gzip.decompress((d / "00000000.arcs.gz").read_bytes()))
    plain = read_node_arc_graph(str(tmp_path / "n.txt"), str(tmp_path / "a.txt"))
    pd.testing.assert_frame_equal(df, plain)


def test_tiny_graph_warehouse(tiny_network_warehouse):
    df = load_road_segments(tiny_network_warehouse)
    meta = wh.read_partitions(tiny_network_warehouse)
    assert len(df) == 72 and len(meta["partitions"]) == 3
    assert [p["cell"] for p in meta["partitions"]] == sorted(df.partition.unique())
    one_way = df[df.is_oneway]
    # row 2 (nodes 10..14) eastbound and column 4 (nodes 4, 9, ..., 24) northbound only
    assert set(zip(one_way.from_node_id, one_way.to_node_id, strict=True)) == {
        (10, 11), (11, 12), (12, 13), (13, 14), (4, 9), (9, 14), (14, 19), (19, 24)}
    assert df.length_m.between(390, 410).all()
    assert set(df.timezone) == {"Europe/Lisbon"}
    part = meta["partitions"][0]["cell"]
    only = load_road_segments(tiny_network_warehouse, partitions=[part, "missing"])
    assert set(only.partition) == {part} and len(only) == meta["partitions"][0]["segments"]


def test_rebuild_replaces_whole_table(tmp_path, tiny_network_warehouse):
    w = str(copy_warehouse(tiny_network_warehouse, tmp_path / "w"))
    stale = "87000000fffffff"
    commit_pandas(w, "road_segments", pd.DataFrame({"segment_id": [999_999], "partition": [stale]}),
                  replace=[{"partition": stale}])
    build(w, nodes=str(FIX / "input" / "tiny.nodes"), arcs=str(FIX / "input" / "tiny.arcs.gz"))
    rows = tables.read_arrow(w, "road_segments")
    assert sorted(set(rows.column("partition").to_pylist())) == wh.partition_cells(w)
    assert len(wh.partition_cells(w)) == 3 and stale not in rows.column("partition").to_pylist()
    assert rows.num_rows == 72 and rows.schema.names == ROAD_SEGMENTS.names


# ---- CLI ------------------------------------------------------------------------------------------------------

def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SPEEDPROFILE), *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SPEEDPROFILE_DEBUG": ""})


def test_cli_builds_osm_through_console_script(tmp_path):
    pbf = tmp_path / "tags.osm.pbf"
    with osmium.SimpleWriter(str(pbf)) as writer:
        for obj in osmium.FileProcessor(str(FIX / "input" / "tags.osm")):
            writer.add(obj)
    res = _run("network", "build", "--osm", str(pbf), "--warehouse", str(tmp_path / "w"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("road_segments: 21 segments in ")
    assert len(load_road_segments(str(tmp_path / "w"))) == 21


@pytest.mark.parametrize("case", ["missing", "not_pbf", "empty", "bad_nodes", "nodes_without_arcs", "arc_out_of_range"])
def test_cli_bad_input_one_line_error(tmp_path, case, capsys):
    text = tmp_path / "x.txt"
    text.write_text("hello\tworld\n")
    nodes = tmp_path / "n.txt"
    nodes.write_text("-8.6\t41.1\n-8.61\t41.11\n")
    arcs = tmp_path / "a.txt"
    arcs.write_text("0\t5\n")
    empty = tmp_path / "e.osm.pbf"
    empty.write_bytes(b"")
    argv = {
        "missing": ["--osm", str(tmp_path / "nope.osm.pbf")],
        "not_pbf": ["--osm", str(text)],
        "empty": ["--osm", str(empty)],
        "bad_nodes": ["--nodes", str(text), "--arcs", str(arcs)],
        "nodes_without_arcs": ["--nodes", str(nodes)],
        "arc_out_of_range": ["--nodes", str(nodes), "--arcs", str(arcs)],
    }[case]
    code = main(["network", "build", *argv, "--warehouse", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("speedprofile: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    w = tmp_path / "w"  # nothing committed (the table layer may have created the empty table, never a snapshot)
    assert not (w / "road_segments").exists() or not tables.snapshots(str(w), "road_segments")


def test_cli_missing_file_via_console_script(tmp_path):
    res = _run("network", "build", "--osm", str(tmp_path / "nope.osm.pbf"), "--warehouse", str(tmp_path / "w"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"speedprofile: error: OSM file not found: {tmp_path / 'nope.osm.pbf'}"]
