"""A small shuffle-heavy PySpark job for checking a cluster: generated integers -> Python map -> group-by -> Parquet.

Grain of the output: one row per key (0..keys-1) with exact integer aggregates, so local and cluster runs can be
compared for equality. `--sleep-ms` slows each map task down so a worker can be killed while a stage runs.

    spark-submit scripts/cluster_smoke_job.py --out DIR [--rows N] [--partitions P] [--keys K] [--sleep-ms MS]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator


def _scramble(sleep_ms: int):
    def f(batches: Iterator) -> Iterator:
        import pandas as pd

        for pdf in batches:
            time.sleep(sleep_ms / 1000.0)
            x = pdf["id"]
            yield pd.DataFrame({"id": x, "v": (x * 2654435761) % 1_000_003})

    return f


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=160_000)
    p.add_argument("--partitions", type=int, default=16)
    p.add_argument("--keys", type=int, default=997)
    p.add_argument("--sleep-ms", type=int, default=0)
    args = p.parse_args(argv)

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = SparkSession.builder.appName("cluster-smoke-job").getOrCreate()
    df = (
        spark.range(0, args.rows, numPartitions=args.partitions)
        .mapInPandas(_scramble(args.sleep_ms), "id long, v long")
        .withColumn("key", F.col("v") % args.keys)
    )
    out = (
        df.repartition(args.partitions, "id")  # a first full shuffle
        .groupBy("key")  # and a second one
        .agg(
            F.count("*").alias("n"),
            F.sum("v").alias("sum_v"),
            F.min("id").alias("min_id"),
            F.max("id").alias("max_id"),
        )
    )
    out.write.mode("overwrite").parquet(args.out)
    print(f"cluster-smoke-job: wrote {args.out}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
