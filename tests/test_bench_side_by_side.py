"""Scoring and output mapping of the side-by-side matching benchmark (benchmarks/match_side_by_side.py).

Engines that need the bench extras (Valhalla, fastmm) are exercised by the benchmark itself; here their output
mapping is checked on hand-made results over a tiny network, and our matcher runs for real.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks._engines.common import (
    LocalProjection,
    PathMatch,
    Trace,
    covered_fraction,
    decode_polyline,
    dedupe_consecutive,
    sample_along,
    score_trace,
    summarize,
)
from benchmarks._engines.valhalla_engine import ValhallaEngine, WayIndex

LON0, LAT0 = 9.52, 47.14
PROJ = LocalProjection(LON0, LAT0)


def _deg(x_m, y_m):
    return LON0 + np.asarray(x_m, float) / PROJ.kx, LAT0 + np.asarray(y_m, float) / PROJ.ky


def _tiny_network() -> pd.DataFrame:
    """Way 100: A(0,0) -> B(100,0) -> C(200,0), both directions; way 200: B -> D(100,80), one-way."""
    rows = [
        (1, 100, 1, 2, 11, [(0, 0), (100, 0)]),
        (2, 100, 2, 3, 12, [(100, 0), (150, 0), (200, 0)]),
        (11, 100, 2, 1, 1, [(100, 0), (0, 0)]),
        (12, 100, 3, 2, 2, [(200, 0), (150, 0), (100, 0)]),
        (3, 200, 2, 4, None, [(100, 0), (100, 80)]),
    ]
    out = []
    for sid, way, a, b, rev, pts in rows:
        lon, lat = _deg([p[0] for p in pts], [p[1] for p in pts])
        length = float(np.hypot(*np.diff(np.asarray(pts, float), axis=0).T).sum())
        out.append({"segment_id": sid, "osm_way_id": way, "from_node_id": a, "to_node_id": b,
                    "reverse_segment_id": rev, "length_m": length, "geom_lon_deg": lon, "geom_lat_deg": lat,
                    "road_class": "residential", "partition": "x"})
    df = pd.DataFrame(out)
    df["osm_way_id"] = df["osm_way_id"].astype("Int64")
    df["reverse_segment_id"] = df["reverse_segment_id"].astype("Int64")
    return df


def _encode_polyline(lonlat, precision=6) -> str:
    """Google polyline encoding (lat, lon order inside), the format Valhalla returns shapes in."""
    out, plat, plon = [], 0, 0
    f = 10**precision
    for lon, lat in lonlat:
        ilat, ilon = round(lat * f), round(lon * f)
        for d in (ilat - plat, ilon - plon):
            v = ~(d << 1) if d < 0 else d << 1
            while v >= 0x20:
                out.append(chr((0x20 | (v & 0x1F)) + 63))
                v >>= 5
            out.append(chr(v + 63))
        plat, plon = ilat, ilon
    return "".join(out)


def test_score_trace_is_length_weighted():
    length = {1: 100.0, 2: 50.0, 3: 25.0, 4: 200.0}
    row = score_trace([1, 2, 3, 2], PathMatch([1, 2, 4, 4], unmapped_m=25.0), length)
    assert row["true_m"] == pytest.approx(175.0)
    assert row["matched_m"] == pytest.approx(375.0)
    assert row["correct_m"] == pytest.approx(150.0)
    s = summarize([row])
    assert s["recall"] == pytest.approx(150 / 175, abs=1e-4)
    assert s["precision"] == pytest.approx(150 / 375, abs=1e-4)


def test_wrong_reverse_twins_are_accounted_as_uturn_artefacts():
    length = {1: 100.0, 11: 100.0, 2: 50.0, 3: 30.0}
    row = score_trace([1, 2], PathMatch([1, 11, 2, 3]), length, reverse_of={1: 11, 11: 1})
    assert row["reverse_m"] == pytest.approx(100.0)
    s = summarize([row])
    assert s["precision"] == pytest.approx(150 / 280, abs=1e-4)
    assert s["precision_no_uturn"] == pytest.approx(150 / 180, abs=1e-4)


def test_recall_observable_counts_only_the_path_driven_between_first_and_last_fix():
    length = {1: 100.0, 2: 50.0, 3: 30.0}
    row = score_trace([1, 2, 3], PathMatch([2]), length, observable_ids=[2])
    s = summarize([row])
    assert s["recall"] == pytest.approx(50 / 180, abs=1e-4)
    assert s["recall_observable"] == 1.0


def test_load_cell_reads_simulator_output(tmp_path):
    from benchmarks.match_side_by_side import load_cell

    (tmp_path / "probes").mkdir()
    (tmp_path / "truth_paths").mkdir()
    (tmp_path / "probes" / "probes-2026-11-02.csv").write_text(
        "trace_id,timestamp,lon,lat\n"
        "b,2026-11-02T08:00:10Z,9.5,47.1\n"
        "a,2026-11-02T08:00:10Z,9.5,47.1\n"
        "a,2026-11-02T08:00:00Z,9.4,47.0\n"
        "b,2026-11-02T08:00:20Z,9.6,47.2\n"
        "c,2026-11-02T08:00:00Z,9.6,47.2\n")
    t = pd.Timestamp("2026-11-02T08:00:00Z")
    s = pd.Timedelta(seconds=1)
    pd.DataFrame({
        "trace_id": ["a", "a", "a", "b", "b", "c"],
        "seq": [2, 0, 1, 0, 1, 0],
        "segment_id": [30, 10, 20, 40, 50, 60],
        "enter_time_utc": [t + 12 * s, t - 9 * s, t + 5 * s, t + 5 * s, t + 15 * s, t],
        "exit_time_utc": [t + 20 * s, t + 5 * s, t + 12 * s, t + 15 * s, t + 30 * s, t + s],
    }).to_parquet(tmp_path / "truth_paths" / "truth_paths-2026-11-02.parquet")
    traces, true_paths, observable = load_cell(tmp_path, max_points=4)
    assert [tr.trace_id for tr in traces] == ["a", "b"]  # c has a single fix: nothing to match
    assert traces[0].t_s.tolist() == [t.timestamp(), t.timestamp() + 10]
    assert traces[0].lon.tolist() == [9.4, 9.5]
    assert true_paths["a"] == [10, 20, 30]
    assert observable["a"] == [10, 20]  # segment 30 is entered after the last fix
    assert observable["b"] == [40, 50]


def test_failed_match_misses_all_true_length_and_adds_nothing_matched():
    length = {1: 100.0, 2: 50.0}
    failed = score_trace([1, 2], PathMatch([1], unmapped_m=40.0, failed=True), length)
    ok = score_trace([1], PathMatch([1]), length)
    s = summarize([failed, ok])
    assert (s["traces"], s["failed_traces"]) == (2, 1)
    assert s["recall"] == pytest.approx(100 / 250, abs=1e-4)
    assert s["precision"] == 1.0


def test_unknown_segment_id_is_an_error():
    with pytest.raises(KeyError, match="not in the network"):
        score_trace([1], PathMatch([99]), {1: 10.0})


def test_summarize_with_nothing_true_or_matched_gives_none():
    s = summarize([score_trace([], PathMatch(failed=True), {})])
    assert s["recall"] is None and s["precision"] is None


def test_dedupe_consecutive_keeps_order_and_revisits():
    assert dedupe_consecutive([5, 5, 6, 6, 6, 5, 7]) == [5, 6, 5, 7]


def test_decode_polyline_known_vector():
    pts = decode_polyline("_p~iF~ps|U_ulLnnqC_mqNvxq`@", precision=5)
    np.testing.assert_allclose(pts, [[-120.2, 38.5], [-120.95, 40.7], [-126.453, 43.252]])


def test_covered_fraction_needs_same_place_and_direction():
    sx, sy, tx, ty = sample_along(np.array([0.0, 100.0]), np.array([0.0, 0.0]))
    assert covered_fraction(sx, sy, tx, ty, np.array([0.0, 100.0]), np.array([0.5, 0.5])) == 1.0
    assert covered_fraction(sx, sy, tx, ty, np.array([100.0, 0.0]), np.array([0.0, 0.0])) == 0.0
    half = covered_fraction(sx, sy, tx, ty, np.array([50.0, 120.0]), np.array([0.0, 0.0]))
    assert half == pytest.approx(0.5, abs=0.03)
    # a polyline that only touches the segment's end node covers nothing
    assert covered_fraction(sx, sy, tx, ty, np.array([100.0, 200.0]), np.array([0.0, 0.0])) == 0.0
    # a parallel road 5 m away is not this segment
    assert covered_fraction(sx, sy, tx, ty, np.array([0.0, 100.0]), np.array([5.0, 5.0])) == 0.0


def test_valhalla_edges_map_to_our_directed_segments():
    segs = _tiny_network()
    engine = ValhallaEngine("unused.pbf", "unused", segs, PROJ)
    engine.index = WayIndex(segs, PROJ)
    # Valhalla path: starts 30 m into A->B on way 100, runs to C (one Valhalla edge), then a service road
    # (way 999) our network does not have: 40 m north of C.
    xs, ys = [30, 100, 150, 200, 200], [0, 0, 0, 0, 40]
    shape = _encode_polyline(list(zip(*_deg(xs, ys), strict=True)))
    raw = {"shape": shape, "edges": [
        {"way_id": 100, "begin_shape_index": 0, "end_shape_index": 3},
        {"way_id": 999, "begin_shape_index": 3, "end_shape_index": 4},
    ]}
    pm = engine.to_segments(raw)
    assert not pm.failed
    assert pm.segment_ids == [1, 2]
    assert pm.unmapped_m == pytest.approx(40.0, abs=0.1)
    # driving the other way maps to the reverse twins only
    xs_r, ys_r = [200, 150, 100, 0], [0, 0, 0, 0]
    raw_r = {"shape": _encode_polyline(list(zip(*_deg(xs_r, ys_r), strict=True))),
             "edges": [{"way_id": 100, "begin_shape_index": 0, "end_shape_index": 3}]}
    assert sorted(engine.to_segments(raw_r).segment_ids) == [11, 12]
    assert engine.to_segments(None).failed


def test_our_matcher_adapter_runs_on_a_tiny_network():
    from benchmarks._engines.ours import OursEngine

    segs = _tiny_network()
    engine = OursEngine("unused", segs)
    engine.prepare()
    engine.configure(noise_m=5, interval_s=2)
    # A -> B -> D at 10 m/s, one fix every 2 s, 2 m off the road
    path = [(x, 2.0) for x in range(5, 100, 20)] + [(102.0, y) for y in range(5, 80, 20)]
    lon, lat = _deg([p[0] for p in path], [p[1] for p in path])
    trace = Trace("t1", np.arange(len(path)) * 2.0, lon, lat)
    pm = engine.to_segments(engine.match(trace))
    length = dict(zip(segs["segment_id"], segs["length_m"], strict=True))
    s = summarize([score_trace([1, 3], pm, length)])
    assert pm.segment_ids == [1, 3]
    assert s["recall"] == 1.0 and s["precision"] == 1.0
