"""Reference implementations (plain pandas, slow, obviously correct) that the tests hold the production kernels and
Spark transforms against: bucketing, histograms and their monoid merge, the one-segment estimator and the Spark
plan that runs it once per segment. Not used by the pipeline; benchmarks/estimate_speeds.py times them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from schemas.bucketed_traversals import N_BUCKETS
from schemas.segment_traversals import MAX_PLAUSIBLE_KPH, MIN_CONFIDENCE, MIN_PLAUSIBLE_KPH
from schemas.speed_estimates import MIN_TRACES
from schemas.speed_histograms import N_SPEED_BINS
from speedprofile.aggregate.kernels import (
    BUCKETS_PER_DAY,
    BUCKETS_PER_HOUR,
    FREE_FLOW_QUANTILE,
    HIST_BINS,
    HIST_SUMS,
    LEVELS,
    NEIGHBOUR_RADIUS,
    NIGHT_HOURS,
    OBSERVED_KERNEL,
    SOURCE_WEIGHT,
    Prior,
    bucket_instant,
    class_prior,
    confidence,
    confidence_rows,
    dense_counts,
    quantile_from_bins,
    sparse_bins,
    speed_bin,
    stats_rows,
    trim_outliers,
)


def bucket_frame(traversals: pd.DataFrame, timezone_of: dict[int, str]) -> pd.DataFrame:
    """Reference bucketing of complete, plausible traversals (pandas): adds midpoint/local time/bucket/day type.

    Rows failing the bucketing checks are dropped here; the Spark transform counts them per reason instead.
    """
    ok = traversals[
        traversals["is_complete"].fillna(False).astype(bool)
        & (traversals["duration_s"] > 0)
        & traversals["speed_kph"].between(MIN_PLAUSIBLE_KPH, MAX_PLAUSIBLE_KPH)
        & (traversals["confidence"] >= MIN_CONFIDENCE)
        & traversals["segment_id"].isin(list(timezone_of))
    ].copy()
    enter = pd.to_datetime(ok["enter_time_utc"], utc=True, format="ISO8601")
    exit_ = pd.to_datetime(ok["exit_time_utc"], utc=True, format="ISO8601")
    ok["midpoint_time_utc"] = (enter + (exit_ - enter) / 2).dt.floor("us")
    ok["timezone"] = ok["segment_id"].map(timezone_of)
    parts = [bucket_instant(m.to_pydatetime(), tz) for m, tz in zip(ok["midpoint_time_utc"], ok["timezone"], strict=True)]
    ok["local_time"] = [p["local_time"] for p in parts]
    ok["tow_bucket"] = [p["tow_bucket"] for p in parts]
    ok["day_type"] = [p["day_type"] for p in parts]
    return ok.reset_index(drop=True)


def histograms_of(traversals: pd.DataFrame, keys: tuple[str, ...] = ("segment_id", "tow_bucket")) -> pd.DataFrame:
    """Reference histogram rows per key from bucketed traversals: sparse bins, n_obs, distinct traces, sums."""
    df = traversals.assign(_bin=speed_bin(traversals["speed_kph"].to_numpy()))
    rows = []
    for key, g in df.groupby(list(keys), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        ids, counts = sparse_bins(np.bincount(g["_bin"].to_numpy(), minlength=N_SPEED_BINS))
        rows.append({
            **dict(zip(keys, key, strict=True)),
            "bin_ids": ids,
            "bin_counts": counts,
            "n_obs": len(g),
            "n_traces": int(g["trace_id"].nunique()),
            "sum_speed_kph": float(g["speed_kph"].sum()),
            "sum_duration_s": float(g["duration_s"].sum()),
            "sum_traversed_m": float(g["traversed_m"].sum()),
        })
    return pd.DataFrame(rows, columns=[*keys, *HIST_BINS, *HIST_SUMS])


def merge_histograms(*frames: pd.DataFrame, keys: tuple[str, ...] = ("segment_id", "tow_bucket")) -> pd.DataFrame:
    """Reference monoid merge: per key, counts of equal bins add up, and so does every count/sum column."""
    df = pd.concat(frames, ignore_index=True)
    rows = []
    for key, g in df.groupby(list(keys), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        ids, counts = sparse_bins(dense_counts(g["bin_ids"], g["bin_counts"]).sum(axis=0))
        rows.append({
            **dict(zip(keys, key, strict=True)),
            "bin_ids": ids,
            "bin_counts": counts,
            **{c: g[c].sum() for c in HIST_SUMS},
        })
    return pd.DataFrame(rows, columns=[*keys, *HIST_BINS, *HIST_SUMS])


def _dense(hist: pd.DataFrame) -> dict[str, np.ndarray]:
    """One segment's histogram rows as dense arrays over all 2016 buckets."""
    b = hist["tow_bucket"].to_numpy(dtype=np.int64)
    if ((b < 0) | (b >= N_BUCKETS)).any():
        raise ValueError("tow_bucket out of range")
    out: dict[str, np.ndarray] = {"counts": np.zeros((N_BUCKETS, N_SPEED_BINS), dtype=np.int64)}
    np.add.at(out["counts"], b, dense_counts(hist["bin_ids"], hist["bin_counts"]))
    for c in HIST_SUMS:
        out[c] = np.zeros(N_BUCKETS)
        np.add.at(out[c], b, hist[c].to_numpy(dtype=float))
    return out


_DAY_GROUPS = {"sunday": [0], "weekday": [1, 2, 3, 4, 5], "saturday": [6]}


def _pool_members() -> dict[str, np.ndarray]:
    """Per level, the buckets pooled for each bucket (rows padded with N_BUCKETS, an all-zero row)."""
    b = np.arange(N_BUCKETS)
    offsets = np.arange(-NEIGHBOUR_RADIUS, NEIGHBOUR_RADIUS + 1)
    day, hour = b // BUCKETS_PER_DAY, (b % BUCKETS_PER_DAY) // BUCKETS_PER_HOUR
    hd = np.full((N_BUCKETS, 5 * BUCKETS_PER_HOUR), N_BUCKETS, dtype=np.int64)
    for days in _DAY_GROUPS.values():
        for h in range(24):
            members = np.array([d * BUCKETS_PER_DAY + h * BUCKETS_PER_HOUR + i
                                for d in days for i in range(BUCKETS_PER_HOUR)])
            rows = np.isin(day, days) & (hour == h)
            hd[np.ix_(rows, np.arange(len(members)))] = members
    return {"observed": b[:, None], "neighbour_buckets": (b[:, None] + offsets[None, :]) % N_BUCKETS,
            "hour_daytype": hd, "segment_week": np.broadcast_to(b, (N_BUCKETS, N_BUCKETS))}


def _representatives() -> dict[str, np.ndarray]:
    b = np.arange(N_BUCKETS)
    day, hour = b // BUCKETS_PER_DAY, (b % BUCKETS_PER_DAY) // BUCKETS_PER_HOUR
    first_day = np.select([day == 0, day == 6], [0, 6], 1)  # sunday, saturday, weekday pools
    return {"observed": b, "neighbour_buckets": b,
            "hour_daytype": first_day * BUCKETS_PER_DAY + hour * BUCKETS_PER_HOUR,
            "segment_week": np.zeros(N_BUCKETS, dtype=np.int64)}


_MEMBERS = _pool_members()
_REPRESENTATIVE = _representatives()


def _kernel_window(ext: dict[str, np.ndarray], buckets: np.ndarray, kernel: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per bucket, the kernel-weighted sum of its window's histograms and sums (b-r..b+r, wrapping), with n_obs and
    n_traces the window's unweighted totals (under the keys "n_obs_window", "n_traces_window")."""
    r = len(kernel) // 2
    out = {k: sum(w * v[(buckets + o) % N_BUCKETS] for o, w in zip(range(-r, r + 1), kernel, strict=True))
           for k, v in ext.items()}
    for k in ("n_obs", "n_traces"):
        out[f"{k}_window"] = sum(ext[k][(buckets + o) % N_BUCKETS] for o in range(-r, r + 1))
    return out


def estimate_segment(hist: pd.DataFrame, prior: Prior, min_traces: int = MIN_TRACES,
                     kernel: tuple[int, ...] = OBSERVED_KERNEL) -> pd.DataFrame:
    """Reference estimator: all 2016 bucket estimates of one segment from its window histograms (rows: tow_bucket +
    HIST columns), each level pooled member by member (production: kernels.estimate_segments, blocks of segments).

    A bucket is 'observed' only when its own histogram has >= min_traces distinct traces; its statistics are then
    those of the `kernel`-weighted histograms of buckets b-r..b+r (wrapping), its n_obs/n_traces the window's
    totals. Otherwise the first level of the chain neighbour_buckets -> hour_daytype -> segment_week whose pooled
    histogram (sum of the member buckets' histograms) has >= min_traces traces is used, else the road-class prior.
    """
    d = _dense(hist)
    ext = {k: np.concatenate([v, np.zeros((1, *v.shape[1:]), dtype=v.dtype)]) for k, v in d.items()}
    night_mask = np.isin((np.arange(N_BUCKETS) % BUCKETS_PER_DAY) // BUCKETS_PER_HOUR, NIGHT_HOURS)
    if d["n_traces"][night_mask].sum() >= min_traces:
        free_flow = quantile_from_bins(trim_outliers(d["counts"][night_mask].sum(0)), FREE_FLOW_QUANTILE)
    else:
        free_flow = prior.free_flow

    cols = ("median", "p15", "p85", "mean", "harmonic_mean", "n_obs", "n_traces", "confidence")
    out = {c: np.full(N_BUCKETS, np.nan) for c in cols}
    source = np.full(N_BUCKETS, "road_class_prior", dtype=object)
    todo = np.ones(N_BUCKETS, dtype=bool)
    for name in LEVELS:
        members = _MEMBERS[name]
        n_traces = d["n_traces"].sum() if name == "segment_week" else ext["n_traces"][members].sum(axis=1)
        use = todo & (np.broadcast_to(n_traces, (N_BUCKETS,)) >= min_traces)
        if not use.any():
            continue
        idx = np.flatnonzero(use)
        # pooled levels repeat one histogram over many buckets: compute each distinct pool once
        reps, inverse = np.unique(_REPRESENTATIVE[name][idx], return_inverse=True)
        if name == "observed":
            pooled = _kernel_window(d, reps, kernel)
        else:
            pooled = {k: v[members[reps]].sum(axis=1) for k, v in ext.items()}
        st = stats_rows(pooled["counts"], *(pooled[c] for c in HIST_SUMS))
        if name == "observed":
            st["n_obs"], st["n_traces"] = (pooled[f"{c}_window"].astype(np.int64) for c in ("n_obs", "n_traces"))
        st["confidence"] = confidence_rows(np.full(len(reps), SOURCE_WEIGHT[name]), st["n_traces"], st["p15"],
                                           st["median"], st["p85"])
        for c in cols:
            out[c][idx] = st[c][inverse]
        source[idx] = name
        todo &= ~use
    prior_conf = confidence("road_class_prior", prior.n_traces, prior.p15, prior.speed, prior.p85)
    for c, v in zip(cols, (prior.speed, prior.p15, prior.p85, prior.mean, prior.harmonic_mean, prior.n_obs,
                           prior.n_traces, prior_conf), strict=True):
        out[c][todo] = v
    res = pd.DataFrame({
        "tow_bucket": np.arange(N_BUCKETS, dtype=np.int16), "speed_kph": out["median"], "p15_kph": out["p15"],
        "p85_kph": out["p85"], "mean_kph": out["mean"], "harmonic_mean_kph": out["harmonic_mean"],
        "n_obs": out["n_obs"].astype(np.int64), "n_traces": out["n_traces"].astype(np.int64),
        "confidence": out["confidence"], "source": source.astype(str),
    })
    res["free_flow_kph"] = float(free_flow)
    return res


def estimate_per_segment(hist, segments, priors: dict[tuple[str, str], Prior], window: str,
                         min_traces: int = MIN_TRACES):
    """Reference Spark plan: estimate_segment once per segment (groupBy().applyInPandas); production runs
    transforms.estimate (mapInArrow, blocks of segments)."""
    import math

    from schemas.speed_estimates import SPEED_ESTIMATES

    cls = segments.select("segment_id", "road_class")
    df = hist.join(cls, "segment_id", "left").fillna({"road_class": "unknown"})
    out_schema = SPEED_ESTIMATES.spark_schema()

    def per_segment(pdf: pd.DataFrame) -> pd.DataFrame:
        part, seg, rc = pdf["partition"].iloc[0], int(pdf["segment_id"].iloc[0]), pdf["road_class"].iloc[0]
        prior = priors.get((part, rc)) or class_prior(rc, None, min_traces)
        est = estimate_segment(pdf, prior, min_traces)
        est.insert(0, "segment_id", seg)
        est["tow_bucket_end"] = est["tow_bucket"] + 1  # one row per bucket: each a run of one
        est["window"] = window
        est["partition"] = part
        for c in ("p15_kph", "p85_kph", "mean_kph", "harmonic_mean_kph"):
            est[c] = est[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else v)
        return est[SPEED_ESTIMATES.names]

    return df.groupBy("partition", "segment_id").applyInPandas(per_segment, schema=out_schema)
