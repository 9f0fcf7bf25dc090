"""Traffic model of the simulated fleet: speed per segment x local 5-minute time-of-week bucket (km/h).

speed = free_flow x segment_factor x (1 - depth x profile(day type, local time of day)), evaluated at the bucket
centre, so the model speed is constant within a bucket. Buckets: 0..2015, Sunday 00:00 local = 0 (schemas).
"""

from __future__ import annotations

import numpy as np

from schemas.bucketed_traversals import BUCKET_MINUTES, N_BUCKETS

BUCKETS_PER_DAY = 24 * 60 // BUCKET_MINUTES  # 288
WEEK_S = 7 * 86400
_EPOCH_TO_SUNDAY_S = 3 * 86400  # 1970-01-01 was a Thursday; 1970-01-04 00:00 is a Sunday

# Free-flow speed (km/h) by OSM class when no maxspeed is tagged.
CLASS_FREE_FLOW_KPH = {
    "motorway": 110.0, "trunk": 90.0, "primary": 60.0, "secondary": 50.0, "tertiary": 45.0,
    "motorway_link": 60.0, "trunk_link": 50.0, "primary_link": 45.0, "secondary_link": 40.0,
    "tertiary_link": 35.0, "unclassified": 40.0, "residential": 30.0, "living_street": 12.0,
    "service": 20.0, "road": 35.0, "unknown": 40.0,
}
# Rush-hour depth (fraction of free flow lost at the peak) by class: arterials congest most.
CLASS_RUSH_DEPTH = {
    "motorway": 0.55, "trunk": 0.55, "primary": 0.55, "secondary": 0.5, "tertiary": 0.45,
    "motorway_link": 0.5, "trunk_link": 0.5, "primary_link": 0.5, "secondary_link": 0.45,
    "tertiary_link": 0.4, "unclassified": 0.3, "residential": 0.2, "living_street": 0.1,
    "service": 0.1, "road": 0.3, "unknown": 0.4,
}
# Routing preference: travel time is multiplied by this (drivers favour arterials).
CLASS_ROUTE_BIAS = {
    "motorway": 0.8, "trunk": 0.8, "primary": 0.85, "secondary": 0.9, "tertiary": 0.95,
    "motorway_link": 0.9, "trunk_link": 0.9, "primary_link": 0.9, "secondary_link": 0.95,
    "tertiary_link": 1.0, "unclassified": 1.1, "residential": 1.3, "living_street": 2.5,
    "service": 2.0, "road": 1.1, "unknown": 1.0,
}
MAXSPEED_FREE_FLOW_SHARE = 0.95  # drivers cruise slightly under the posted limit


def _gauss(m, centre, sigma):
    return np.exp(-0.5 * ((m - centre) / sigma) ** 2)


def day_profile(day_of_week: np.ndarray, minute_of_day: np.ndarray) -> np.ndarray:
    """Congestion 0..1 (1 = worst weekday peak) at local day of week (0 = Sunday) and minute of day."""
    m = np.asarray(minute_of_day, dtype=np.float64)
    dow = np.asarray(day_of_week)
    weekday = np.minimum(1.0, _gauss(m, 8 * 60 + 15, 50) + 0.9 * _gauss(m, 17 * 60 + 45, 70)
                         + 0.3 * _gauss(m, 13 * 60, 150))
    saturday = 0.35 * _gauss(m, 13 * 60, 150)
    sunday = 0.2 * _gauss(m, 16 * 60, 150)
    return np.where(dow == 0, sunday, np.where(dow == 6, saturday, weekday))


def bucket_profile() -> np.ndarray:
    """day_profile at the centre of each of the N_BUCKETS time-of-week buckets."""
    b = np.arange(N_BUCKETS)
    return day_profile(b // BUCKETS_PER_DAY, (b % BUCKETS_PER_DAY) * BUCKET_MINUTES + BUCKET_MINUTES / 2)


def tow_bucket_of(local_epoch_s: np.ndarray) -> np.ndarray:
    """Local time-of-week bucket (int16) of local wall-clock seconds since 1970-01-01 00:00 (local)."""
    tow = np.mod(np.floor(np.asarray(local_epoch_s, dtype=np.float64)) - _EPOCH_TO_SUNDAY_S, WEEK_S)
    return (tow // (BUCKET_MINUTES * 60)).astype(np.int16)


def unit_hash(segment_id: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per segment id (independent of run order and seed)."""
    from speedprofile.network.osm import segment_ids

    h = segment_ids(np.asarray(segment_id, dtype=np.int64), np.full(len(segment_id), salt), np.zeros(len(segment_id)))
    return (h >> np.int64(10)).astype(np.float64) / float(1 << 53)


class TrafficModel:
    """Per-segment free flow and rush depth, and the time-of-week profile: model_speed(seg_idx, bucket)."""

    def __init__(self, segment_id: np.ndarray, road_class: np.ndarray, maxspeed_kph: np.ndarray):
        classes = np.asarray(road_class, dtype=object)
        default = np.array([CLASS_FREE_FLOW_KPH.get(c, CLASS_FREE_FLOW_KPH["unknown"]) for c in classes])
        ms = np.asarray(maxspeed_kph, dtype=np.float64)
        ff = np.where(np.isfinite(ms) & (ms > 0), ms * MAXSPEED_FREE_FLOW_SHARE, default)
        # deterministic per-segment variation: free flow x [0.85, 1.10], rush depth x [0.7, 1.3]
        self.free_flow_kph = ff * (0.85 + 0.25 * unit_hash(segment_id, 1))
        depth = np.array([CLASS_RUSH_DEPTH.get(c, CLASS_RUSH_DEPTH["unknown"]) for c in classes])
        self.depth = np.minimum(0.8, depth * (0.7 + 0.6 * unit_hash(segment_id, 2)))
        self.route_bias = np.array([CLASS_ROUTE_BIAS.get(c, 1.0) for c in classes])
        self.profile = bucket_profile()

    def speed_kph(self, seg_idx: np.ndarray, bucket: np.ndarray) -> np.ndarray:
        """Model speed (km/h) of segments (row indices) in local time-of-week buckets; no vehicle noise."""
        return self.free_flow_kph[seg_idx] * (1.0 - self.depth[seg_idx] * self.profile[bucket])
