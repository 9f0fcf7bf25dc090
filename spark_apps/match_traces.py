"""match_traces: probes (dt, partition) + road_segments -> segment_traversals, one row per trace piece's
traversal of a segment with interpolated enter/exit times and observed speed.

Row accounting per partition-day in `_metrics/match_traces/dt=D/partition=P.json`: traversals (rows_in =
rows_out + rejected per reason) and fixes of the pieces homed there (fixes_in = matched + unmatched per reason,
match_rate). Run: spark-submit spark_apps/match_traces.py --warehouse W --date D [--to-date D2] --partition A,B
"""

from __future__ import annotations

from schemas.segment_traversals import REJECT_REASONS
from speedprofile.jobargs import parse_job_args, run_app

STAGE = "match_traces"


def main(argv: list[str] | None = None) -> int:
    from speedprofile import tables
    from speedprofile.matching import transforms as T
    from speedprofile.matching.kernel import FIX_STATUSES
    from speedprofile.spark import get_session, read_table, write_metrics, write_table

    args = parse_job_args(argv, __doc__.splitlines()[0])
    spark = get_session(STAGE)
    cells = T.read_cells(args.partitions)
    probes = read_table(spark, args.warehouse, "probes", dates=args.dates, partitions=cells)
    network = T.network_broadcast(spark, args.warehouse, args.partitions)
    # tasks sized by the fixes read (the manifests' row counts), so a task's share stays bounded at any input size
    fixes = tables.count_rows(args.warehouse, "probes", dates=args.dates, partitions=cells)
    result = probes.transform(T.match_traces, network=network, partitions=args.partitions,
                              n_tasks=T.match_tasks(spark, fixes))
    try:
        # one action computes (and caches) the matching; the write then reads the cached result
        counts = T.result_counts(result)
        write_table(result.transform(T.traversal_rows), args.warehouse, "segment_traversals",
                    replace=[{"dt": d, "partition": p} for d in args.dates for p in args.partitions])
    finally:
        result.unpersist()
        network[1].destroy()
    for d in args.dates:
        for p in args.partitions:
            c = counts.get((str(d), p), {})
            trav = {k.removeprefix("traversals:"): v for k, v in c.items() if k.startswith("traversals:")}
            reasons = sorted({r for r in trav if r} | set(REJECT_REASONS))
            rejected = {r: trav.get(r, 0) for r in reasons}
            kept = trav.get("", 0)
            f = {k: v for k, v in c.items() if not k.startswith("traversals:")}
            fixes_in = f.get("fixes_in", 0)
            unmatched = {s: f.get(f"fixes_{s}", 0) for s in FIX_STATUSES if s != "matched"}
            if f.get("fixes_kernel_error"):
                unmatched["kernel_error"] = f["fixes_kernel_error"]
            write_metrics(spark, args.warehouse, STAGE, d, p, {
                "rows_in": kept + sum(rejected.values()),
                "rows_out": kept,
                "rejected": rejected,
                "fixes_in": fixes_in,
                "fixes_matched": f.get("fixes_matched", 0),
                "fixes_unmatched": unmatched,
                "context_fixes": f.get("context_fixes", 0),
                "match_rate": round(f.get("fixes_matched", 0) / fixes_in, 6) if fixes_in else 0.0,
                "pieces": f.get("pieces", 0),
                "pieces_broken": f.get("pieces_broken", 0),
                "breaks": {k.removeprefix("breaks_"): v for k, v in f.items() if k.startswith("breaks_")},
            })
    return 0


if __name__ == "__main__":
    run_app(main)
