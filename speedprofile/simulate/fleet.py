"""`speedprofile simulate`: a fleet driving the warehouse's road network -> raw probe CSV + truth Parquet.

Outputs under --out DIR (replaced on each run):
- `probes/probes-YYYY-MM-DD.csv`: one GPS fix per row (`trace_id,timestamp,lon,lat,speed_kph,heading_deg`,
  timestamps ISO-8601 UTC with `Z`), one file per simulated local day, written in chunks of vehicles;
- `truth/truth.parquet`: one row per (segment_id, tow_bucket) actually driven: the model speed (km/h) in that
  local 5-minute time-of-week bucket, without per-vehicle noise, and how many traversals drove it;
- `truth_paths/truth_paths-YYYY-MM-DD.parquet`: the driven path per trace (seq, segment_id, enter/exit UTC);
- `simulation.json`: parameters and counts.
Same seed and flags -> byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np

DEFAULT_START_DATE = "2026-11-02"  # a Monday; fixed so runs never depend on today's date
VEHICLE_CHUNK = 256  # vehicles simulated (and written) together; part of the seed stream, keep fixed
MAX_TRIPS_PER_DAY = 5
MIN_GAP_BETWEEN_TRIPS_S = 300
VEHICLE_FACTOR_SIGMA = 0.08  # log-normal spread of a driver's speed relative to the traffic model
TRIP_FACTOR_SIGMA = 0.03

# Relative weight of trip start per local hour, and trips per vehicle per day [lo, hi], by day type.
_HOURS = {
    "weekday": [0.3, 0.2, 0.15, 0.1, 0.15, 0.4, 1.2, 2.5, 3.0, 2.0, 1.5, 1.5,
                1.8, 1.6, 1.5, 1.8, 2.5, 3.0, 2.5, 1.8, 1.3, 1.0, 0.8, 0.5],
    "saturday": [0.5, 0.4, 0.3, 0.2, 0.15, 0.2, 0.4, 0.7, 1.2, 1.8, 2.2, 2.4,
                 2.4, 2.2, 2.1, 2.0, 2.0, 1.9, 1.8, 1.6, 1.4, 1.2, 1.0, 0.8],
    "sunday": [0.6, 0.5, 0.4, 0.3, 0.2, 0.2, 0.3, 0.5, 0.8, 1.2, 1.6, 1.8,
               1.9, 1.8, 1.7, 1.7, 1.8, 1.8, 1.7, 1.5, 1.3, 1.0, 0.8, 0.6],
}
_TRIPS = {"weekday": (3, 5), "saturday": (2, 4), "sunday": (1, 3)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=int, default=1, help="simulated days (default: %(default)s)")
    parser.add_argument("--vehicles", type=int, default=10, help="vehicles (default: %(default)s)")
    parser.add_argument("--interval-s", type=float, default=10.0, help="seconds between fixes (default: %(default)s)")
    parser.add_argument("--noise-m", type=float, default=5.0, help="GPS noise sigma per axis, metres (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--start-date", default=DEFAULT_START_DATE,
                        help="first simulated local day, YYYY-MM-DD (default: %(default)s, a Monday)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (probes/, truth/, truth_paths/)")


def cli(args: argparse.Namespace) -> int:
    s = simulate(args.warehouse, args.out, days=args.days, vehicles=args.vehicles, interval_s=args.interval_s,
                 noise_m=args.noise_m, seed=args.seed, start_date=args.start_date)
    print(f"simulate: {s['fixes']} fixes in {s['trips']} trips ({s['vehicles']} vehicles x {s['days']} days), "
          f"{s['truth_rows']} truth segment-buckets, {s['fixes_per_second']:.0f} fixes/s -> {args.out}")
    return 0


def _day_type(d: date) -> str:
    return {5: "saturday", 6: "sunday"}.get(d.weekday(), "weekday")


def simulate(warehouse: str, out: str, days: int, vehicles: int, interval_s: float = 10.0, noise_m: float = 5.0,
             seed: int = 0, start_date: str = DEFAULT_START_DATE) -> dict:
    """Simulate `vehicles` x `days` on the warehouse network; write probes, truth and truth paths under out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from schemas.bucketed_traversals import N_BUCKETS
    from speedprofile.errors import UserError
    from speedprofile.network.graph import load_road_segments_table
    from speedprofile.simulate.network import SimNetwork, UtcOffsets
    from speedprofile.simulate.trips import RouteTrees, drive, plan_routes, pool_size, sample_fixes

    if days < 1 or vehicles < 1:
        raise UserError("--days and --vehicles must be at least 1")
    if not interval_s > 0:
        raise UserError("--interval-s must be positive")
    if noise_m < 0:
        raise UserError("--noise-m must be >= 0")
    try:
        first_day = date.fromisoformat(start_date)
    except ValueError:
        raise UserError(f"--start-date must be YYYY-MM-DD, got {start_date!r}") from None
    t_start = time.perf_counter()
    net = SimNetwork(load_road_segments_table(warehouse))
    if len(net.core_nodes) < 2:
        raise UserError(f"the road network in {warehouse} has no connected part to drive on")
    zone = net.main_zone()
    from zoneinfo import ZoneInfo

    zi = ZoneInfo(zone) if zone in _zone_names() else ZoneInfo("UTC")
    day_list = [first_day + timedelta(days=i) for i in range(days)]
    midnights = [int(datetime(d.year, d.month, d.day, tzinfo=zi).timestamp()) for d in day_list]
    offsets = UtcOffsets(net.zones, midnights[0], midnights[-1] + 3 * 86400)
    whole = float(interval_s).is_integer()
    ts_unit = "s" if whole else "ms"

    for sub in ("probes", "truth", "truth_paths"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
        os.makedirs(os.path.join(out, sub))
    vehicle_factor = np.exp(np.random.default_rng([seed, 1]).normal(0.0, VEHICLE_FACTOR_SIGMA, vehicles))
    truth_keys = np.zeros(0, dtype=np.int64)
    truth_counts = np.zeros(0, dtype=np.int64)
    totals = {"fixes": 0, "fixes_dropped": 0, "trips": 0, "traversals": 0}

    for di, (day, midnight) in enumerate(zip(day_list, midnights, strict=True)):
        dtype_ = _day_type(day)
        weights = np.array(_HOURS[dtype_]) / sum(_HOURS[dtype_])
        lo_trips, hi_trips = _TRIPS[dtype_]
        csv_path = os.path.join(out, "probes", f"probes-{day.isoformat()}.csv")
        path_path = os.path.join(out, "truth_paths", f"truth_paths-{day.isoformat()}.parquet")
        pool_rng = np.random.default_rng([seed, 3, di])
        n_pool = pool_size(net, vehicles * (lo_trips + hi_trips) // 2)
        trees = RouteTrees(net, np.sort(pool_rng.choice(net.core_nodes, size=n_pool, replace=False)))
        with _DayWriter(csv_path, path_path) as writer:
            for v0 in range(0, vehicles, VEHICLE_CHUNK):
                v1 = min(vehicles, v0 + VEHICLE_CHUNK)
                rng = np.random.default_rng([seed, 2, di, v0])
                chunk = _simulate_chunk(net, trees, offsets, rng, np.arange(v0, v1), vehicle_factor[v0:v1], midnight,
                                        weights, lo_trips, hi_trips, interval_s, noise_m, day,
                                        drive, plan_routes, sample_fixes)
                if chunk is None:
                    continue
                probes, paths, keys = chunk
                writer.write(_format_probes(probes, ts_unit), paths)
                totals["fixes"] += probes.num_rows
                totals["fixes_dropped"] += int(probes.schema.metadata[b"dropped"])
                totals["trips"] += int(probes.schema.metadata[b"trips"])
                totals["traversals"] += paths.num_rows
                k, c = np.unique(keys, return_counts=True)
                truth_keys, truth_counts = _merge_counts(truth_keys, truth_counts, k, c)

    seg = truth_keys // N_BUCKETS
    bucket = (truth_keys % N_BUCKETS).astype(np.int16)
    order = np.lexsort((bucket, net.segment_id[seg]))
    truth = pa.table({
        "segment_id": pa.array(net.segment_id[seg][order], pa.int64()),
        "tow_bucket": pa.array(bucket[order], pa.int16()),
        "speed_kph": pa.array(np.round(net.model.speed_kph(seg, bucket)[order], 3), pa.float64()),
        "n_traversals": pa.array(truth_counts[order].astype(np.int32), pa.int32()),
    })
    pq.write_table(truth, os.path.join(out, "truth", "truth.parquet"), compression="zstd")
    seconds = time.perf_counter() - t_start
    summary = {
        "days": days, "vehicles": vehicles, "interval_s": interval_s, "noise_m": noise_m, "seed": seed,
        "start_date": first_day.isoformat(), "timezone": zone, "segments_in_network": int(net.n),
        **totals, "truth_rows": truth.num_rows,
    }
    with open(os.path.join(out, "simulation.json"), "w") as fh:
        json.dump(summary, fh, indent=2, sort_keys=True)
    return {**summary, "seconds": seconds, "fixes_per_second": totals["fixes"] / max(seconds, 1e-9)}


class _DayWriter:
    """One day's probe CSV (header without quotes, then appended chunks) and truth-path Parquet file."""

    def __init__(self, csv_path: str, paths_path: str):
        self.csv_path, self.paths_path = csv_path, paths_path
        self.csv_file: Any = None
        self.csv_writer: Any = None
        self.path_writer: Any = None

    def __enter__(self) -> _DayWriter:
        return self

    def write(self, probes_text, paths) -> None:
        import pyarrow.parquet as pq
        from pyarrow import csv as pacsv

        if self.csv_writer is None:
            self.csv_file = open(self.csv_path, "wb")
            self.csv_file.write((",".join(probes_text.schema.names) + "\n").encode())
            self.csv_writer = pacsv.CSVWriter(self.csv_file, probes_text.schema, write_options=pacsv.WriteOptions(
                include_header=False, quoting_style="none"))
            self.path_writer = pq.ParquetWriter(self.paths_path, paths.schema, compression="zstd")
        self.csv_writer.write_table(probes_text)
        self.path_writer.write_table(paths)

    def __exit__(self, *exc) -> None:
        for w in (self.csv_writer, self.csv_file, self.path_writer):
            if w is not None:
                w.close()


def _zone_names() -> set[str]:
    import zoneinfo

    return zoneinfo.available_timezones()


def _merge_counts(k1, c1, k2, c2):
    k = np.concatenate([k1, k2])
    c = np.concatenate([c1, c2])
    uk, inv = np.unique(k, return_inverse=True)
    return uk, np.bincount(inv, weights=c, minlength=len(uk)).astype(np.int64)


def _simulate_chunk(net, trees, offsets, rng, vehicle_ids, vfactor, midnight, weights, lo_trips, hi_trips,
                    interval_s, noise_m, day, drive, plan_routes, sample_fixes):
    """All trips of a chunk of vehicles on one day -> (probe rows, truth path rows, truth keys)."""
    import pyarrow as pa

    from schemas.bucketed_traversals import N_BUCKETS

    nv = len(vehicle_ids)
    n_trips = rng.integers(lo_trips, hi_trips + 1, size=nv)
    secs = rng.choice(24, p=weights, size=(nv, MAX_TRIPS_PER_DAY)) * 3600 + rng.integers(0, 3600, (nv, MAX_TRIPS_PER_DAY))
    secs = np.where(np.arange(MAX_TRIPS_PER_DAY)[None, :] < n_trips[:, None], secs, np.iinfo(np.int64).max)
    secs = np.sort(secs, axis=1)
    prev_end = np.full(nv, -np.inf)
    rounds = []
    for k in range(MAX_TRIPS_PER_DAY):
        act = np.flatnonzero(n_trips > k)
        if len(act) == 0:
            break
        wait = MIN_GAP_BETWEEN_TRIPS_S + rng.integers(0, 600, len(act))
        start = np.maximum(midnight + secs[act, k], np.ceil(prev_end[act]) + wait).astype(np.float64)
        routes = plan_routes(net, trees, rng, len(act))
        factor = vfactor[act] * np.exp(rng.normal(0.0, TRIP_FACTOR_SIGMA, len(act)))
        trav = drive(net, offsets, routes, start, factor)
        fixes = sample_fixes(net, trav, len(act), start, interval_s, noise_m, rng)
        counts = np.bincount(trav.trip, minlength=len(act))
        ends = np.where(counts > 0, trav.exit_s[np.clip(np.cumsum(counts) - 1, 0, None)], start)
        prev_end[act] = ends
        rounds.append((act, k, trav, fixes, counts))

    trace_ids, fix_cols, path_cols, keys, dropped, trips = [], [], [], [], 0, 0
    gid_of = []
    for act, k, trav, fixes, counts in rounds:
        gids = act * MAX_TRIPS_PER_DAY + k  # output order: vehicle, then trip of the day
        gid_of.append(gids)
        names = [f"sim-{day:%Y%m%d}-v{int(vehicle_ids[a]):05d}-t{k}" for a in act]
        trace_ids.append(np.array(names, dtype=object))
        fix_cols.append((gids[fixes.trip], fixes))
        path_cols.append((gids[trav.trip], trav))
        keys.append(trav.seg.astype(np.int64) * N_BUCKETS + trav.bucket)
        dropped += fixes.dropped
        trips += int((counts > 0).sum())
    if not rounds:
        return None
    all_gids = np.concatenate(gid_of)
    names = np.concatenate(trace_ids)
    name_of_gid = dict(zip(all_gids.tolist(), names.tolist(), strict=True))
    gid_sorted = np.sort(all_gids)
    name_sorted = np.array([name_of_gid[g] for g in gid_sorted.tolist()], dtype=object)

    fg = np.concatenate([g for g, _ in fix_cols])
    ft = np.concatenate([f.t_s for _, f in fix_cols])
    order = np.lexsort((ft, fg))
    pick = np.searchsorted(gid_sorted, fg[order])

    def cat(attr):
        return np.concatenate([getattr(f, attr) for _, f in fix_cols])[order]

    probes = pa.table({
        "trace_id": pa.array(name_sorted[pick], pa.string()),
        "timestamp": pa.array(ft[order], pa.float64()),
        "lon": pa.array(np.round(cat("lon"), 6)),
        "lat": pa.array(np.round(cat("lat"), 6)),
        "speed_kph": pa.array(np.round(cat("speed_kph"), 1)),
        "heading_deg": pa.array(np.round(cat("heading_deg"), 1)),
    }).replace_schema_metadata({"dropped": str(dropped), "trips": str(trips)})

    pg = np.concatenate([g for g, _ in path_cols])
    enter = np.concatenate([t.enter_s for _, t in path_cols])
    porder = np.lexsort((enter, pg))
    pg = pg[porder]
    first = np.concatenate([[True], pg[1:] != pg[:-1]])
    run_start = np.maximum.accumulate(np.where(first, np.arange(len(pg)), 0))
    seg = np.concatenate([t.seg for _, t in path_cols])[porder]
    exit_ = np.concatenate([t.exit_s for _, t in path_cols])[porder]
    paths = pa.table({
        "trace_id": pa.array(name_sorted[np.searchsorted(gid_sorted, pg)], pa.string()),
        "seq": pa.array((np.arange(len(pg)) - run_start).astype(np.int32)),
        "segment_id": pa.array(net.segment_id[seg], pa.int64()),
        "enter_time_utc": pa.array(np.round(enter[porder] * 1e6).astype(np.int64).astype("datetime64[us]"), pa.timestamp("us", tz="UTC")),
        "exit_time_utc": pa.array(np.round(exit_ * 1e6).astype(np.int64).astype("datetime64[us]"), pa.timestamp("us", tz="UTC")),
    })
    return probes, paths, np.concatenate(keys)


def _format_probes(probes, ts_unit: str):
    """Float epoch seconds -> ISO-8601 UTC strings (`2026-11-02T08:00:10Z`, `.mmm` when ts_unit is "ms")."""
    t = probes.column("timestamp").to_numpy()
    text = iso_utc(np.round(t * 1000).astype(np.int64), with_ms=ts_unit == "ms")
    return probes.set_column(1, "timestamp", text).replace_schema_metadata(None)


def iso_utc(epoch_ms: np.ndarray, with_ms: bool = False):
    """Epoch milliseconds -> pyarrow string array `YYYY-MM-DDTHH:MM:SS[.mmm]Z`, built as fixed-width ASCII."""
    import pyarrow as pa

    ms = np.asarray(epoch_ms, dtype=np.int64)
    sec = np.floor_divide(ms, 1000)
    days = np.floor_divide(sec, 86400)
    d = days.astype("datetime64[D]")
    year = d.astype("datetime64[Y]").astype(np.int64) + 1970
    month = (d.astype("datetime64[M]") - d.astype("datetime64[Y]")).astype(np.int64) + 1
    day = (d - d.astype("datetime64[M]")).astype(np.int64) + 1
    sod = sec - days * 86400
    fields: list[Any] = [(year, 4), b"-", (month, 2), b"-", (day, 2), b"T", (sod // 3600, 2), b":", (sod % 3600 // 60, 2),
              b":", (sod % 60, 2)]
    if with_ms:
        fields += [b".", (ms - sec * 1000, 3)]
    fields.append(b"Z")
    width = sum(1 if isinstance(f, bytes) else f[1] for f in fields)
    buf = np.empty((len(ms), width), dtype=np.uint8)
    col = 0
    for f in fields:
        if isinstance(f, bytes):
            buf[:, col] = f[0]
            col += 1
            continue
        value, digits = f
        for k in range(digits):
            buf[:, col + digits - 1 - k] = 48 + (value // 10**k) % 10
        col += digits
    offsets = np.arange(len(ms) + 1, dtype=np.int32) * width
    return pa.StringArray.from_buffers(len(ms), pa.py_buffer(offsets), pa.py_buffer(buf.tobytes()))
