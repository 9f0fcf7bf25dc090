"""estimate_speeds kernel throughput: the per-segment reference kernel vs the vectorised block kernel, same input.

The reference is tests/reference_kernels.estimate_segment (one call per segment, as the applyInPandas plan ran it),
the production kernel kernels.estimate_segments (blocks of segments); both run in the same process.

Input: a synthetic partition's window histograms (segments with 50-600 observed buckets of 1-8 observations each,
10 % parked-car outliers). The per-segment kernel runs on the first --reference-segments segments only (it is
slow); segments/s are compared and both outputs are checked equal (floats to rtol 1e-9).
With --spark-segments N (default 300) the two Spark plans are also timed on the first N segments written as a
speed_histograms Parquet table: reference_kernels.estimate_per_segment (groupBy(segment).applyInPandas, one kernel
call per segment; the previous plan) vs transforms.estimate (mapInArrow, one vectorised call per block of segments).
Run: .venv/bin/python benchmarks/estimate_speeds.py [--segments 2000]  -> benchmarks/results/estimate_speeds.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from schemas.speed_histograms import N_SPEED_BINS  # noqa: E402
from speedprofile.aggregate import kernels as K  # noqa: E402
from tests import reference_kernels as R  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def make_histograms(n_segments: int, seed: int = 7) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    seg, bucket, counts, n_obs, n_tr, sums = [], [], [], [], [], []
    for s in range(n_segments):
        bs = rng.choice(2016, int(rng.integers(50, 600)), replace=False)
        for b in bs:
            n = int(rng.integers(1, 9))
            v = np.where(rng.random(n) < 0.1, rng.uniform(0.5, 3, n), rng.normal(40, 8, n).clip(5, 150))
            seg.append(s)
            bucket.append(int(b))
            counts.append(np.bincount(K.speed_bin(v), minlength=N_SPEED_BINS))
            n_obs.append(n)
            n_tr.append(int(rng.integers(1, n + 1)))
            sums.append((v.sum(), (360.0 / v).sum(), 100.0 * n))
    sums = np.asarray(sums)
    counts = np.stack(counts).astype(np.int64)
    hist = pd.DataFrame({"segment_id": seg, "tow_bucket": bucket, "n_obs": n_obs, "n_traces": n_tr,
                         "sum_speed_kph": sums[:, 0], "sum_duration_s": sums[:, 1], "sum_traversed_m": sums[:, 2]})
    sparse = [K.sparse_bins(c) for c in counts]
    hist["bin_ids"] = [np.asarray(i, dtype=np.int16) for i, _ in sparse]
    hist["bin_counts"] = [np.asarray(c, dtype=np.int64) for _, c in sparse]
    return hist, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=2000)
    ap.add_argument("--reference-segments", type=int, default=100)
    ap.add_argument("--spark-segments", type=int, default=300, help="0 skips the Spark plans")
    args = ap.parse_args()
    hist, counts = make_histograms(args.segments)
    priors = {s: K.Prior(speed=30.0, free_flow=30.0) for s in range(args.segments)}

    ref_hist = hist[hist["segment_id"] < args.reference_segments]
    t0 = time.perf_counter()
    ref = pd.concat([R.estimate_segment(g, priors[s]).assign(segment_id=s) for s, g in ref_hist.groupby("segment_id")],
                    ignore_index=True)
    t_ref = time.perf_counter() - t0

    t0 = time.perf_counter()
    got = K.estimate_segments(hist, priors, counts=counts)
    t_vec = time.perf_counter() - t0

    head = got[got["segment_id"] < args.reference_segments].reset_index(drop=True)
    ref = ref[head.columns]
    equal = all(np.allclose(head[c], ref[c], rtol=1e-9, atol=0, equal_nan=True) if head[c].dtype.kind == "f"
                else bool((head[c].to_numpy() == ref[c].to_numpy()).all()) for c in head.columns)
    report = {
        "segments": args.segments, "histogram_rows": len(hist), "reference_segments": args.reference_segments,
        "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "per_segment_kernel_s": round(t_ref, 3), "per_segment_segments_per_s": round(args.reference_segments / t_ref, 1),
        "per_segment_ms_per_segment": round(1000 * t_ref / args.reference_segments, 2),
        "vectorised_s": round(t_vec, 3), "vectorised_segments_per_s": round(args.segments / t_vec, 1),
        "vectorised_ms_per_segment": round(1000 * t_vec / args.segments, 2),
        "speedup": round((args.segments / t_vec) / (args.reference_segments / t_ref), 2),
        "outputs_equal": equal, "sources": got["source"].value_counts().to_dict(),
    }
    print(f"per-segment kernel: {report['per_segment_segments_per_s']} segments/s "
          f"({report['per_segment_ms_per_segment']} ms/segment, {args.reference_segments} segments)")
    print(f"vectorised kernel : {report['vectorised_segments_per_s']} segments/s "
          f"({report['vectorised_ms_per_segment']} ms/segment, {args.segments} segments)")
    print(f"speedup {report['speedup']}x, outputs equal: {equal}")
    if args.spark_segments:
        report["spark"] = spark_plans(hist[hist["segment_id"] < args.spark_segments], args.spark_segments)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "estimate_speeds.json").write_text(json.dumps(report, indent=2))


def spark_plans(hist: pd.DataFrame, n_segments: int) -> dict:
    """Wall time of both Spark plans (computed and discarded with the noop sink) on the same Parquet input."""
    import tempfile

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    from speedprofile.aggregate import transforms as T

    spark = (SparkSession.builder.master("local[2]").appName("bench-estimate")
             .config("spark.ui.enabled", "false").config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    path = tempfile.mkdtemp(prefix="bench-estimate-") + "/hist"
    pdf = hist.assign(partition="p", segment_id=hist["segment_id"].astype("int64"),
                      tow_bucket=hist["tow_bucket"].astype("int16"))
    spark.createDataFrame(pdf).write.parquet(path)
    h = spark.read.parquet(path)
    segs = spark.createDataFrame(pd.DataFrame({"segment_id": np.arange(n_segments, dtype=np.int64),
                                               "road_class": "residential"}))
    priors = {("p", "residential"): K.Prior(speed=30.0, free_flow=30.0)}
    out: dict = {"segments": n_segments}
    for name, fn in (("per_segment_applyInPandas", R.estimate_per_segment), ("vectorised_mapInArrow", T.estimate),
                     ("per_segment_applyInPandas_2", R.estimate_per_segment), ("vectorised_mapInArrow_2", T.estimate)):
        t0 = time.perf_counter()
        fn(h, segs, priors, "w1-x").write.format("noop").mode("overwrite").save()
        wall = time.perf_counter() - t0
        out[name] = {"wall_s": round(wall, 3), "segments_per_s": round(n_segments / wall, 1)}
        print(f"spark {name:30s} {wall:7.2f} s  {n_segments / wall:7.1f} segments/s")
    a = R.estimate_per_segment(h, segs, priors, "w1-x").drop("window")
    b = T.dense_estimates(T.estimate(h, segs, priors, "w1-x")).drop("window")
    out["rows_differing"] = a.select("segment_id", "tow_bucket", "source", "n_obs", "n_traces").exceptAll(
        b.select("segment_id", "tow_bucket", "source", "n_obs", "n_traces")).count()
    best = {k: min(out[k]["wall_s"], out[k + "_2"]["wall_s"]) for k in ("per_segment_applyInPandas",
                                                                          "vectorised_mapInArrow")}
    out["speedup_best_of_2"] = round(best["per_segment_applyInPandas"] / best["vectorised_mapInArrow"], 2)
    spark.stop()
    return out


if __name__ == "__main__":
    main()
