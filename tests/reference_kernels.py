"""Reference implementations (plain pandas, slow, obviously correct) that the tests hold the production kernels and
Spark transforms against: bucketing, histograms and their monoid merge. Not used by the pipeline."""

from __future__ import annotations

import numpy as np
import pandas as pd

from schemas.segment_traversals import MAX_PLAUSIBLE_KPH, MIN_CONFIDENCE, MIN_PLAUSIBLE_KPH
from schemas.speed_histograms import N_SPEED_BINS
from speedprofile.aggregate.kernels import (
    HIST_BINS,
    HIST_SUMS,
    bucket_instant,
    dense_counts,
    sparse_bins,
    speed_bin,
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
