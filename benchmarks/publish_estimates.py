"""Publish throughput: bulk COPY of speed_estimates into PostGIS vs per-row INSERTs, in one private cluster.

Network: a synthetic grid of N directed segments x 2016 buckets (default 1 000 -> 2 016 000 rows), written to a
temporary warehouse; published with `speedprofile.serve.publish.publish` (one transaction per partition). The
baseline is psycopg2 executemany INSERT (one statement per row) of a 20 000-row sample into the same table.

    .venv/bin/python benchmarks/publish_estimates.py [--segments 1000]

Prints figures and writes benchmarks/results/publish_estimates.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from speedprofile.serve.data import load_estimates  # noqa: E402
from speedprofile.serve.publish import ESTIMATE_COLUMNS, publish  # noqa: E402
from tests.plugins.serve import PrivateCluster, make_grid_warehouse, pg_bindir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=1000)
    ap.add_argument("--baseline-rows", type=int, default=20_000)
    args = ap.parse_args(argv)
    import psycopg2

    bindir = pg_bindir()
    if bindir is None:
        print("error: PostgreSQL server binaries not found (make setup installs them)", file=sys.stderr)
        return 1
    cluster = PrivateCluster(bindir)
    dsn = cluster.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            warehouse = str(make_grid_warehouse(Path(tmp) / "w", args.segments))
            t0 = time.perf_counter()
            (r,) = publish(warehouse, dsn)
            total_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            (r2,) = publish(warehouse, dsn)  # re-publish: DELETE + COPY of the same partition
            republish_s = time.perf_counter() - t0

            sample = load_estimates(warehouse).head(args.baseline_rows)
            sample = sample.assign(segment_id=sample["segment_id"] + 10**9)  # distinct keys in the same table
            cols = ", ".join(f'"{c}"' for c in ESTIMATE_COLUMNS)
            rows = [tuple(None if v != v else (v.item() if hasattr(v, "item") else v) for v in rec)
                    for rec in sample[list(ESTIMATE_COLUMNS)].itertuples(index=False)]
            conn = psycopg2.connect(dsn)
            with conn.cursor() as cur:
                t0 = time.perf_counter()
                cur.executemany(f"INSERT INTO speedprofile.speed_estimates ({cols}) VALUES "
                                f"({', '.join(['%s'] * len(ESTIMATE_COLUMNS))})", rows)
                conn.commit()
                insert_s = time.perf_counter() - t0
            conn.close()
    finally:
        cluster.stop()
    insert_rps = len(rows) / insert_s
    result = {
        "segments": r["segments_published"],
        "estimate_rows": r["rows_published"],
        "copy_rows_per_second": r["copy_rows_per_second"],
        "copy_estimates_seconds": r["copy_estimates_seconds"],
        "publish_partition_seconds": r["seconds"],
        "publish_total_seconds_incl_read": round(total_s, 3),
        "republish_seconds_incl_read": round(republish_s, 3),
        "republish_copy_rows_per_second": r2["copy_rows_per_second"],
        "baseline_insert_rows": len(rows),
        "baseline_insert_rows_per_second": round(insert_rps),
        "copy_vs_insert_ratio": round(r["copy_rows_per_second"] / insert_rps, 1),
        "postgres_bindir": str(bindir),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
    }
    for k, v in result.items():
        print(f"{k:36s} {v}")
    out = REPO / "benchmarks" / "results" / "publish_estimates.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
