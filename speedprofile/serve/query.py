"""`speedprofile query`: expected speed of one segment, or of the road nearest a point (both directions), at a
local time of week — from PostGIS when --dsn is given, else straight from the warehouse.

Grain of an answer: one directed segment x one 5-minute tow_bucket (Sunday 00:00 local = 0).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass

import pandas as pd

from schemas.speed_estimates import MIN_TRACES
from speedprofile.errors import UserError
from speedprofile.serve.publish import DEFAULT_SCHEMA, _ident, connect
from speedprofile.serve.timeofweek import format_bucket, parse_time_of_week

DASH = "\u2013"  # en dash, as in "p15\u2013p85 17\u201331"
ESTIMATE_FIELDS = ("speed_kph", "p15_kph", "p85_kph", "n_traces", "n_obs", "confidence", "source", "free_flow_kph",
                   "window")
RADIUS_M = 50.0  # a point query prefers the nearest road with estimates within this distance
# What a back-off level borrows from (the estimate's n_traces are that level's sample, not the segment's own).
BORROWED = {
    "neighbour_buckets": "this segment's neighbouring 5-minute buckets",
    "hour_daytype": "this segment's same hour on the same day type",
    "segment_week": "this segment's whole week",
    "road_class_prior": "the road-class prior of {road_class} roads",
}


@dataclass
class Answer:
    """One directed segment's estimate at one bucket (estimate fields None when there is none)."""

    segment_id: int
    name: str | None
    road_class: str
    length_m: float
    reverse_segment_id: int | None
    tow_bucket: int
    speed_kph: float | None = None
    p15_kph: float | None = None
    p85_kph: float | None = None
    n_traces: int | None = None
    n_obs: int | None = None
    confidence: float | None = None
    source: str | None = None
    free_flow_kph: float | None = None
    window: str | None = None
    distance_m: float | None = None
    own_traces: int | None = None  # the segment's own distinct traces in this bucket (None: not known here)
    min_traces: int = MIN_TRACES  # traces a bucket needs to be published from its own data
    passed_over: dict | None = None  # point query: the nearer road without estimates that was passed over

    @property
    def backed_off(self) -> bool:
        return self.source is not None and self.source != "observed"

    def rests_on(self) -> str:
        """What a backed-off estimate rests on: own traces, then the level and sample it borrowed from."""
        own = ("fewer than {k} own traces in this bucket" if self.own_traces is None
               else f"{self.own_traces} own trace{'s' if self.own_traces != 1 else ''} in this bucket "
                    f"({{k}} needed)").format(k=self.min_traces)
        level = BORROWED.get(str(self.source), f"back-off level {self.source}").format(road_class=self.road_class)
        return f"backed off: {own}; borrowed from {level} ({self.n_traces} traces)"

    def line(self) -> str:
        """'Rua X (segment 123, primary, 180 m) Fri 12:00 -> 23 km/h, p15-p85 17-31, 412 traces, ...' (en dashes)."""
        head = f"{self.name or '(unnamed)'} (segment {self.segment_id}, {self.road_class}, {self.length_m:.0f} m)"
        when = format_bucket(self.tow_bucket)
        if self.speed_kph is None:
            return f"{head} {when} -> no estimate"
        spread = (f"p15{DASH}p85 n/a" if self.p15_kph is None or self.p85_kph is None
                  else f"p15{DASH}p85 {self.p15_kph:.0f}{DASH}{self.p85_kph:.0f}")
        if self.backed_off:
            return (f"{head} {when} -> {self.speed_kph:.0f} km/h, {spread}, confidence {self.confidence:.2f}, "
                    f"{self.rests_on()}, source {self.source}")
        return (f"{head} {when} -> {self.speed_kph:.0f} km/h, {spread}, {self.n_traces} traces, "
                f"confidence {self.confidence:.2f}, source {self.source}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.backed_off:
            d["rests_on"] = self.rests_on()
        return d


def _clean(v):
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def _answer(seg: dict, est: dict | None, bucket: int, distance_m: float | None = None) -> Answer:
    rev = _clean(seg.get("reverse_segment_id"))
    a = Answer(segment_id=int(seg["segment_id"]), name=_clean(seg.get("name")), road_class=str(seg["road_class"]),
               length_m=float(seg["length_m"]), reverse_segment_id=None if rev is None else int(rev),
               tow_bucket=bucket, distance_m=distance_m)
    if est is not None:
        for f in ESTIMATE_FIELDS:
            setattr(a, f, _clean(est.get(f)))
        a.n_traces = None if a.n_traces is None else int(a.n_traces)
        a.n_obs = None if a.n_obs is None else int(a.n_obs)
    return a


# --- warehouse backend ---------------------------------------------------------------------------------------


def _road(seg, distance: float) -> dict:
    return {"segment_id": int(seg["segment_id"]), "name": _clean(seg.get("name")),
            "road_class": str(seg["road_class"]), "distance_m": round(float(distance), 1)}


def query_warehouse(warehouse: str, bucket: int, segment_id: int | None = None,
                    lon: float | None = None, lat: float | None = None, radius_m: float = RADIUS_M) -> list[Answer]:
    """Answers from the warehouse: the segment, or the road nearest (lon, lat) that has estimates within radius_m
    (else the nearest road), followed by its reverse direction."""
    from speedprofile.serve.data import load_estimates, load_segments, own_traces, point_segment_distance_m

    segs = load_segments(warehouse)
    passed_over = None
    if segment_id is not None:
        hit = segs[segs["segment_id"] == segment_id]
        if hit.empty:
            raise UserError(f"segment {segment_id} is not in road_segments of {warehouse}")
        chosen, distance = hit.iloc[0], None
    else:
        if segs.empty:
            raise UserError(f"road_segments of {warehouse} is empty")
        if lon is None or lat is None:
            raise UserError("a point query needs both --lat and --lon")
        d = point_segment_distance_m(segs, lon, lat)
        i = int(d.argmin())
        near = [int(k) for k in d.argsort() if d[k] <= radius_m]
        if near:
            cand = segs.iloc[near]
            have = load_estimates(warehouse, sorted({str(p) for p in cand["partition"]} & set(_est_cells(warehouse))),
                                  buckets=[bucket], segment_ids=[int(x) for x in cand["segment_id"]],
                                  columns=["segment_id"])
            with_est = set(int(x) for x in have["segment_id"])
            hit = next((k for k in near if int(segs.iloc[k]["segment_id"]) in with_est), None)
            if hit is not None and hit != i:
                passed_over = _road(segs.iloc[i], d[i])
                i = hit
        chosen, distance = segs.iloc[i], float(d[i])
    rows = [chosen]
    rev = chosen["reverse_segment_id"]
    if segment_id is None and not pd.isna(rev):
        rows += [r for _, r in segs[segs["segment_id"] == int(rev)].iterrows()]
    ids = [int(r["segment_id"]) for r in rows]
    parts = sorted({str(r["partition"]) for r in rows})
    est = load_estimates(warehouse, sorted(set(parts) & set(_est_cells(warehouse))), buckets=[bucket],
                         segment_ids=ids)
    by_id = {int(r["segment_id"]): r for r in est.to_dict("records")}
    answers = [_answer(r.to_dict(), by_id.get(int(r["segment_id"])), bucket, distance if k == 0 else None)
               for k, r in enumerate(rows)]
    for a, r in zip(answers, rows, strict=True):
        if a.backed_off and a.window:
            a.own_traces = own_traces(warehouse, str(r["partition"]), a.window, a.segment_id, bucket)
    answers[0].passed_over = passed_over
    return answers


def _est_cells(warehouse: str) -> list[str]:
    from speedprofile.serve.data import estimate_partitions

    return estimate_partitions(warehouse)


def point_header(answers: list[Answer], lat: float | None, lon: float | None, radius_m: float) -> str:
    """The line before a point query's answers: which road was chosen and why, and how many directions."""
    first = answers[0]
    dirs = "both directions" if len(answers) > 1 else "one-way"
    if first.passed_over:
        p = first.passed_over
        return (f"nearest road with estimates, {first.distance_m:.0f} m from ({lat}, {lon}) (the nearest road, "
                f"{p['name'] or '(unnamed)'} {p['road_class']} segment {p['segment_id']} at {p['distance_m']:.0f} m, "
                f"has none); {dirs}:")
    if first.speed_kph is None:
        return (f"nearest road {first.distance_m:.0f} m from ({lat}, {lon}); no road with estimates within "
                f"{radius_m:.0f} m; {dirs}:")
    return f"nearest road {first.distance_m:.0f} m from ({lat}, {lon}); {dirs}:"


# --- PostGIS backend -----------------------------------------------------------------------------------------

_SEG_COLS = "s.segment_id, s.name, s.road_class, s.length_m, s.reverse_segment_id"
_EST_COLS = ", ".join(f"e.{c}" for c in ESTIMATE_FIELDS)


def query_postgis(dsn: str, bucket: int, segment_id: int | None = None, lon: float | None = None,
                  lat: float | None = None, schema: str = DEFAULT_SCHEMA, radius_m: float = RADIUS_M) -> list[Answer]:
    """Answers from the published tables (nearest segment by GiST KNN, re-ranked by geodesic distance)."""
    import psycopg2

    s = _ident(schema)
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            try:
                if segment_id is not None:
                    cur.execute(f"SELECT segment_id, NULL FROM {s}.road_segments WHERE segment_id = %s", (segment_id,))
                else:
                    cur.execute(
                        f"""WITH pt AS (SELECT ST_SetSRID(ST_MakePoint(%s, %s), 4326) AS g),
                            cand AS (SELECT r.segment_id, r.geom, r.name, r.road_class FROM {s}.road_segments r, pt
                                     ORDER BY r.geom <-> pt.g LIMIT 64)
                            SELECT segment_id, ST_Distance(cand.geom::geography, pt.g::geography), name, road_class,
                                   EXISTS (SELECT 1 FROM {s}.speed_estimates e
                                           WHERE e.segment_id = cand.segment_id AND e.tow_bucket = %s)
                            FROM cand, pt ORDER BY 2, 1""", (lon, lat, bucket))
            except psycopg2.errors.UndefinedTable:
                raise UserError(f"no published tables in schema {schema!r} (run `speedprofile publish` first)") from None
            found = cur.fetchall() if segment_id is None else cur.fetchall()[:1]
            if not found:
                raise UserError(f"segment {segment_id} is not published" if segment_id is not None
                                else "no published road segments")
            seg_id, distance = found[0][:2]
            passed_over = None
            if segment_id is None:
                hit = next((r for r in found if r[4] and r[1] <= radius_m), None)
                if hit is not None and hit[0] != seg_id:
                    passed_over = {"segment_id": int(seg_id), "name": found[0][2], "road_class": str(found[0][3]),
                                   "distance_m": round(float(distance), 1)}
                    seg_id, distance = hit[:2]
            cur.execute(
                f"""SELECT {_SEG_COLS}, {_EST_COLS}, e.segment_id IS NOT NULL
                    FROM {s}.road_segments s
                    LEFT JOIN {s}.speed_estimates e ON e.segment_id = s.segment_id AND e.tow_bucket = %s
                    WHERE s.segment_id = %s
                       OR (%s AND s.segment_id = (SELECT reverse_segment_id FROM {s}.road_segments
                                                  WHERE segment_id = %s))
                    ORDER BY s.segment_id = %s DESC""", (bucket, seg_id, segment_id is None, seg_id, seg_id))
            names = [d[0] for d in cur.description]
            out = []
            for k, row in enumerate(cur.fetchall()):
                rec = dict(zip(names, row, strict=True))
                seg = {c: rec[c] for c in ("segment_id", "name", "road_class", "length_m", "reverse_segment_id")}
                est = {c: rec[c] for c in ESTIMATE_FIELDS} if row[-1] else None
                out.append(_answer(seg, est, bucket, float(distance) if k == 0 and distance is not None else None))
            out[0].passed_over = passed_over
            return out
    finally:
        conn.close()


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--segment", type=int, help="segment_id")
    where.add_argument("--lat", type=float, help="latitude (WGS84 degrees) of a point; needs --lon")
    p.add_argument("--lon", type=float, help="longitude (WGS84 degrees) of a point")
    p.add_argument("--at", required=True, help="local time of week, e.g. 'Fri 12:00'")
    p.add_argument("--dsn", default=None, help="read from PostGIS (published tables) instead of the warehouse")
    p.add_argument("--schema", default=DEFAULT_SCHEMA, help="PostGIS schema (default: %(default)s)")
    p.add_argument("--radius-m", type=float, default=RADIUS_M,
                   help="point query: prefer the nearest road with estimates within this distance (default %(default)s m)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of text")


def cli(args: argparse.Namespace) -> int:
    bucket = parse_time_of_week(args.at)
    if args.segment is None:
        if args.lon is None:
            raise UserError("--lat needs --lon (or use --segment ID)")
        if not (-90 <= args.lat <= 90 and -180 <= args.lon <= 180):
            raise UserError(f"point ({args.lat}, {args.lon}) is outside WGS84 lat/lon ranges")
    elif args.lon is not None:
        raise UserError("--lon goes with --lat, not with --segment")
    if args.dsn:
        answers = query_postgis(args.dsn, bucket, args.segment, args.lon, args.lat, args.schema, args.radius_m)
    else:
        answers = query_warehouse(args.warehouse, bucket, args.segment, args.lon, args.lat, args.radius_m)
    if args.segment is None and not args.json:
        print(point_header(answers, args.lat, args.lon, args.radius_m))
    for a in answers:
        print(json.dumps(a.to_dict()) if args.json else a.line())
    return 0
