"""Network build time: `network build` on the Porto, Baltimore and Liechtenstein OSM extracts and the largest
Kubicka graph, vs a bare pyosmium pass over the same file (ways with node locations, no processing) as baseline.

    .venv/bin/python benchmarks/network_build.py [--repeat 3]

Prints figures (best of --repeat, wall and CPU seconds, segments/s) and writes
benchmarks/results/network_build.json.
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

from speedprofile.network.build import build  # noqa: E402

DATA = Path(os.environ.get("SPEEDPROFILE_DATA", REPO.parent / "shared" / "data"))
OSM = {
    "porto": DATA / "osm_porto" / "porto.osm.pbf",
    "baltimore": DATA / "osm_baltimore" / "baltimore.osm.pbf",
    "liechtenstein": DATA / "osm_liechtenstein" / "liechtenstein-latest.osm.pbf",
}
KUBICKA = DATA / "kubicka2015" / "00000032"  # 124,540 nodes, 259,437 arcs: the largest developer graph


def _timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def _bare_osmium_pass(path: Path) -> int:
    """Baseline: stream the file with node locations and touch every highway way's node coordinates."""
    import osmium

    n = 0
    fp = (osmium.FileProcessor(str(path)).with_locations()
          .with_filter(osmium.filter.KeyFilter("highway").enable_for(osmium.osm.WAY))
          .with_filter(osmium.filter.EntityFilter(osmium.osm.WAY)))
    for w in fp:
        for nd in w.nodes:
            n += nd.location.valid()
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = [(name, {"osm": str(p)}, p) for name, p in OSM.items()]
        inputs.append(("kubicka_00000032", {"nodes": str(KUBICKA / "00000032.nodes.gz"),
                                            "arcs": str(KUBICKA / "00000032.arcs.gz")}, None))
        for name, kw, pbf in inputs:
            best = None
            for i in range(args.repeat):
                target = os.path.join(tmp, f"{name}-{i}")
                s, wall, cpu = _timed(lambda kw=kw, target=target: build(target, **kw))
                if best is None or wall < best[1]:
                    best = (s, wall, cpu)
            s, wall, cpu = best
            row = {"input": name, "segments": s["segments"], "partitions": s["partitions"],
                   "length_km": s["length_km"], "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                   "segments_per_s": round(s["segments"] / wall)}
            if pbf is not None:
                base = min((_timed(lambda pbf=pbf: _bare_osmium_pass(pbf)) for _ in range(args.repeat)),
                           key=lambda r: r[1])
                row["baseline_bare_osmium_wall_s"] = round(base[1], 3)
                row["build_vs_bare_read"] = round(wall / base[1], 2)
            rows.append(row)
            print(f"{name:18s} {row['segments']:>7d} segments {row['partitions']:>4d} partitions "
                  f"{row['wall_s']:7.2f} s wall {row['cpu_s']:7.2f} s cpu {row['segments_per_s']:>8d} seg/s"
                  + (f"  ({row['build_vs_bare_read']}x a bare pyosmium read)" if pbf is not None else ""))
    result = {"benchmark": "network_build", "repeat": args.repeat, "cores": os.cpu_count(),
              "python": platform.python_version(), "results": rows}
    out = REPO / "benchmarks" / "results" / "network_build.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
