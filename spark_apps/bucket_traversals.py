"""bucket_traversals: segment_traversals (dt, partition) -> bucketed_traversals, one row per complete, plausible
traversal tagged with the local 5-minute time-of-week bucket of its midpoint.

Rows that are not bucketed are counted per reason in `_metrics/bucket_traversals/dt=D/partition=P.json`
(rows_in = rows_out + sum of rejected). Run: spark-submit spark_apps/bucket_traversals.py --warehouse W --date D
[--to-date D2] --partition A,B
"""

from __future__ import annotations

from schemas.bucketed_traversals import REJECT_REASONS
from speedprofile.jobargs import parse_job_args, run_app

STAGE = "bucket_traversals"


def main(argv: list[str] | None = None) -> int:
    from speedprofile.aggregate import kernels as K
    from speedprofile.aggregate import transforms as T
    from speedprofile.spark import counted, get_session, read_table, write_metrics, write_table

    args = parse_job_args(argv, __doc__.splitlines()[0])
    spark = get_session(STAGE)
    traversals = read_table(spark, args.warehouse, "segment_traversals", dates=args.dates, partitions=args.partitions)
    segments = read_table(spark, args.warehouse, "road_segments", partitions=args.partitions)
    segments = segments.select("segment_id", "partition", "timezone")
    zones = [r[0] for r in segments.select("timezone").distinct().collect()]
    tagged = T.tag_rejects(traversals, segments, [z for z in zones if K.is_valid_timezone(z)])

    # rows per (dt, partition, reason) are counted while the write runs (one pass over the input)
    tagged, get_counts = counted(tagged, {"dt": args.dates, "partition": args.partitions,
                                          "reject_reason": [None, *REJECT_REASONS]}, STAGE)
    write_table(tagged.transform(T.bucket_rows), args.warehouse, "bucketed_traversals",
                replace=[{"dt": d, "partition": p} for d in args.dates for p in args.partitions])
    counts = {(str(d), p, r): n for (d, p, r), n in get_counts().items()}
    for d in args.dates:
        for p in args.partitions:
            rejected = {r: counts.get((str(d), p, r), 0) for r in REJECT_REASONS}
            kept = counts.get((str(d), p, None), 0)
            write_metrics(spark, args.warehouse, STAGE, d, p, {
                "rows_in": kept + sum(rejected.values()), "rows_out": kept, "rejected": rejected,
            })
    return 0


if __name__ == "__main__":
    run_app(main)
