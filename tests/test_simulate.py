"""simulate: fleet on the warehouse network -> probes CSV, truth, truth paths (determinism, geometry, traffic model)."""

from __future__ import annotations

import json
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from schemas.bucketed_traversals import N_BUCKETS
from speedprofile.cli import main
from speedprofile.network.graph import load_road_segments
from speedprofile.simulate.fleet import iso_utc, simulate
from speedprofile.simulate.traffic import TrafficModel, tow_bucket_of

M_PER_DEG = 111_195.08


def _files(folder: str) -> dict[str, bytes]:
    root = Path(folder)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _probes(out: str) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p) for p in sorted(Path(out, "probes").glob("*.csv"))], ignore_index=True)


def _paths(out: str) -> pd.DataFrame:
    return pq.read_table(Path(out, "truth_paths")).to_pandas()


def _point_to_polyline_m(lon, lat, plon, plat) -> float:
    """Distance (m) from a point to a polyline, in a local equirectangular projection."""
    k = np.cos(np.radians(lat))
    x = (np.asarray(plon) - lon) * k * M_PER_DEG
    y = (np.asarray(plat) - lat) * M_PER_DEG
    ax, ay, bx, by = x[:-1], y[:-1], x[1:], y[1:]
    dx, dy = bx - ax, by - ay
    den = dx * dx + dy * dy
    t = np.clip(np.where(den > 0, -(ax * dx + ay * dy) / np.where(den > 0, den, 1), 0), 0, 1)
    return float(np.min(np.hypot(ax + t * dx, ay + t * dy)))


def _naive(ts: pd.Series) -> np.ndarray:
    """UTC instants as naive datetime64[ns] (for numpy comparisons)."""
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()


def _fix_segments(probes: pd.DataFrame, paths: pd.DataFrame) -> np.ndarray:
    """segment_id driven at each fix's time, from the truth paths (enter <= t <= exit)."""
    t = _naive(pd.to_datetime(probes.timestamp, utc=True))
    seg = np.zeros(len(probes), dtype=np.int64)
    for trace, idx in probes.groupby("trace_id").groups.items():
        p = paths[paths.trace_id == trace].sort_values("seq")
        j = np.searchsorted(_naive(p.enter_time_utc), t[idx], side="right") - 1
        assert (j >= 0).all()
        assert (t[idx] <= _naive(p.exit_time_utc)[j] + np.timedelta64(1, "s")).all()
        seg[idx] = p.segment_id.to_numpy()[j]
    return seg


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny_network_warehouse, tiny_simulation):
    simulate(tiny_network_warehouse, str(tmp_path / "a"), days=1, vehicles=6, seed=11)
    first = _files(str(tmp_path / "a"))
    assert first == _files(tiny_simulation)
    assert set(first) >= {"probes/probes-2026-11-02.csv", "truth/truth.parquet",
                          "truth_paths/truth_paths-2026-11-02.parquet", "simulation.json"}
    simulate(tiny_network_warehouse, str(tmp_path / "b"), days=1, vehicles=6, seed=12)
    assert _files(str(tmp_path / "b"))["probes/probes-2026-11-02.csv"] != first["probes/probes-2026-11-02.csv"]


def test_probe_csv_format(porto_simulation):
    path = Path(porto_simulation, "probes", "probes-2026-11-02.csv")
    header = path.read_text().splitlines()[0]
    assert header == "trace_id,timestamp,lon,lat,speed_kph,heading_deg"
    df = _probes(porto_simulation)
    assert df.timestamp.str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    t = pd.to_datetime(df.timestamp, utc=True)
    assert t.min() >= pd.Timestamp("2026-11-02T00:00:00Z")  # Lisbon is UTC+0 in November
    assert df.lon.between(-8.75, -8.45).all() and df.lat.between(41.0, 41.2).all()
    assert df.speed_kph.between(0, 150).all() and df.heading_deg.between(0, 360).all()
    # fixes of a trace are in time order, 10 s apart except at dropouts (multiples of 10 s)
    dt = t.groupby(df.trace_id).diff().dropna().dt.total_seconds()
    assert (dt > 0).all() and (dt % 10 == 0).all()
    assert (dt == 10).mean() > 0.9
    meta = json.loads(Path(porto_simulation, "simulation.json").read_text())
    assert meta["fixes"] == len(df) and meta["trips"] == df.trace_id.nunique() and meta["fixes_dropped"] > 0


def test_noise_free_fixes_lie_on_the_true_segment(tmp_path, porto_warehouse):
    simulate(porto_warehouse, str(tmp_path), days=1, vehicles=4, seed=3, noise_m=0.0)
    probes, paths = _probes(str(tmp_path)), _paths(str(tmp_path))
    net = load_road_segments(porto_warehouse).set_index("segment_id")
    seg = _fix_segments(probes, paths)
    d = [_point_to_polyline_m(lon, lat, net.at[s, "geom_lon_deg"], net.at[s, "geom_lat_deg"])
         for lon, lat, s in zip(probes.lon, probes.lat, seg, strict=True)]
    assert len(d) > 100 and max(d) < 0.5  # coordinates are written with 6 decimals (~0.1 m)
    # consecutive truth-path segments join head to tail
    p = paths.merge(net[["from_node_id", "to_node_id"]], left_on="segment_id", right_index=True)
    p = p.sort_values(["trace_id", "seq"])
    same = p.trace_id.to_numpy()[1:] == p.trace_id.to_numpy()[:-1]
    assert (p.to_node_id.to_numpy()[:-1][same] == p.from_node_id.to_numpy()[1:][same]).all()


def test_noisy_fixes_within_a_few_sigma(porto_simulation, porto_warehouse):
    probes, paths = _probes(porto_simulation), _paths(porto_simulation)
    probes = probes.iloc[:: max(1, len(probes) // 800)].reset_index(drop=True)
    net = load_road_segments(porto_warehouse).set_index("segment_id")
    seg = _fix_segments(probes, paths)
    d = np.array([_point_to_polyline_m(lon, lat, net.at[s, "geom_lon_deg"], net.at[s, "geom_lat_deg"])
                  for lon, lat, s in zip(probes.lon, probes.lat, seg, strict=True)])
    assert d.max() < 5 * 5.0 * 1.5  # sigma 5 m per axis
    assert 1.0 < np.median(d) < 8.0  # the noise is really there


def test_truth_table(porto_simulation, porto_warehouse):
    truth = pq.read_table(Path(porto_simulation, "truth")).to_pandas()
    assert list(truth.columns[:3]) == ["segment_id", "tow_bucket", "speed_kph"]
    assert truth.tow_bucket.between(0, N_BUCKETS - 1).all()
    assert not truth.duplicated(["segment_id", "tow_bucket"]).any()
    net = load_road_segments(porto_warehouse).set_index("segment_id")
    assert truth.segment_id.isin(net.index).all()
    assert (truth.speed_kph > 2).all() and (truth.speed_kph < 130).all()
    # Monday 2026-11-02 local: buckets of Monday (288..575), trips may run past midnight into Tuesday
    assert truth.tow_bucket.min() >= 288 and truth.tow_bucket.max() < 3 * 288
    paths = _paths(porto_simulation)
    assert truth.n_traversals.sum() == len(paths)
    assert set(truth.segment_id) == set(paths.segment_id)


def test_truth_buckets_are_local_midpoint_buckets_across_dst(tmp_path, porto_warehouse):
    # Lisbon leaves summer time on Sunday 2026-10-25 01:00 UTC
    simulate(porto_warehouse, str(tmp_path), days=2, vehicles=8, seed=5, start_date="2026-10-24")
    paths = _paths(str(tmp_path))
    truth = pq.read_table(Path(tmp_path, "truth")).to_pandas()
    mid = paths.enter_time_utc + (paths.exit_time_utc - paths.enter_time_utc) / 2
    local = mid.dt.tz_convert(ZoneInfo("Europe/Lisbon")).dt.tz_localize(None)
    local_s = (local - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy()
    # independent bucket arithmetic: Sunday 00:00 local = 0, 5-minute buckets
    dow_sun0 = (local.dt.dayofweek.to_numpy() + 1) % 7
    expect = dow_sun0 * 288 + local.dt.hour.to_numpy() * 12 + local.dt.minute.to_numpy() // 5
    assert (tow_bucket_of(local_s) == expect).all()
    got = set(zip(truth.segment_id, truth.tow_bucket, strict=True))
    hits = np.mean([(s, b) in got for s, b in zip(paths.segment_id, expect, strict=True)])
    assert hits > 0.99
    # Saturday and Sunday buckets are both present, and summer/winter offsets were both crossed
    assert (truth.tow_bucket >= 6 * 288).any() and (truth.tow_bucket < 288).any()
    offsets = set(mid.dt.tz_convert(ZoneInfo("Europe/Lisbon")).map(lambda t: t.utcoffset().total_seconds()))
    assert offsets == {0.0, 3600.0}


def test_traffic_model_shape():
    ids = np.array([101, 202, 303])
    m = TrafficModel(ids, np.array(["primary", "residential", "motorway"], dtype=object), np.array([50.0, np.nan, np.nan]))
    mon = 288
    night, am, pm, midday = mon + 3 * 12, mon + 8 * 12 + 3, mon + 17 * 12 + 9, mon + 12 * 12
    speed = lambda seg, b: float(m.speed_kph(np.array([seg]), np.array([b]))[0])  # noqa: E731
    for seg in (0, 2):  # arterials: rush hour far slower than night
        assert speed(seg, am) < 0.75 * speed(seg, night)
        assert speed(seg, pm) < 0.8 * speed(seg, night)
        assert speed(seg, am) < speed(seg, midday) < speed(seg, night)
    assert speed(1, am) > 0.7 * speed(1, night)  # residential dips less
    assert speed(1, am) / speed(1, night) > speed(0, am) / speed(0, night)
    sunday_am = 8 * 12 + 3
    assert speed(0, sunday_am) > 0.95 * speed(0, night)  # weekends are quiet in the morning
    assert 50 * 0.95 * 0.85 <= speed(0, night) <= 50 * 0.95 * 1.10  # free flow from maxspeed, +-segment factor
    # deterministic per segment, no randomness between instances
    m2 = TrafficModel(ids, np.array(["primary", "residential", "motorway"], dtype=object), np.array([50.0, np.nan, np.nan]))
    assert np.array_equal(m.speed_kph(np.arange(3), np.full(3, am)), m2.speed_kph(np.arange(3), np.full(3, am)))


def test_iso_timestamps():
    got = iso_utc(np.array([0, 1793577600000, 951825599999]), with_ms=True).to_pylist()
    assert got == ["1970-01-01T00:00:00.000Z", "2026-11-02T00:00:00.000Z", "2000-02-29T11:59:59.999Z"]


def test_cli_errors_are_one_line(tmp_path, capsys, tiny_network_warehouse):
    assert main(["simulate", "--warehouse", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("speedprofile: error: no road network") and err.count("\n") == 1
    assert main(["simulate", "--warehouse", tiny_network_warehouse, "--start-date", "02/11/2026",
                 "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["simulate", "--warehouse", tiny_network_warehouse, "--vehicles", "0", "--out", str(tmp_path / "o")]) == 2


def test_cli_runs(tmp_path, tiny_network_warehouse, capsys):
    assert main(["simulate", "--warehouse", tiny_network_warehouse, "--days", "2", "--vehicles", "3",
                 "--interval-s", "5", "--noise-m", "2", "--seed", "4", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("simulate: ")
    assert sorted(p.name for p in (tmp_path / "probes").iterdir()) == ["probes-2026-11-02.csv", "probes-2026-11-03.csv"]
    df = _probes(str(tmp_path))
    dt = pd.to_datetime(df.timestamp, utc=True).groupby(df.trace_id).diff().dropna().dt.total_seconds()
    assert (dt % 5 == 0).all()


def test_driven_speeds_scatter_around_the_truth(porto_simulation, porto_warehouse):
    paths = _paths(porto_simulation)
    truth = pq.read_table(Path(porto_simulation, "truth")).to_pandas()
    net = load_road_segments(porto_warehouse, columns=["segment_id", "length_m"]).set_index("segment_id")
    dur = (paths.exit_time_utc - paths.enter_time_utc).dt.total_seconds()
    driven = net.loc[paths.segment_id, "length_m"].to_numpy() / dur.to_numpy() * 3.6
    # each traversal's truth row: the segment and the bucket of its local midpoint (Lisbon = UTC in November)
    mid = paths.enter_time_utc + (paths.exit_time_utc - paths.enter_time_utc) / 2
    local_s = (mid.dt.tz_localize(None) - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy()
    key = pd.MultiIndex.from_arrays([paths.segment_id, tow_bucket_of(local_s)])
    model = truth.set_index(["segment_id", "tow_bucket"]).speed_kph.reindex(key).to_numpy()
    ratio = driven / model
    assert np.isfinite(ratio).mean() > 0.99
    ratio = ratio[np.isfinite(ratio)]
    # per-vehicle (sigma 0.08) and per-trip (sigma 0.03) factors around the model speed
    assert 0.95 < np.median(ratio) < 1.05
    assert 0.03 < np.std(np.log(ratio)) < 0.15
