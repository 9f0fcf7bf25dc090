"""query: time-of-week parsing, segment and nearest-point answers from the warehouse and from PostGIS."""

from __future__ import annotations

import json

import numpy as np
import pytest

from speedprofile.cli import main
from speedprofile.errors import UserError
from speedprofile.serve.publish import publish
from speedprofile.serve.query import DASH, query_postgis, query_warehouse
from speedprofile.serve.timeofweek import format_bucket, parse_time_of_week
from tests.plugins.serve import fixture_segments, profile_kph, traces_of

FRI_1200 = 5 * 288 + 144


@pytest.mark.parametrize(("text", "bucket"), [
    ("Sun 00:00", 0), ("sun 00:04", 0), ("Sun 00:05", 1), ("Fri 12:00", FRI_1200), ("friday 12:07", FRI_1200 + 1),
    ("Sat 23:59", 2015), ("MON 8:00", 288 + 96), ("Thu, 17:30", 4 * 288 + 210),
])
def test_parse_time_of_week(text, bucket):
    assert parse_time_of_week(text) == bucket


@pytest.mark.parametrize("text", ["Fri", "12:00", "Fry 12:00", "Fri 24:00", "Fri 12:60", ""])
def test_parse_time_of_week_rejects_with_one_line(text):
    with pytest.raises(UserError) as exc:
        parse_time_of_week(text)
    assert "\n" not in str(exc.value)


def test_format_bucket_round_trips():
    for b in range(0, 2016, 7):
        assert parse_time_of_week(format_bucket(b)) == b


def _expected(segment_id: int, bucket: int) -> tuple[float, int]:
    seg = next(s for s in fixture_segments() if s["segment_id"] == segment_id)
    b = np.array([bucket])
    return float(np.round(profile_kph(seg["free_flow_kph"], b), 2)[0]), int(traces_of(b)[0])


def test_query_segment_from_warehouse(serve_warehouse, capsys):
    assert main(["query", "--warehouse", str(serve_warehouse), "--segment", "101", "--at", "Fri 12:00"]) == 0
    out = capsys.readouterr().out.strip()
    assert "\n" not in out  # a segment query answers for that direction only
    speed, traces = _expected(101, FRI_1200)
    assert out.startswith("Rua de Santa Catarina (segment 101, primary, ")
    assert f"Fri 12:00 -> {speed:.0f} km/h, p15{DASH}p85 {speed * 0.8:.0f}{DASH}{speed * 1.15:.0f}, {traces} traces" in out
    assert out.endswith("source observed")


def test_query_point_shows_both_directions(serve_warehouse, capsys):
    # a point next to the middle of Avenida dos Aliados (103 / 104)
    assert main(["query", "--warehouse", str(serve_warehouse), "--lat", "41.15015", "--lon", "-8.6090",
                 "--at", "Fri 08:00", "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [a["segment_id"] for a in answers] in ([103, 104], [104, 103])
    assert answers[0]["distance_m"] < 20
    for a in answers:
        assert a["speed_kph"] == pytest.approx(_expected(a["segment_id"], 5 * 288 + 96)[0])


def test_query_night_backoff_and_unnamed_one_way(serve_warehouse):
    (a,) = query_warehouse(str(serve_warehouse), parse_time_of_week("Tue 03:00"), segment_id=105)
    assert a.source == "neighbour_buckets" and a.reverse_segment_id is None
    assert a.line().startswith("(unnamed) (segment 105, residential,")
    (p,) = query_warehouse(str(serve_warehouse), parse_time_of_week("Tue 03:00"), segment_id=203)
    assert f"p15{DASH}p85 n/a" in p.line() and p.line().endswith("source road_class_prior")


def test_query_errors_are_one_line(serve_warehouse, capsys):
    assert main(["query", "--warehouse", str(serve_warehouse), "--segment", "42", "--at", "Fri 12:00"]) == 2
    assert "segment 42 is not in road_segments" in capsys.readouterr().err
    assert main(["query", "--warehouse", str(serve_warehouse), "--segment", "101", "--at", "Fry 1"]) == 2
    assert main(["query", "--warehouse", str(serve_warehouse), "--lat", "41.1", "--at", "Fri 12:00"]) == 2
    assert "--lat needs --lon" in capsys.readouterr().err


def test_query_postgis_matches_warehouse(serve_warehouse, postgis_dsn, capsys):
    publish(str(serve_warehouse), postgis_dsn)
    for at in ("Fri 12:00", "Sun 03:00", "Wed 17:55"):
        b = parse_time_of_week(at)
        for kw in ({"segment_id": 101}, {"segment_id": 203}, {"lon": -8.6063, "lat": 41.1481},
                   {"lon": -8.655, "lat": 41.1746}):
            wh_answers = query_warehouse(str(serve_warehouse), b, **kw)
            pg_answers = query_postgis(postgis_dsn, b, **kw)
            assert [a.line() for a in pg_answers] == [a.line() for a in wh_answers]
            if "lon" in kw:
                assert pg_answers[0].distance_m == pytest.approx(wh_answers[0].distance_m, abs=1.0)
    assert main(["query", "--warehouse", str(serve_warehouse), "--dsn", postgis_dsn, "--lat", "41.1481",
                 "--lon", "-8.6063", "--at", "Fri 12:00"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("nearest road") and "both directions" in lines[0] and len(lines) == 3


def _with_service_aisle(root):
    """The fixture warehouse plus an unnamed service aisle (no estimates) 8 m east of Rua de Santa Catarina."""
    import pandas as pd

    from tests.plugins.serve import estimates_frame, write_warehouse

    segs = fixture_segments()
    aisle = {**segs[0], "segment_id": 301, "osm_way_id": 9301, "from_node_id": 9001, "to_node_id": 9002,
             "reverse_segment_id": None, "road_class": "service", "name": None, "is_oneway": True,
             "lon": [-8.6059, -8.6059], "lat": [41.1465, 41.1475]}
    est = pd.concat([estimates_frame(s) for s in segs], ignore_index=True)
    return write_warehouse(root, [*segs, aisle], est)


def test_point_query_prefers_the_nearest_road_with_estimates_and_says_so(tmp_path, capsys):
    wh = _with_service_aisle(tmp_path / "wh")
    assert main(["query", "--warehouse", str(wh), "--lat", "41.147", "--lon", "-8.6058", "--at", "Fri 12:00"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("nearest road with estimates, ") and "both directions" in lines[0]
    assert "(the nearest road, (unnamed) service segment 301 at 8 m, has none)" in lines[0]
    assert [ln.split("(segment ")[1].split(",")[0] for ln in lines[1:]] == ["101", "102"]
    assert all("km/h" in ln for ln in lines[1:])
    # within a 5 m radius there is no road with estimates: the nearest road is answered, and the header says so
    assert main(["query", "--warehouse", str(wh), "--lat", "41.147", "--lon", "-8.6058", "--at", "Fri 12:00",
                 "--radius-m", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "no road with estimates within 5 m" in lines[0] and "one-way" in lines[0]
    assert lines[1].startswith("(unnamed) (segment 301, service,") and lines[1].endswith("no estimate")


def test_backed_off_answer_says_what_it_rests_on(serve_warehouse):
    import pandas as pd

    from tests.plugins.serve import WINDOW
    from tests.seed import commit_pandas

    b = parse_time_of_week("Tue 03:00")
    (p,) = query_warehouse(str(serve_warehouse), b, segment_id=203)
    # no histograms in this warehouse: the own count is not known, only that it was below the threshold
    assert p.own_traces is None
    assert ("backed off: fewer than 3 own traces in this bucket; borrowed from the road-class prior of tertiary "
            "roads (0 traces), source road_class_prior") in p.line()
    assert " 0 traces, confidence" not in p.line()  # the borrowed sample is not presented as the segment's own
    for cell, rows in (("8739220f0ffffff", {"segment_id": [105], "tow_bucket": [b], "n_traces": [1]}),
                       ("87392201affffff", {"segment_id": [201], "tow_bucket": [b], "n_traces": [9]})):
        commit_pandas(serve_warehouse, "speed_histograms", pd.DataFrame({**rows, "partition": cell, "window": WINDOW}),
                      replace=[{"partition": cell, "window": WINDOW}])
    (a,) = query_warehouse(str(serve_warehouse), b, segment_id=105)
    assert a.own_traces == 1 and a.source == "neighbour_buckets"
    assert (f"backed off: 1 own trace in this bucket (3 needed); borrowed from this segment's neighbouring 5-minute "
            f"buckets ({a.n_traces} traces)") in a.line()
    (p,) = query_warehouse(str(serve_warehouse), b, segment_id=203)
    assert p.own_traces == 0 and "backed off: 0 own traces in this bucket (3 needed)" in p.line()
    (o,) = query_warehouse(str(serve_warehouse), parse_time_of_week("Fri 12:00"), segment_id=101)
    assert o.source == "observed" and "backed off" not in o.line()


def test_point_query_from_postgis_also_passes_over_roads_without_estimates(tmp_path, postgis_dsn):
    wh = _with_service_aisle(tmp_path / "wh")
    publish(str(wh), postgis_dsn)
    b = parse_time_of_week("Fri 12:00")
    for kw in ({}, {"radius_m": 5.0}):
        pg = query_postgis(postgis_dsn, b, lon=-8.6058, lat=41.147, **kw)
        local = query_warehouse(str(wh), b, lon=-8.6058, lat=41.147, **kw)
        assert [a.segment_id for a in pg] == [a.segment_id for a in local]
        assert (pg[0].passed_over or {}).get("segment_id") == (local[0].passed_over or {}).get("segment_id")
    assert [a.segment_id for a in query_postgis(postgis_dsn, b, lon=-8.6058, lat=41.147)] == [101, 102]
