"""Matcher robustness on real Kubička tracks with injected faults: GPS jumps, long standstills, logger pauses;
and the per-traversal confidence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from speedprofile.matching import bench
from speedprofile.matching.kernel import Matcher

TRACK = "00000048"  # 1240 fixes at 1 Hz, accuracy ~1.0 on the plain track
M_PER_DEG = 111_320.0


@pytest.fixture(scope="module")
def track(data_dir):
    return bench.load_track(str(data_dir / "kubicka2015"), TRACK)


def _accuracy(net, pm, route) -> float:
    correct, union, _ = bench.route_overlap(pm.legs["seg_index"].to_numpy(), route, net.seg_len)
    return correct / union


def _shift(lon, lat, idx, metres, angle):
    lon, lat = lon.copy(), lat.copy()
    lon[idx] += metres * np.cos(angle) / (M_PER_DEG * np.cos(np.radians(lat[idx])))
    lat[idx] += metres * np.sin(angle) / M_PER_DEG
    return lon, lat


def test_gps_jump_runs_are_skipped_as_outliers_not_breaks(track):
    net, lon, lat, t, route = track
    base = _accuracy(net, Matcher(net).match_points(lon, lat, t - t[0]), route)
    rng = np.random.default_rng(1)
    jumped = np.concatenate([np.arange(s, s + k) for s, k in zip(range(100, 1100, 200), rng.integers(2, 5, 5),
                                                                   strict=True)])
    jlon, jlat = _shift(lon, lat, jumped, 600.0, 1.0)  # 600 m in 1 s: 2 160 km/h
    pm = Matcher(net).match_points(jlon, jlat, t - t[0])
    assert pm.breaks == {"time_gap": 0, "no_transition": 0}
    assert set(pm.status[jumped]) <= {"outlier", "off_network"}
    assert _accuracy(net, pm, route) >= base - 0.005


def test_long_standstill_collapses_without_breaks(track):
    net, lon, lat, t, route = track
    base = _accuracy(net, Matcher(net).match_points(lon, lat, t - t[0]), route)
    rng = np.random.default_rng(2)
    at, m = 600, 3000  # 50 minutes parked at fix 600, receiver drifting by metres
    walk = np.cumsum(rng.normal(0, 0.3, (m, 2)), axis=0) + rng.normal(0, 3, (m, 2))
    slon, slat = _shift(np.full(m, lon[at]), np.full(m, lat[at]), np.arange(m), 0.0, 0.0)
    slon = slon + walk[:, 0] / (M_PER_DEG * np.cos(np.radians(lat[at])))
    slat = slat + walk[:, 1] / M_PER_DEG
    lon2 = np.concatenate([lon[:at + 1], slon, lon[at + 1:]])
    lat2 = np.concatenate([lat[:at + 1], slat, lat[at + 1:]])
    t2 = np.concatenate([t[:at + 1], t[at] + np.arange(1, m + 1), t[at + 1:] + m])
    pm = Matcher(net).match_points(lon2, lat2, t2 - t2[0])
    assert pm.breaks == {"time_gap": 0, "no_transition": 0}
    assert _accuracy(net, pm, route) >= base - 0.04  # drift of up to 34 m still adds a U-turn or two
    assert (pm.status[at:at + m] == "matched").all()
    # the stop is inside the matched path's timing: legs cover the whole trace, stop included
    legs = pm.legs
    assert (legs["exit_s"] - legs["enter_s"]).sum() >= 0.95 * (t2[-1] - t2[0])


def test_logger_pause_without_movement_does_not_break_but_a_pause_with_a_jump_does(track):
    net, lon, lat, t, _route = track
    t2 = t - t[0]
    t2 = np.where(np.arange(len(t)) > 500, t2 + 900.0, t2)  # 15 min without fixes, vehicle where it was
    pm = Matcher(net).match_points(lon, lat, t2)
    assert pm.breaks["time_gap"] == 0
    # and a pause after which the fixes resume 1 km away breaks it too
    far = np.nonzero(np.arange(len(t)) > 500)[0]
    mlon, mlat = _shift(lon, lat, far, 1000.0, 0.5)
    assert Matcher(net).match_points(mlon, mlat, t2).breaks["time_gap"] == 1


def test_confidence_per_traversal(track):
    net, lon, lat, t, _route = track
    m = Matcher(net)
    fixes = pd.DataFrame({"timestamp_utc": pd.Timestamp("2024-05-06", tz="UTC") + pd.to_timedelta(t - t[0], "s"),
                          "lon_deg": lon, "lat_deg": lat})
    tr = m.match(fixes).traversals
    conf = tr["confidence"].to_numpy()
    assert len(tr) > 10 and np.isfinite(conf).all() and ((conf >= 0) & (conf <= 1)).all()
    assert (conf > 0.5).mean() > 0.9  # a clean track is mostly sure
    # pre-matched pieces are given their link ids: full confidence
    ids = net.segment_id[:3]
    pre = pd.DataFrame({"timestamp_utc": pd.Timestamp("2024-05-06", tz="UTC") + pd.to_timedelta([0, 10, 20], "s"),
                        "lon_deg": lon[:3], "lat_deg": lat[:3], "prematched_segment_id": ids,
                        "speed_kph": [30.0, 30.0, 30.0]})
    assert (m.match(pre).traversals["confidence"] == 1.0).all()
    # a fix next to a skipped outlier or a break makes the traversals it places less sure
    jlon, jlat = _shift(lon, lat, np.arange(300, 303), 600.0, 2.0)
    legs = m.match_points(jlon, jlat, t - t[0]).legs
    clean = m.match_points(lon, lat, t - t[0]).legs
    assert legs["confidence"].min() < clean["confidence"].min() or legs["confidence"].mean() < clean["confidence"].mean()


def test_dense_fixes_give_steady_traversal_speeds():
    """1 Hz fixes with 5 m noise along a street of 15 m segments at a constant 36 km/h: averaging path positions
    over +-smooth_s keeps the per-segment speeds near the truth; without it they scatter."""
    from speedprofile.matching.network import build_network

    k = 40  # segments of 15 m along the equator, one way
    deg = 15.0 / M_PER_DEG
    net = build_network(np.arange(k, dtype=np.int64), np.arange(k), np.arange(1, k + 1), np.full(k, 15.0),
                        np.arange(0, 2 * k + 1, 2), np.repeat(np.arange(k + 1) * deg, 2)[1:-1],
                        np.zeros(2 * k))
    rng = np.random.default_rng(5)
    t = np.arange(0.0, 58.0)
    x = 2.0 + 10.0 * t + rng.normal(0, 5.0, len(t))
    lon, lat = x / M_PER_DEG, rng.normal(0, 5.0, len(t)) / M_PER_DEG

    def speed_error(smooth_s: float) -> float:
        from speedprofile.matching.kernel import MatchParams

        legs = Matcher(net, MatchParams(smooth_s=smooth_s)).match_points(lon, lat, t).legs
        full = legs[(legs["off0_m"] < 0.5) & (legs["off1_m"] > 14.5)]
        v = 15.0 / (full["exit_s"] - full["enter_s"]) * 3.6
        return float(np.median(np.abs(v - 36.0)))

    assert speed_error(2.0) < 0.5 * speed_error(0.0)
    assert speed_error(2.0) < 5.0
