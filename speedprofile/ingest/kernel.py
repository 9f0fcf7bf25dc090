"""Pure pandas ingest kernel: record parsing and validation, per-trace cleaning and border cutting (no pyspark).

Grain: one input record (a CSV/JSONL line, a Parquet row, a GPX trkpt, a trips-json element) in; one `probes`
row per owned or context fix and one `rejected_probes` row per bad record out. Times are UTC instants;
coordinates WGS84 degrees; speeds km/h.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from schemas.probes import CONTEXT_FIXES, MAX_GAP_S
from schemas.rejected_probes import REASONS, SPIKE_KPH

# Earliest / latest plausible fix time, UTC, half-open [lo, hi).
MIN_TIME_UTC = pd.Timestamp("2000-01-01", tz="UTC")
MAX_TIME_UTC = pd.Timestamp("2100-01-01", tz="UTC")
# Epoch numbers below this are seconds, at or above it milliseconds (1e11 s is year 5138; 1e11 ms is 1973).
EPOCH_MS_THRESHOLD = 1e11
RAW_MAX_CHARS = 500
EARTH_RADIUS_M = 6_371_008.8

REQUIRED_FIELDS = ("trace_id", "timestamp", "lon", "lat")
OPTIONAL_FIELDS = ("speed_kph", "heading_deg", "accuracy_m")
RECORD_COLUMNS = (
    "source_file", "source_row", "raw", "trace_id", "timestamp", "lon", "lat",
    *OPTIONAL_FIELDS, "prematched_segment_id", "reason", "detail",
)
# One validated record (output of parsing, input of the per-trace kernel); reason set = rejected at parse time.
PARSED_COLUMNS = (
    "source_file", "source_row", "raw", "trace_id", "timestamp_utc", "lon_deg", "lat_deg",
    *OPTIONAL_FIELDS, "prematched_segment_id", "reason", "detail",
)
# Output of the per-trace kernel: probes columns plus reason/detail/raw (reason null = a probe).
TRACE_OUT_COLUMNS = (
    "trace_id", "piece", "timestamp_utc", "lon_deg", "lat_deg", *OPTIONAL_FIELDS, "prematched_segment_id",
    "is_context", "source_file", "source_row", "dt", "partition", "raw", "reason", "detail",
)
_OFFSET_RE = re.compile(r"(?:[Zz]|[+-]\d\d(?::?\d\d)?)$")
_FLOAT_COLS = ("lon_deg", "lat_deg", *OPTIONAL_FIELDS)


def truncate_raw(text: object) -> str | None:
    """The raw record as stored in rejected_probes (at most RAW_MAX_CHARS characters)."""
    if text is None:
        return None
    s = str(text)
    return s if len(s) <= RAW_MAX_CHARS else s[:RAW_MAX_CHARS]


def empty_records() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in RECORD_COLUMNS})


def records_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """A record frame (RECORD_COLUMNS, object dtype) from dicts; absent keys become None."""
    df = pd.DataFrame(list(rows), columns=list(RECORD_COLUMNS), dtype="object")
    return df if len(df) else empty_records()


def parse_csv_lines(lines: list[str], header: list[str], source_file: str, source_rows: list[int]) -> pd.DataFrame:
    """CSV data lines of one file -> record frame; a line with the wrong field count is `unparsable_line`."""
    index = {name.strip(): i for i, name in enumerate(header)}
    width = len(header)
    fields = [ln.split(",") if '"' not in ln else _csv_one(ln) for ln in lines]
    reason: list[str | None] = [None] * len(lines)
    detail: list[str | None] = [None] * len(lines)
    for i, (ln, f) in enumerate(zip(lines, fields, strict=True)):
        if f is not None and len(f) == width and ln.strip():
            continue
        reason[i] = "unparsable_line"
        detail[i] = "blank line" if not ln.strip() else f"{'?' if f is None else len(f)} fields, header has {width}"
        fields[i] = None
    if not lines:
        return empty_records()
    cols: dict[str, list] = {
        "source_file": [source_file] * len(lines), "source_row": list(source_rows), "raw": list(lines),
    }
    for name in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS):
        i = index.get(name)
        cols[name] = [None] * len(lines) if i is None else [f[i] if f is not None else None for f in fields]
    cols["prematched_segment_id"] = [None] * len(lines)
    cols["reason"] = reason
    cols["detail"] = detail
    return pd.DataFrame(cols, columns=list(RECORD_COLUMNS), dtype="object")


def _csv_one(line: str) -> list[str] | None:
    try:
        parsed = list(csv.reader([line], strict=True))
    except csv.Error:
        return None
    return parsed[0] if parsed else []


def parse_jsonl_lines(lines: list[str], source_file: str, source_rows: list[int]) -> pd.DataFrame:
    """JSONL lines of one file -> record frame; anything but a JSON object per line is `unparsable_line`."""
    rows = []
    for row_no, line in zip(source_rows, lines, strict=True):
        rec: dict = {"source_file": source_file, "source_row": row_no, "raw": line}
        if not line.strip():
            rec.update(reason="unparsable_line", detail="blank line")
            rows.append(rec)
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            rec.update(reason="unparsable_line", detail=f"invalid JSON: {exc.msg}")
            rows.append(rec)
            continue
        if not isinstance(obj, dict):
            rec.update(reason="unparsable_line", detail=f"JSON {type(obj).__name__}, not an object")
        else:
            for name in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS):
                rec[name] = obj.get(name)
        rows.append(rec)
    return records_frame(rows)


def parse_timestamps(values: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Timestamps -> (UTC instants, reason or None, detail or None).

    Accepts ISO-8601 strings with a UTC offset (or Z), epoch seconds and epoch milliseconds (numbers or numeric
    strings; below EPOCH_MS_THRESHOLD = seconds), and datetime values (naive ones are taken as UTC).
    """
    n = len(values)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    reason = pd.Series([None] * n, index=values.index, dtype="object")
    detail = pd.Series([None] * n, index=values.index, dtype="object")
    if n == 0:
        return out, reason, detail
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        ts = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        out[:] = ts.astype("datetime64[us, UTC]")
    else:
        obj = values.astype("object")
        kind = pd.api.types.infer_dtype(obj, skipna=True)
        plain = kind in ("string", "integer", "floating", "mixed-integer-float", "empty", "decimal")
        if plain:
            is_dt = pd.Series(False, index=obj.index)
        else:
            is_dt = obj.map(lambda v: isinstance(v, pd.Timestamp | np.datetime64) or hasattr(v, "isoformat"))
        if is_dt.any():
            conv = pd.to_datetime(obj[is_dt], utc=True, errors="coerce")
            out[is_dt] = conv.astype("datetime64[us, UTC]")
        rest = obj[~is_dt]
        if not plain:
            rest = rest.where([not isinstance(v, bool | np.bool_) for v in rest], None)
        num = pd.to_numeric(rest, errors="coerce")
        numeric = num.notna() & np.isfinite(num.astype("float64"))
        if numeric.any():
            nv = num[numeric].astype("float64")
            secs = np.where(np.abs(nv) < EPOCH_MS_THRESHOLD, nv, nv / 1000.0)
            secs = pd.Series(secs, index=nv.index)
            ok = (secs >= MIN_TIME_UTC.timestamp()) & (secs < MAX_TIME_UTC.timestamp())
            out[ok[ok].index] = pd.to_datetime((secs[ok] * 1e6).round().astype("int64"), unit="us", utc=True)
            bad = ok[~ok].index
            reason[bad] = "implausible_time"
            detail[bad] = [f"epoch {v!r} is outside [2000, 2100)" for v in nv[bad]]
        strs = rest[~numeric]
        if len(strs):
            if kind == "string":
                text = strs.str.strip()
            else:
                text = strs.map(lambda v: None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))
                                else str(v).strip())
            missing = text.isna() | (text == "")
            reason[missing[missing].index] = "missing_field"
            detail[missing[missing].index] = "timestamp is empty"
            text = text[~missing]
            has_off = text.str.contains(_OFFSET_RE).fillna(False).astype(bool)
            conv = pd.to_datetime(text.where(has_off), format="ISO8601", utc=True, errors="coerce")
            good = conv.notna()
            out[good[good].index] = conv[good].astype("datetime64[us, UTC]")
            bad = good[~good].index
            reason[bad] = "unparsable_time"
            detail[bad] = [
                f"timestamp {s!r} is not ISO-8601 with a UTC offset nor epoch s/ms"
                if not off else f"timestamp {s!r} is not valid ISO-8601"
                for s, off in zip(text[bad], has_off[bad], strict=True)
            ]
    # Plausibility of parsed instants (ISO strings and datetime values).
    parsed = out.notna()
    implausible = parsed & ((out < MIN_TIME_UTC) | (out >= MAX_TIME_UTC))
    if implausible.any():
        idx = implausible[implausible].index
        reason[idx] = "implausible_time"
        detail[idx] = [f"time {t.isoformat()} is outside [2000, 2100)" for t in out[idx]]
        out[idx] = pd.NaT
    still = out.isna() & reason.isna()
    if still.any():
        reason[still] = "unparsable_time"
        detail[still] = [f"timestamp {v!r} is not a time" for v in values[still]]
    return out, reason, detail


def _is_missing(values: pd.Series) -> pd.Series:
    """None / NA / blank string = missing; a float NaN is a value (reported as not finite, not as missing)."""
    na = values.isna()
    if na.any():
        na[na] = [not isinstance(v, float) for v in values[na]]
    blank = _strings(values).str.strip().eq("").fillna(False).astype(bool)
    return na | blank


def _strings(values: pd.Series) -> pd.Series:
    """The string entries of values (others NaN), without per-element Python calls when all are strings."""
    if values.dtype != object:
        return pd.Series(np.nan, index=values.index, dtype="object")
    kind = pd.api.types.infer_dtype(values, skipna=True)
    if kind in ("string", "empty"):
        return values
    return values.where([isinstance(v, str) for v in values], np.nan)


def _to_float(values: pd.Series) -> pd.Series:
    obj = values.astype("object")
    kind = pd.api.types.infer_dtype(obj, skipna=True)
    if kind == "boolean" or kind == "mixed":
        obj = obj.where([not isinstance(v, bool | np.bool_) for v in obj], None)
    out = pd.to_numeric(obj, errors="coerce").astype("float64")
    retry = out.isna() & _strings(obj).notna()
    if retry.any():  # e.g. " 41.15 " with blanks around the number
        out[retry] = pd.to_numeric(obj[retry].str.strip(), errors="coerce").astype("float64")
    return out


def validate_records(rec: pd.DataFrame, max_time_utc: pd.Timestamp | None = None) -> pd.DataFrame:
    """Record frame -> parsed frame (PARSED_COLUMNS): typed values, and reason/detail for every bad record.

    Checks in order (first failure wins): unparsable_line (set by the parser), missing_field, empty_trace_id,
    nan_coordinate, coordinate_out_of_range, unparsable_time / implausible_time, future_time (later than
    `max_time_utc`, when given). lon/lat may be absent only when prematched_segment_id is set (trips-json without
    coordinates; filled from road_segments later).
    """
    rec = rec.reset_index(drop=True)
    n = len(rec)
    reason = rec["reason"].astype("object").copy()
    detail = rec["detail"].astype("object").copy()

    def flag(mask: pd.Series, why: str, text: Iterable[str] | str) -> None:
        m = mask & reason.isna()
        if not m.any():
            return
        reason[m] = why
        if isinstance(text, str):
            detail[m] = text
        else:
            detail[m] = list(pd.Series(list(text), index=mask.index)[m])

    prematched = pd.to_numeric(rec["prematched_segment_id"], errors="coerce")
    has_link = prematched.notna()
    tid = rec["trace_id"].astype("object")
    tid_missing = tid.isna()
    lon_missing = _is_missing(rec["lon"].astype("object"))
    lat_missing = _is_missing(rec["lat"].astype("object"))
    ts_missing = _is_missing(rec["timestamp"].astype("object"))
    for name, m, allow_link in (
        ("trace_id", tid_missing, False), ("timestamp", ts_missing, False),
        ("lon", lon_missing, True), ("lat", lat_missing, True),
    ):
        flag(m & ~(has_link & allow_link), "missing_field", f"{name} is missing")
    trace_str = tid.where(tid_missing, tid.astype(str)).str.strip().where(~tid_missing, None)
    flag(trace_str.fillna("x").eq(""), "empty_trace_id", "trace_id is blank")

    lon = _to_float(rec["lon"])
    lat = _to_float(rec["lat"])
    coords_given = ~(lon_missing & lat_missing & has_link)
    bad_num = coords_given & (~np.isfinite(lon.fillna(np.nan)) | ~np.isfinite(lat.fillna(np.nan)))
    flag(bad_num, "nan_coordinate", (f"lon={a!r} lat={b!r} not finite numbers" for a, b in zip(rec["lon"], rec["lat"], strict=True)))
    out_range = coords_given & ((lat.abs() > 90) | (lon.abs() > 180) | ((lat == 0) & (lon == 0)))
    flag(out_range, "coordinate_out_of_range", (f"lon={a} lat={b}" for a, b in zip(lon, lat, strict=True)))

    ts, t_reason, t_detail = parse_timestamps(rec["timestamp"])
    t_bad = t_reason.notna()
    flag(t_bad & (t_reason == "unparsable_time"), "unparsable_time", t_detail.fillna(""))
    flag(t_bad & (t_reason == "implausible_time"), "implausible_time", t_detail.fillna(""))
    flag(t_bad & (t_reason == "missing_field"), "missing_field", "timestamp is missing")
    if max_time_utc is not None:
        limit = pd.Timestamp(max_time_utc).tz_convert("UTC") if pd.Timestamp(max_time_utc).tzinfo else \
            pd.Timestamp(max_time_utc, tz="UTC")
        late = (ts > limit).fillna(False).astype(bool)
        flag(late, "future_time", (future_detail(t, limit) for t in ts))

    out = pd.DataFrame({
        "source_file": rec["source_file"].astype("object"),
        "source_row": pd.to_numeric(rec["source_row"]).astype("int64"),
        "raw": rec["raw"].map(truncate_raw).astype("object"),
        "trace_id": trace_str.astype("object"),
        "timestamp_utc": ts,
        "lon_deg": lon.where(coords_given),
        "lat_deg": lat.where(coords_given),
    })
    for c in OPTIONAL_FIELDS:
        v = _to_float(rec[c])
        out[c] = v.where(np.isfinite(v.fillna(np.nan)))
    out["prematched_segment_id"] = prematched.astype("Int64")
    out["reason"] = reason
    out["detail"] = detail
    assert set(out["reason"].dropna()) <= set(REASONS), set(out["reason"].dropna())
    assert len(out) == n
    return out


def future_detail(t: object, limit: pd.Timestamp) -> str:
    """Detail of a future_time reject (same text in the Spark SQL check)."""
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    shown = pd.Timestamp(t).strftime(fmt) if t is not None and not pd.isna(t) else "?"
    return f"time {shown} is later than {limit.strftime(fmt)} (run clock + allowed skew)"


def epoch_seconds(ts: pd.Series) -> np.ndarray:
    """UTC instants (any datetime64 unit) -> float seconds since 1970-01-01."""
    return ((pd.to_datetime(ts, utc=True) - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy("float64")


def haversine_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle distance in metres (arrays of WGS84 degrees)."""
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(a, dtype="float64")) for a in (lon1, lat1, lon2, lat2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def _spike_candidates(t_s: np.ndarray, lon: np.ndarray, lat: np.ndarray, spike_kph: float) -> tuple[np.ndarray, np.ndarray]:
    n = len(t_s)
    mask = np.zeros(n, dtype=bool)
    score = np.zeros(n)
    if n < 3:
        return mask, score
    d = haversine_m(lon[:-1], lat[:-1], lon[1:], lat[1:])
    v = d / np.maximum(np.diff(t_s), 1e-9) * 3.6
    skip = haversine_m(lon[:-2], lat[:-2], lon[2:], lat[2:]) / np.maximum(t_s[2:] - t_s[:-2], 1e-9) * 3.6
    mask[1:-1] = (v[:-1] > spike_kph) & (v[1:] > spike_kph) & (skip <= spike_kph)
    score[1:-1] = np.minimum(v[:-1], v[1:])
    return mask, score


def spike_mask(t_s: np.ndarray, lon: np.ndarray, lat: np.ndarray, spike_kph: float = SPIKE_KPH) -> np.ndarray:
    """Isolated spikes: fix i implies > spike_kph from i-1 and to i+1, while i-1 -> i+1 stays plausible.

    Input is one trace sorted by strictly increasing time (seconds); first and last fixes are never spikes.
    When adjacent fixes both qualify, only the stronger (earlier on a tie) is a spike; the test is then repeated
    on the remaining fixes until no spike is left.
    """
    n = len(t_s)
    out = np.zeros(n, dtype=bool)
    alive = np.arange(n)
    while len(alive) >= 3:
        mask, score = _spike_candidates(t_s[alive], lon[alive], lat[alive], spike_kph)
        if not mask.any():
            break
        chosen = np.zeros(len(alive), dtype=bool)
        i = 0
        while i < len(alive):
            if not mask[i]:
                i += 1
                continue
            j = i
            while j + 1 < len(alive) and mask[j + 1]:
                j += 1
            chosen[i + int(np.argmax(score[i: j + 1]))] = True
            i = j + 1
        out[alive[chosen]] = True
        alive = alive[~chosen]
    return out


def process_trace(
    fixes: pd.DataFrame,
    h3_res: int,
    *,
    max_gap_s: float = MAX_GAP_S,
    context_fixes: int = CONTEXT_FIXES,
    spike_kph: float = SPIKE_KPH,
) -> pd.DataFrame:
    """One trace's valid parsed fixes -> TRACE_OUT rows: owned + context probes, and duplicate/spike rejects.

    Sorted by (time, source_file, source_row); exact duplicates and same-time/other-position fixes are
    rejected (the first by source order is kept), then isolated spikes, then the rest is cut into pieces
    (a new piece where a fix's cell leaves the ring-1 of the piece's home cell, or after a gap > max_gap_s)
    stored in their home cell with up to `context_fixes` context fixes across spatial cuts.
    dt = UTC date of each piece's first owned fix; rejected rows get the UTC date of their own fix.
    """
    import pyarrow as pa

    ts = pd.to_datetime(fixes["timestamp_utc"], utc=True).astype("datetime64[us, UTC]")
    order = np.lexsort((fixes["source_row"].to_numpy().astype("int64"), fixes["source_file"].astype(str).to_numpy(),
                        np.asarray(ts.array.asi8, dtype="int64")))
    frame = fixes.assign(timestamp_utc=ts).iloc[order]
    cols = {c: frame[c] if c in frame.columns else None for c in PARSED_COLUMNS}
    frame = pd.DataFrame({c: (v if v is not None else pd.Series([None] * len(frame), index=frame.index, dtype="object"))
                          for c, v in cols.items()})
    frame["reason"] = None  # only valid fixes come here
    table = pa.Table.from_pandas(frame.reset_index(drop=True), schema=parsed_arrow_schema(), preserve_index=False)
    out = trace_rows_arrow(table, h3_res, max_gap_s=max_gap_s, context_fixes=context_fixes, spike_kph=spike_kph)
    return conform_trace_out(out.to_pandas())


def conform_trace_out(df: pd.DataFrame) -> pd.DataFrame:
    """Column order and dtypes of TRACE_OUT (for Arrow / applyInPandas)."""
    cols: dict[str, object] = {}
    for c in TRACE_OUT_COLUMNS:
        v = df[c] if c in df.columns else pd.Series([None] * len(df), index=df.index, dtype="object")
        if c in _FLOAT_COLS:
            v = pd.to_numeric(v, errors="coerce").astype("float64")
        elif c == "source_row":
            v = pd.to_numeric(v).astype("int64")
        elif c == "piece":
            v = pd.to_numeric(v, errors="coerce").astype("Int32")
        elif c == "prematched_segment_id":
            v = pd.to_numeric(v, errors="coerce").astype("Int64")
        elif c == "is_context":
            v = v.astype("boolean")
        elif c == "timestamp_utc":
            if str(v.dtype) != "datetime64[us, UTC]":
                v = pd.to_datetime(v, utc=True).astype("datetime64[us, UTC]")
        else:
            v = v.astype("object")
        cols[c] = v.to_numpy() if c in ("source_row",) else v.reset_index(drop=True)
    return pd.DataFrame(cols)


def rejects_from_parsed(parsed: pd.DataFrame) -> pd.DataFrame:
    """Parse-time rejects (reason set) -> TRACE_OUT rows; dt = UTC date of the fix when it could be read."""
    rej = parsed.copy()
    rej["dt"] = [t.date() if pd.notna(t) else None for t in rej["timestamp_utc"]]
    return conform_trace_out(rej)


def segment_midpoints(segment_id: pd.Series, geom_lon: pd.Series, geom_lat: pd.Series) -> pd.DataFrame:
    """Point at half the geodesic length of each segment's polyline -> (segment_id, mid_lon_deg, mid_lat_deg)."""
    mids_lon, mids_lat = [], []
    for lons, lats in zip(geom_lon, geom_lat, strict=True):
        lo = np.asarray(lons, dtype="float64")
        la = np.asarray(lats, dtype="float64")
        if len(lo) == 0:
            mids_lon.append(np.nan)
            mids_lat.append(np.nan)
            continue
        if len(lo) == 1:
            mids_lon.append(lo[0])
            mids_lat.append(la[0])
            continue
        d = haversine_m(lo[:-1], la[:-1], lo[1:], la[1:])
        cum = np.concatenate([[0.0], np.cumsum(d)])
        half = cum[-1] / 2
        i = min(int(np.searchsorted(cum, half, side="right")) - 1, len(d) - 1)
        f = 0.0 if d[i] <= 0 else (half - cum[i]) / d[i]
        mids_lon.append(lo[i] + f * (lo[i + 1] - lo[i]))
        mids_lat.append(la[i] + f * (la[i + 1] - la[i]))
    return pd.DataFrame({
        "segment_id": pd.to_numeric(segment_id).astype("int64"),
        "mid_lon_deg": np.asarray(mids_lon, dtype="float64"),
        "mid_lat_deg": np.asarray(mids_lat, dtype="float64"),
    })


# ---- per-trace cleaning and border cutting, many traces at once --------------------------------------------------

DAY_US = 86_400_000_000


@dataclass
class TraceCut:
    """Result of `clean_and_cut` on rows sorted by (trace, time, source order); positions index those rows.

    Output rows are probe rows first (`n_probe_rows`: owned fixes, then context copies), then rejected rows.
    """

    pos: np.ndarray            # int64, input row of each output row
    n_probe_rows: int
    piece: np.ndarray          # int32, piece number within the trace (probe rows)
    is_context: np.ndarray     # bool (probe rows)
    home_idx: np.ndarray       # int64, index into `homes` (probe rows)
    homes: list[str]           # home H3 cell of each piece (string form)
    day: np.ndarray            # int64, UTC days since 1970-01-01 (all output rows)
    reason: list[str]          # rejected rows
    detail: list[str]          # rejected rows
    ref_pos: np.ndarray        # int64, for duplicate/conflicting rejects the kept row of that instant, else -1


def clean_and_cut(
    trace_start: np.ndarray,
    t_us: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    h3_res: int,
    *,
    max_gap_s: float = MAX_GAP_S,
    context_fixes: int = CONTEXT_FIXES,
    spike_kph: float = SPIKE_KPH,
    cells: np.ndarray | None = None,
) -> TraceCut:
    """Dedupe, spike removal and border cutting of many valid traces at once (vectorised; loops only at changes).

    Rows must be sorted by (trace, time, source file, source row); `trace_start` is True at each trace's first
    row, `t_us` is UTC microseconds since the epoch, lon/lat WGS84 degrees. Same rules as `process_trace`.
    `cells` (uint64 H3 cell of every row at h3_res) saves computing them again when the caller has them.
    """
    from h3.api import basic_int

    n = len(t_us)
    trace_start = np.asarray(trace_start, dtype=bool)
    t_us = np.asarray(t_us, dtype="int64")
    lon = np.asarray(lon, dtype="float64")
    lat = np.asarray(lat, dtype="float64")
    # Same trace and instant as the previous row: a duplicate (same position as an earlier row of that instant)
    # or a conflicting fix; the first row of the instant (by source order) is kept.
    same = np.zeros(n, dtype=bool)
    if n > 1:
        same[1:] = ~trace_start[1:] & (t_us[1:] == t_us[:-1])
    dup_pos = np.flatnonzero(same)
    dup_exact = np.zeros(len(dup_pos), dtype=bool)
    dup_ref = np.zeros(len(dup_pos), dtype="int64")
    if len(dup_pos):
        gid = np.cumsum(~same) - 1
        first_of_group = np.flatnonzero(~same)
        dup_ref = first_of_group[gid[dup_pos]]
        involved = np.flatnonzero(np.isin(gid, gid[dup_pos]))
        seen = pd.DataFrame({"g": gid[involved], "lon": lon[involved], "lat": lat[involved]}).duplicated(keep="first")
        exact = np.zeros(n, dtype=bool)
        exact[involved] = seen.to_numpy()
        dup_exact = exact[dup_pos]
    kept = np.flatnonzero(~same)

    # Isolated spikes: candidates found for all traces at once; the iterative rule runs only on traces with one.
    spike_pos: list[int] = []
    spike_detail: list[str] = []
    is_spike = np.zeros(len(kept), dtype=bool)
    m = len(kept)
    if m >= 3:
        ts = t_us[kept] / 1e6
        lo, la, st = lon[kept], lat[kept], trace_start[kept]
        v = haversine_m(lo[:-1], la[:-1], lo[1:], la[1:]) / np.maximum(np.diff(ts), 1e-9) * 3.6
        skip = haversine_m(lo[:-2], la[:-2], lo[2:], la[2:]) / np.maximum(ts[2:] - ts[:-2], 1e-9) * 3.6
        cand = np.zeros(m, dtype=bool)
        cand[1:-1] = (v[:-1] > spike_kph) & (v[1:] > spike_kph) & (skip <= spike_kph) & ~st[1:-1] & ~st[2:]
        if cand.any():
            starts = np.flatnonzero(st)
            ends = np.append(starts[1:], m)
            trace_of = np.cumsum(st) - 1
            for tr in np.unique(trace_of[cand]).tolist():
                a, b = int(starts[tr]), int(ends[tr])
                mask = spike_mask(ts[a:b], lo[a:b], la[a:b], spike_kph)
                for k in np.flatnonzero(mask).tolist():
                    prev = a + int(np.flatnonzero(~mask[:k])[-1])
                    i = a + k
                    speed = haversine_m(lo[prev], la[prev], lo[i], la[i]) / max(ts[i] - ts[prev], 1e-9) * 3.6
                    spike_detail.append(f"{float(speed):.0f} km/h from previous fix")
                    spike_pos.append(int(kept[i]))
                is_spike[a:b] = mask
    good = kept[~is_spike]

    # Border cutting: cells per fix; only rows where the cell changes, the trace starts or a gap opens can start
    # a piece, so the sequential home-cell rule loops over those rows only.
    g = len(good)
    tg = t_us[good]
    start_g = trace_start[good]
    if cells is not None:
        cell_arr = np.asarray(cells, dtype="uint64")[good]
    else:
        cell_arr = cells_of(lon[good], lat[good], h3_res)
    cells_list: list[int] = cell_arr.tolist()
    gap = np.zeros(g, dtype=bool)
    change = np.zeros(g, dtype=bool)
    if g > 1:
        gap[1:] = (np.diff(tg) / 1e6) > max_gap_s
        change[1:] = cell_arr[1:] != cell_arr[:-1]
    piece_start = np.zeros(g, dtype=bool)
    spatial = np.zeros(g, dtype=bool)
    rings: dict[int, set[int]] = {}
    home = 0
    near: set[int] = set()
    for i in np.flatnonzero(start_g | gap | change).tolist():
        c = cells_list[i]
        if start_g[i] or gap[i]:
            piece_start[i] = True
        elif c != home and c not in near:
            piece_start[i] = spatial[i] = True
        else:
            continue
        home = c
        near = rings.get(c) or rings.setdefault(c, set(basic_int.grid_disk(c, 1)))
    p_starts = np.flatnonzero(piece_start)
    n_pieces = len(p_starts)
    p_ends = np.append(p_starts[1:], g)
    piece_of = np.cumsum(piece_start) - 1
    trace_of_piece = np.cumsum(start_g)[p_starts] - 1 if n_pieces else np.zeros(0, dtype="int64")
    first_piece_of_trace = np.flatnonzero(start_g[p_starts]) if n_pieces else np.zeros(0, dtype="int64")
    piece_no = (np.arange(n_pieces) - first_piece_of_trace[trace_of_piece]).astype("int32")
    homes = [basic_int.int_to_str(cells_list[i]) for i in p_starts.tolist()]
    piece_day = tg[p_starts] // DAY_US

    # Context copies across spatial cuts: the last fixes of the previous piece and the first of the next one.
    ctx_rows: list[np.ndarray] = []
    ctx_piece: list[np.ndarray] = []
    if context_fixes > 0:
        for p in np.flatnonzero(spatial[p_starts]).tolist():
            s = int(p_starts[p])
            before = np.arange(max(int(p_starts[p - 1]), s - context_fixes), s)
            after = np.arange(s, min(int(p_ends[p]), s + context_fixes))
            ctx_rows += [before, after]
            ctx_piece += [np.full(len(before), p), np.full(len(after), p - 1)]
    rows_g = np.concatenate([np.arange(g), *ctx_rows]).astype("int64")
    pieces_g = np.concatenate([piece_of, *ctx_piece]).astype("int64")
    n_probe = len(rows_g)
    rej_pos = np.concatenate([dup_pos, np.asarray(spike_pos, dtype="int64")]).astype("int64")
    reason = ["duplicate_fix" if e else "conflicting_fix" for e in dup_exact.tolist()] + ["speed_spike"] * len(spike_pos)
    detail = ["same fix as " if e else "same time, other position as " for e in dup_exact.tolist()] + spike_detail
    return TraceCut(
        pos=np.concatenate([good[rows_g], rej_pos]),
        n_probe_rows=n_probe,
        piece=piece_no[pieces_g],
        is_context=np.arange(n_probe) >= g,
        home_idx=pieces_g,
        homes=homes,
        day=np.concatenate([piece_day[pieces_g], t_us[rej_pos] // DAY_US]),
        reason=reason,
        detail=detail,
        ref_pos=np.concatenate([dup_ref, np.full(len(spike_pos), -1, dtype="int64")]).astype("int64"),
    )


CELL_ANCHOR_STRIDE = 16  # cells_of computes every 16th position's cell with H3 and tests the others against it
CELL_EDGE_MARGIN = 0.02  # a position tested inside a cell is at least 2 % of its inradius from every edge (~20 m at res 7)
CELL_PLANAR_MIN_RES = 5  # cells of resolution 5+ (edges <= 10 km) away from the poles are tested in plane coordinates
CELL_PLANAR_MAX_LAT = 70.0


def _cell_edges(cell: int) -> tuple[float, np.ndarray] | None:
    """An H3 cell as half-planes in local plane coordinates (x = lon * cos(lat of its centre), y = lat, degrees):
    (cos(lat0), rows (a, b, c) with a*x + b*y >= c for every position at least CELL_EDGE_MARGIN of the inradius
    inside the edge), or None when the plane does not stand for the cell well enough to test in it.

    An H3 cell is a hexagon (or pentagon) of the gnomonic projection of an icosahedron face, so its edges are
    great-circle arcs; over a cell of 10 km or less, away from the poles, an arc strays from the straight line
    between its vertices in these coordinates by metres (less at finer resolutions), far inside the margin. Cells
    that are not convex in the plane (some cells across a face edge) are not tested (None)."""
    from h3.api import basic_int

    if basic_int.get_resolution(cell) < CELL_PLANAR_MIN_RES:
        return None
    lat0, lon0 = basic_int.cell_to_latlng(cell)
    b = np.array(basic_int.cell_to_boundary(cell))
    if np.abs(b[:, 0]).max() >= CELL_PLANAR_MAX_LAT or np.ptp(b[:, 1]) > 10.0:
        return None  # near a pole or across the antimeridian
    k = float(np.cos(np.radians(lat0)))
    v = np.stack([b[:, 1] * k, b[:, 0]], axis=1)
    d = np.roll(v, -1, axis=0) - v
    length = np.hypot(d[:, 0], d[:, 1])
    if (length <= 0).any():
        return None
    a_, b_ = -d[:, 1] / length, d[:, 0] / length  # unit normal of each edge
    c_ = a_ * v[:, 0] + b_ * v[:, 1]
    centre = np.array([lon0 * k, lat0])
    side = a_ * centre[0] + b_ * centre[1] - c_
    flip = np.where(side < 0, -1.0, 1.0)  # normals pointing inwards
    a_, b_, c_, side = a_ * flip, b_ * flip, c_ * flip, side * flip
    vertex_side = np.outer(a_, v[:, 0]) + np.outer(b_, v[:, 1]) - c_[:, None]
    if side.min() <= 0 or vertex_side.min() < -1e-9 * side.min():
        return None  # not convex around its centre
    return k, np.stack([a_, b_, c_ + CELL_EDGE_MARGIN * side.min()], axis=1)


def _inside(lon: np.ndarray, lat: np.ndarray, edges: tuple[float, np.ndarray]) -> np.ndarray:
    k, e = edges
    x = lon * k
    inside: np.ndarray = ((np.outer(x, e[:, 0]) + np.outer(lat, e[:, 1])) >= e[:, 2]).all(axis=1)
    return inside


def cells_of(lon: np.ndarray, lat: np.ndarray, h3_res: int, stride: int = CELL_ANCHOR_STRIDE) -> np.ndarray:
    """H3 cell (uint64) of every position (WGS84 degrees): exactly H3's `latlng_to_cell`, with fewer calls to it.

    The cell of every `stride`-th position (an anchor) is computed with H3. Every other position is tested against
    the cell of the anchor before it, then of the anchor after it (`_cell_edges`: inside by a margin); only
    positions in neither are computed one by one. Fixes of a trace in time order are metres apart, so on 1 Hz traces
    about one position in ten needs its own call (tests/test_ingest_probes.py checks the result against H3)."""
    from h3.api import basic_int

    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    n = len(lat)
    out = np.zeros(n, dtype="uint64")
    if n == 0:
        return out
    stride = max(int(stride), 1)
    anchors = np.arange(0, n, stride)
    anchor_cells = np.array([basic_int.latlng_to_cell(a, o, h3_res)
                             for a, o in zip(lat[anchors].tolist(), lon[anchors].tolist(), strict=True)], dtype="uint64")
    distinct, anchor_code = np.unique(anchor_cells, return_inverse=True)
    edges = [_cell_edges(int(c)) for c in distinct.tolist()]
    known = np.zeros(n, dtype=bool)
    out[anchors] = anchor_cells
    known[anchors] = True
    owner = np.arange(n) // stride
    for shift in (0, 1):  # the anchor before, then the anchor after
        idx = np.flatnonzero(~known & (owner + shift < len(anchors)))
        if not len(idx):
            continue
        code = anchor_code[owner[idx] + shift]
        order = np.argsort(code, kind="stable")
        idx, code = idx[order], code[order]
        starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
        for lo, hi in zip(starts.tolist(), [*starts[1:].tolist(), len(code)], strict=True):
            e = edges[code[lo]]
            if e is None:
                continue
            at = idx[lo:hi]
            hit = at[_inside(lon[at], lat[at], e)]
            out[hit] = distinct[code[lo]]
            known[hit] = True
    rest = np.flatnonzero(~known)
    if len(rest):
        out[rest] = [basic_int.latlng_to_cell(a, o, h3_res) for a, o in zip(lat[rest].tolist(), lon[rest].tolist(),
                                                                             strict=True)]
    return out


def network_area(partition_cells: Iterable[str]) -> np.ndarray:
    """Sorted uint64 H3 cells where a fix can be used: every partition of the network and its ring-1 neighbours
    (the matcher job of a partition also matches the pieces homed next to it)."""
    from h3.api import basic_int

    area: set[int] = set()
    for c in partition_cells:
        area.update(basic_int.grid_disk(basic_int.str_to_int(c), 1))
    return np.array(sorted(area), dtype="uint64")


def parsed_arrow_schema():
    """Arrow types of PARSED (the schema `transforms.PARSED_DDL` declares to Spark)."""
    import pyarrow as pa

    return pa.schema([
        ("source_file", pa.string()), ("source_row", pa.int64()), ("raw", pa.string()), ("trace_id", pa.string()),
        ("timestamp_utc", pa.timestamp("us", tz="UTC")), ("lon_deg", pa.float64()), ("lat_deg", pa.float64()),
        ("speed_kph", pa.float64()), ("heading_deg", pa.float64()), ("accuracy_m", pa.float64()),
        ("prematched_segment_id", pa.int64()), ("reason", pa.string()), ("detail", pa.string()),
    ])


def trace_out_arrow_schema():
    """Arrow types of TRACE_OUT (the schema `transforms.TRACE_OUT_DDL` declares to Spark)."""
    import pyarrow as pa

    return pa.schema([
        ("trace_id", pa.string()), ("piece", pa.int32()), ("timestamp_utc", pa.timestamp("us", tz="UTC")),
        ("lon_deg", pa.float64()), ("lat_deg", pa.float64()), ("speed_kph", pa.float64()),
        ("heading_deg", pa.float64()), ("accuracy_m", pa.float64()), ("prematched_segment_id", pa.int64()),
        ("is_context", pa.bool_()), ("source_file", pa.string()), ("source_row", pa.int64()), ("dt", pa.date32()),
        ("partition", pa.string()), ("raw", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
    ])


def trace_rows_arrow(table, h3_res: int, network: np.ndarray | None = None, **rules):
    """Parsed records (Arrow table, PARSED columns, sorted by trace_id, time, source file, source row) -> TRACE_OUT.

    Records with a reason pass through as rejected rows (dt = date of their fix); so do fixes whose H3 cell is
    not in `network` (sorted uint64 cells, see `network_area`; None = no check) as `outside_network`. The others
    go through `clean_and_cut`. Every trace must be complete in `table`.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = trace_out_arrow_schema()
    ts_type = schema.field("timestamp_utc").type
    bad_mask = pc.is_valid(table.column("reason"))
    bad = table.filter(bad_mask)
    ok = table.filter(pc.invert(bad_mask))
    cells = cells_of(ok.column("lon_deg").to_numpy(zero_copy_only=False),
                     ok.column("lat_deg").to_numpy(zero_copy_only=False), h3_res)
    if network is not None and ok.num_rows:
        outside = ~np.isin(cells, network, assume_unique=False)
        if outside.any():
            from h3.api import basic_int

            out_rows = ok.filter(pa.array(outside))
            detail = [f"H3 cell {basic_int.int_to_str(c)} is neither a partition of the network nor next to one"
                      for c in cells[outside].tolist()]
            out_rows = out_rows.set_column(out_rows.schema.get_field_index("reason"), "reason",
                                           pa.array(["outside_network"] * len(detail), out_rows.schema.field("reason").type))
            out_rows = out_rows.set_column(out_rows.schema.get_field_index("detail"), "detail",
                                           pa.array(detail, out_rows.schema.field("detail").type))
            bad = pa.concat_tables([bad, out_rows.cast(bad.schema)])
            ok = ok.filter(pa.array(~outside))
            cells = cells[~outside]
    n = ok.num_rows
    tid = ok.column("trace_id")
    trace_start = np.ones(n, dtype=bool)
    if n > 1:
        trace_start[1:] = pc.not_equal(tid.slice(1), tid.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    t_us = ok.column("timestamp_utc").cast(ts_type).cast(pa.int64()).to_numpy(zero_copy_only=False)
    cut = clean_and_cut(
        trace_start, t_us,
        ok.column("lon_deg").to_numpy(zero_copy_only=False), ok.column("lat_deg").to_numpy(zero_copy_only=False),
        h3_res, cells=cells, **rules,
    )
    take = pa.array(cut.pos, pa.int64())
    n_probe = cut.n_probe_rows
    n_rej = len(cut.reason)
    rej_mask = np.concatenate([np.zeros(n_probe, bool), np.ones(n_rej, bool)])
    files = ok.column("source_file")
    rows_no = ok.column("source_row")
    detail = list(cut.detail)
    for i, ref in enumerate(cut.ref_pos.tolist()):
        if ref >= 0:
            detail[i] += f"{files[ref].as_py()}:{rows_no[ref].as_py()}"
    n_out = n_probe + n_rej
    rej_take = pa.array(cut.pos[n_probe:], pa.int64())
    cols = {
        "trace_id": tid.take(take),
        "piece": pa.array(np.concatenate([cut.piece, np.zeros(n_rej, "int32")]), pa.int32(), mask=rej_mask),
        "timestamp_utc": ok.column("timestamp_utc").cast(ts_type).take(take),
        "lon_deg": ok.column("lon_deg").take(take),
        "lat_deg": ok.column("lat_deg").take(take),
        "speed_kph": ok.column("speed_kph").take(take),
        "heading_deg": ok.column("heading_deg").take(take),
        "accuracy_m": ok.column("accuracy_m").take(take),
        "prematched_segment_id": ok.column("prematched_segment_id").take(take),
        "is_context": pa.array(np.concatenate([cut.is_context, np.zeros(n_rej, bool)]), pa.bool_(), mask=rej_mask),
        "source_file": files.take(take),
        "source_row": rows_no.take(take),
        "dt": pa.array(cut.day.astype("int32"), pa.int32()).cast(pa.date32()),
        "partition": pa.DictionaryArray.from_arrays(
            pa.array(np.concatenate([cut.home_idx, np.zeros(n_rej, "int64")]).astype("int32"), pa.int32(),
                     mask=rej_mask),
            pa.array(cut.homes or [""], pa.string())).dictionary_decode(),
        "raw": pa.concat_arrays([pa.nulls(n_probe, pa.string()),
                                 *ok.column("raw").take(rej_take).cast(pa.string()).chunks]) if n_out else pa.array([], pa.string()),
        "reason": pa.array([None] * n_probe + cut.reason, pa.string()),
        "detail": pa.array([None] * n_probe + detail, pa.string()),
    }
    out = pa.table({k: cols[k] for k in schema.names}, schema=schema)
    if bad.num_rows:
        days = pc.floor(pc.divide(bad.column("timestamp_utc").cast(ts_type).cast(pa.int64()).cast(pa.float64()),
                                  float(DAY_US)))
        rej = {
            k: (bad.column(k).cast(schema.field(k).type) if k in bad.column_names else pa.nulls(bad.num_rows, schema.field(k).type))
            for k in schema.names
        }
        rej["dt"] = days.cast(pa.int32()).cast(pa.date32())
        out = pa.concat_tables([out, pa.table(rej, schema=schema)])
    return out
