"""OSM PBF -> directed road segments (columnar): drivable-way filter, tag parsing, intersection splitting.

Grain: one directed segment between two consecutive split nodes (intersections or way ends) of one way.
Units: metres, km/h, WGS84 degrees. One streaming pass through the file: libosmium keeps the node-location
index (C++), Python only sees the drivable ways and stores their node ids and coordinates in flat arrays.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.road_segments import ROAD_CLASSES
from speedprofile.errors import UserError

DRIVABLE = (
    "motorway", "trunk", "primary", "secondary", "tertiary",
    "motorway_link", "trunk_link", "primary_link", "secondary_link", "tertiary_link",
    "unclassified", "residential", "living_street", "service", "road",
)
CLASS_INDEX = {c: ROAD_CLASSES.index(c) for c in DRIVABLE}

# Access values that close a road to ordinary cars. Kept (a public car may legally be there, so probes occur):
# yes, permissive, designated, destination, delivery, customers, discouraged, unknown.
CLOSED_ACCESS = frozenset({"no", "private", "agricultural", "forestry", "emergency", "military", "use_sidepath"})
# Most specific first: the first of these keys present on the way decides car access.
ACCESS_KEYS = ("motorcar", "motor_vehicle", "vehicle", "access")

ONEWAY_FORWARD = frozenset({"yes", "true", "1"})
ONEWAY_BACKWARD = frozenset({"-1", "reverse"})
ONEWAY_NO = frozenset({"no", "false", "0"})

KPH_PER_MPH = 1.609344
KPH_PER_KNOT = 1.852
# Implicit limits ("CC:zone") -> km/h; zones not listed, and "CC:motorway" in countries without a general
# motorway limit (DE), are null.
IMPLICIT_MAXSPEED_KPH = {
    "PT:urban": 50.0, "PT:rural": 90.0, "PT:trunk": 100.0, "PT:motorway": 120.0,
    "ES:urban": 50.0, "ES:rural": 90.0, "ES:motorway": 120.0,
    "FR:urban": 50.0, "FR:rural": 80.0, "FR:motorway": 130.0,
    "DE:urban": 50.0, "DE:rural": 100.0, "DE:living_street": 7.0,
    "AT:urban": 50.0, "AT:rural": 100.0, "AT:motorway": 130.0,
    "CH:urban": 50.0, "CH:rural": 80.0, "CH:motorway": 120.0,
    "LI:urban": 50.0, "LI:rural": 80.0,
    "IT:urban": 50.0, "IT:rural": 90.0, "IT:motorway": 130.0,
    "GB:nsl_single": round(60 * KPH_PER_MPH, 2), "GB:nsl_dual": round(70 * KPH_PER_MPH, 2),
    "GB:motorway": round(70 * KPH_PER_MPH, 2),
    "US:urban": round(25 * KPH_PER_MPH, 2),
}
_SPEED_RE = re.compile(r"^\s*(\d+(?:[.,]\d+)?)\s*(km/h|kmh|kph|mph|knots|kn)?\s*$", re.IGNORECASE)


def parse_maxspeed(value: str | None) -> float | None:
    """OSM maxspeed -> km/h (2 decimals): "50", "50 km/h", "30 mph" -> 48.28, "PT:urban" -> table; else None.

    "none", "signals", "walk", "variable" and anything unparsable are None. A list ("50;30") uses its first value.
    """
    if value is None:
        return None
    v = value.strip()
    if ";" in v:
        v = v.split(";", 1)[0].strip()
    if v in IMPLICIT_MAXSPEED_KPH:
        return IMPLICIT_MAXSPEED_KPH[v]
    m = _SPEED_RE.match(v)
    if not m:
        return None
    number = float(m.group(1).replace(",", "."))
    unit = (m.group(2) or "km/h").lower()
    if unit == "mph":
        number *= KPH_PER_MPH
    elif unit in ("knots", "kn"):
        number *= KPH_PER_KNOT
    if number <= 0:
        return None
    return round(number, 2)


def oneway_code(tags: dict[str, str | None], highway: str) -> int:
    """1 = forward only, -1 = backward only, 0 = both. Implied on motorway and roundabouts; oneway=no wins."""
    v = (tags.get("oneway") or "").strip().lower()
    if v in ONEWAY_FORWARD:
        return 1
    if v in ONEWAY_BACKWARD:
        return -1
    if v in ONEWAY_NO:
        return 0
    # 'reversible' / 'alternating' roads are driven both ways (at different times): two-way here.
    if highway == "motorway" or tags.get("junction") in ("roundabout", "circular"):
        return 1
    return 0


def drop_reason(tags: dict[str, str | None]) -> str | None:
    """Why a highway=* way is not part of the car network (None when it is)."""
    highway = tags.get("highway")
    if highway not in CLASS_INDEX:
        return "not_drivable_class"
    if tags.get("area") == "yes":
        return "area"
    for key in ACCESS_KEYS:
        v = tags.get(key)
        if v is not None:
            if v.strip().lower() in CLOSED_ACCESS:
                return "no_car_access"
            break
    return None


@dataclass
class WayArrays:
    """Drivable ways as flat arrays: node refs / coordinates concatenated, one offset per way."""

    way_id: array = field(default_factory=lambda: array("q"))
    offset: array = field(default_factory=lambda: array("q", [0]))
    road_class: array = field(default_factory=lambda: array("b"))
    oneway: array = field(default_factory=lambda: array("b"))
    maxspeed_fwd: array = field(default_factory=lambda: array("d"))
    maxspeed_bwd: array = field(default_factory=lambda: array("d"))
    name_idx: array = field(default_factory=lambda: array("q"))
    names: list = field(default_factory=list)
    ref: array = field(default_factory=lambda: array("q"))
    lon: array = field(default_factory=lambda: array("d"))
    lat: array = field(default_factory=lambda: array("d"))
    counts: dict = field(default_factory=dict)


_TAG_KEYS = ("highway", "oneway", "junction", "area", "maxspeed", "maxspeed:forward", "maxspeed:backward",
             "name", "ref", *ACCESS_KEYS)


def read_osm_ways(path: str) -> WayArrays:
    """Stream the PBF once; keep drivable ways with their node ids and locations (missing location = NaN)."""
    import osmium

    out = WayArrays()
    counts = {"highway_ways": 0, "kept_ways": 0, "not_drivable_class": 0, "area": 0, "no_car_access": 0,
              "too_few_nodes": 0}
    name_ids: dict[str, int] = {}
    speed_cache: dict[str | None, float] = {}
    nan = float("nan")

    def speed(v):
        s = speed_cache.get(v)
        if s is None:
            p = parse_maxspeed(v)
            s = speed_cache[v] = nan if p is None else p
        return s

    try:
        highway_only = osmium.filter.KeyFilter("highway")
        highway_only.enable_for(osmium.osm.WAY)  # nodes pass through to the location index
        fp = (
            osmium.FileProcessor(path)
            .with_locations()
            .with_filter(highway_only)
            .with_filter(osmium.filter.EntityFilter(osmium.osm.WAY))
        )
        w: Any
        for w in fp:
            counts["highway_ways"] += 1
            t = w.tags
            tags = {k: t.get(k) for k in _TAG_KEYS}
            reason = drop_reason(tags)
            if reason:
                counts[reason] += 1
                continue
            nodes = w.nodes
            if len(nodes) < 2:
                counts["too_few_nodes"] += 1
                continue
            highway = str(tags["highway"])
            for nd in nodes:
                loc = nd.location
                out.ref.append(nd.ref)
                if loc.valid():
                    out.lon.append(loc.lon)
                    out.lat.append(loc.lat)
                else:
                    out.lon.append(nan)
                    out.lat.append(nan)
            out.offset.append(len(out.ref))
            out.way_id.append(w.id)
            out.road_class.append(CLASS_INDEX[highway])
            out.oneway.append(oneway_code(tags, highway))
            base = tags["maxspeed"]
            out.maxspeed_fwd.append(speed(tags["maxspeed:forward"] or base))
            out.maxspeed_bwd.append(speed(tags["maxspeed:backward"] or base))
            label = tags["name"] or tags["ref"]
            if label is None:
                out.name_idx.append(-1)
            else:
                idx = name_ids.get(label)
                if idx is None:
                    idx = name_ids[label] = len(out.names)
                    out.names.append(label)
                out.name_idx.append(idx)
            counts["kept_ways"] += 1
    except UserError:
        raise
    except (RuntimeError, OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot read OSM file {path}: {msg}") from None
    out.counts = counts
    return out


_MASK63 = np.uint64((1 << 63) - 1)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64 -> uint64), wrapping arithmetic."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def segment_ids(way_id: np.ndarray, from_node: np.ndarray, to_node: np.ndarray, salt: np.ndarray | None = None) -> np.ndarray:
    """Stable positive int63 id from (way id, from node, to node[, salt]): a splitmix64 chain, platform-independent."""
    with np.errstate(over="ignore"):
        h = _mix64(np.asarray(way_id).astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        h = _mix64(h ^ np.asarray(from_node).astype(np.int64).view(np.uint64))
        h = _mix64(h ^ np.asarray(to_node).astype(np.int64).view(np.uint64))
        if salt is not None:
            h = _mix64(h ^ np.asarray(salt).astype(np.int64).view(np.uint64))
    h = h & _MASK63
    h[h == 0] = 1
    return h.astype(np.int64)


def ways_to_segments(ways: WayArrays) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Split ways at intersection nodes into directed segments.

    Returns (columns for graph.segments_table, geometry offsets, flat lon, flat lat, counts). Split nodes are
    way ends and nodes that occur more than once among all kept ways (shared by two ways, or revisited by one).
    Pieces touching a node without a location (outside the extract) are dropped and counted.
    """
    offsets = np.frombuffer(ways.offset, dtype=np.int64)
    ref = np.frombuffer(ways.ref, dtype=np.int64)
    lon = np.frombuffer(ways.lon, dtype=np.float64)
    lat = np.frombuffer(ways.lat, dtype=np.float64)
    n_ways = len(offsets) - 1
    counts = {"pieces": 0, "pieces_missing_nodes": 0}
    way_of = np.repeat(np.arange(n_ways), np.diff(offsets))

    # Drop repeated consecutive nodes within a way (zero-length steps).
    keep = np.ones(len(ref), dtype=bool)
    if len(ref) > 1:
        keep[1:] = ~((ref[1:] == ref[:-1]) & (way_of[1:] == way_of[:-1]))
    ref, lon, lat, way_of = ref[keep], lon[keep], lat[keep], way_of[keep]
    starts = np.searchsorted(way_of, np.arange(n_ways), side="left")
    ends = np.searchsorted(way_of, np.arange(n_ways), side="right") - 1
    single = ends <= starts  # ways collapsed to one node

    _, inverse, use = np.unique(ref, return_inverse=True, return_counts=True)
    missing = np.isnan(lon) | np.isnan(lat)
    split = (use[inverse] > 1) | missing
    # the known neighbours of a missing node become piece ends, so only the pieces into the void are lost
    if len(ref) > 1:
        same = way_of[1:] == way_of[:-1]
        split[:-1] |= missing[1:] & same
        split[1:] |= missing[:-1] & same
    split[starts[~single]] = True
    split[ends[~single]] = True
    pos = np.flatnonzero(split)
    a, b = pos[:-1], pos[1:]
    same_way = way_of[a] == way_of[b]
    a, b = a[same_way], b[same_way]
    a, b = a[b > a], b[b > a]
    # pieces that contain a missing-location node (at either end or inside) are dropped
    miss_cum = np.concatenate([[0], np.cumsum(missing)])
    bad = (miss_cum[b + 1] - miss_cum[a]) > 0
    counts["pieces"] = len(a)
    counts["pieces_missing_nodes"] = int(bad.sum())
    a, b = a[~bad], b[~bad]
    w = way_of[a]
    oneway = np.frombuffer(ways.oneway, dtype=np.int8)[w]

    # forward copies for oneway >= 0, backward copies for oneway <= 0
    fwd_sel = oneway >= 0
    bwd_sel = oneway <= 0
    fa, fb = a[fwd_sel], b[fwd_sel]
    ba, bb = a[bwd_sel], b[bwd_sel]
    nverts = np.concatenate([fb - fa + 1, bb - ba + 1])
    geo_off = np.concatenate([[0], np.cumsum(nverts)]).astype(np.int64)
    # vertex index gather: forward runs a..b, backward runs b..a
    first = np.concatenate([fa, bb])
    direction = np.concatenate([np.ones(len(fa), np.int64), -np.ones(len(ba), np.int64)])
    within = np.arange(geo_off[-1]) - np.repeat(geo_off[:-1], nverts)
    idx = np.repeat(first, nverts) + np.repeat(direction, nverts) * within
    glon, glat = lon[idx], lat[idx]

    seg_w = np.concatenate([w[fwd_sel], w[bwd_sel]])
    from_node = np.concatenate([ref[fa], ref[bb]])
    to_node = np.concatenate([ref[fb], ref[ba]])
    osm_way = np.frombuffer(ways.way_id, dtype=np.int64)[seg_w]
    is_bwd = direction < 0
    # The same (way, from, to) more than once (a loop piece driven both ways, or a lollipop way whose loop
    # passes the same two split nodes twice): the k-th repeat, in piece order, is salted with k.
    sid0 = segment_ids(osm_way, from_node, to_node)
    order = np.argsort(sid0, kind="stable")
    sorted_ids = sid0[order]
    run_start = np.concatenate([[True], sorted_ids[1:] != sorted_ids[:-1]])
    run_idx = np.maximum.accumulate(np.where(run_start, np.arange(len(order)), 0))
    salt = np.empty(len(order), dtype=np.int64)
    salt[order] = np.arange(len(order)) - run_idx
    counts["repeated_node_pairs"] = int((salt > 0).sum())
    sid = np.where(salt > 0, segment_ids(osm_way, from_node, to_node, salt), sid0)

    # reverse twins: the two copies of the same two-way piece
    both = oneway == 0
    n_f = len(fa)
    rev = np.full(len(sid), -1, dtype=np.int64)
    f_idx_of_piece = np.full(len(a), -1, dtype=np.int64)
    f_idx_of_piece[fwd_sel] = np.arange(n_f)
    b_idx_of_piece = np.full(len(a), -1, dtype=np.int64)
    b_idx_of_piece[bwd_sel] = n_f + np.arange(len(ba))
    fi, bi = f_idx_of_piece[both], b_idx_of_piece[both]
    rev[fi] = sid[bi]
    rev[bi] = sid[fi]

    speed = np.where(is_bwd, np.frombuffer(ways.maxspeed_bwd, dtype=np.float64)[seg_w],
                     np.frombuffer(ways.maxspeed_fwd, dtype=np.float64)[seg_w])
    name_idx = np.frombuffer(ways.name_idx, dtype=np.int64)[seg_w]
    names = np.array([*ways.names, None], dtype=object)[name_idx]  # -1 -> the trailing None
    classes = np.array(ROAD_CLASSES, dtype=object)[np.frombuffer(ways.road_class, dtype=np.int8)[seg_w]]
    cols = {
        "segment_id": sid,
        "osm_way_id": osm_way,
        "from_node_id": from_node,
        "to_node_id": to_node,
        "reverse_segment_id": rev,
        "road_class": classes,
        "maxspeed_kph": speed,
        "name": names,
        "is_oneway": np.concatenate([oneway[fwd_sel] != 0, oneway[bwd_sel] != 0]),
    }
    if len(np.unique(sid)) != len(sid):  # 63-bit collision between different triples: never seen in practice
        raise UserError("segment id collision; please report the OSM extract used")
    return cols, geo_off, glon, glat, counts


def read_osm_table(path: str, h3_res: int):
    """OSM PBF -> road_segments pyarrow.Table and row accounting counts."""
    from speedprofile.network.graph import segments_table

    ways = read_osm_ways(path)
    cols, geo_off, glon, glat, counts = ways_to_segments(ways)
    table = segments_table(cols, geo_off, glon, glat, h3_res)
    return table, {**ways.counts, **counts, "segments": table.num_rows}
