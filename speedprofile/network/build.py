"""`speedprofile network build`: OSM PBF or node/arc lists -> `road_segments` (stage build_network).

Writes the whole table (one Parquet file per H3 partition), `_partitions.json`, and row accounting to
`_metrics/build_network/dt=all/all.json`.
"""

from __future__ import annotations

import argparse
import os
import time

from schemas.road_segments import DEFAULT_H3_RES

STAGE = "build_network"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--osm", metavar="FILE.osm.pbf", help="OpenStreetMap extract (PBF)")
    src.add_argument("--nodes", metavar="FILE", help="node list: lon<TAB>lat per line, id = line number (gzip or plain)")
    parser.add_argument("--arcs", metavar="FILE", help="arc list: from<TAB>to per line, id = line number (with --nodes)")
    parser.add_argument("--h3-res", type=int, default=DEFAULT_H3_RES,
                        help="H3 resolution of the spatial partitions (default: %(default)s)")


def build(warehouse: str, osm: str | None = None, nodes: str | None = None, arcs: str | None = None,
          h3_res: int = DEFAULT_H3_RES) -> dict:
    """Build road_segments into the warehouse; returns the summary (segments, partitions, km, counts)."""
    from speedprofile import warehouse as wh
    from speedprofile.errors import UserError
    from speedprofile.network import graph

    if not 0 <= h3_res <= 15:
        raise UserError(f"--h3-res must be 0..15, got {h3_res}")
    t0 = time.perf_counter()
    if osm is not None:
        _check_file(osm, "OSM")
        if not _looks_like_pbf(osm):
            raise UserError(f"{osm} is not an OSM PBF file (expected an .osm.pbf extract)")
        from speedprofile.network.osm import read_osm_table

        table, counts = read_osm_table(osm, h3_res)
        source = f"osm:{os.path.basename(osm)}"
    else:
        if not arcs:
            raise UserError("--nodes needs --arcs FILE")
        _check_file(nodes, "nodes")
        _check_file(arcs, "arcs")
        assert nodes is not None
        table = graph.read_node_arc_table(nodes, arcs, h3_res)
        counts = {"arcs": table.num_rows, "segments": table.num_rows}
        source = f"graph:{os.path.basename(nodes)}"
    if table.num_rows == 0:
        raise UserError(f"no drivable road segments found in {osm or nodes}")
    meta = graph.write_road_segments(table, warehouse, h3_res, source)
    seconds = time.perf_counter() - t0
    km = sum(p["length_km"] for p in meta["partitions"])
    summary = {"segments": table.num_rows, "partitions": len(meta["partitions"]), "length_km": round(km, 3),
               "seconds": round(seconds, 3), "source": source, "h3_res": h3_res, "counts": counts}
    wh.write_local_json(wh.metrics_path(warehouse, STAGE, None, None), summary)
    return summary


def cli(args: argparse.Namespace) -> int:
    s = build(args.warehouse, osm=args.osm, nodes=args.nodes, arcs=args.arcs, h3_res=args.h3_res)
    print(f"road_segments: {s['segments']} segments in {s['partitions']} partitions (h3 res {s['h3_res']}), "
          f"{s['length_km']:.1f} km, from {s['source']} in {s['seconds']:.1f} s -> {args.warehouse}")
    return 0


def _check_file(path: str | None, what: str) -> None:
    from speedprofile.errors import UserError

    if not path:
        raise UserError(f"no {what} file given")
    if not os.path.exists(path):
        raise UserError(f"{what} file not found: {path}")
    if not os.path.isfile(path):
        raise UserError(f"{what} path is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} file is not readable: {path}")


def _looks_like_pbf(path: str) -> bool:
    """A PBF starts with a 4-byte big-endian header length followed by a BlobHeader whose type is 'OSMHeader'."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    return len(head) > 8 and b"OSMHeader" in head[4:32]
