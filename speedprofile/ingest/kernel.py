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
    want = [(f, index.get(f)) for f in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS)]
    rows = []
    for row_no, line, fields in zip(source_rows, lines, _csv_fields(lines), strict=True):
        rec = {"source_file": source_file, "source_row": row_no, "raw": line}
        if not line.strip():
            rec.update(reason="unparsable_line", detail="blank line")
        elif fields is None or len(fields) != width:
            n = "?" if fields is None else len(fields)
            rec.update(reason="unparsable_line", detail=f"{n} fields, header has {width}")
        else:
            for name, i in want:
                rec[name] = fields[i] if i is not None else None
        rows.append(rec)
    return records_frame(rows)


def _csv_fields(lines: list[str]) -> list[list[str] | None]:
    out: list[list[str] | None] = []
    for line in lines:
        try:
            parsed = list(csv.reader([line]))
            out.append(parsed[0] if parsed else [])
        except csv.Error:
            out.append(None)
    return out


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
        is_dt = obj.map(lambda v: isinstance(v, pd.Timestamp | np.datetime64) or hasattr(v, "isoformat"))
        if is_dt.any():
            conv = pd.to_datetime(obj[is_dt], utc=True, errors="coerce")
            out[is_dt] = conv.astype("datetime64[us, UTC]")
        rest = obj[~is_dt]
        is_bool = rest.map(lambda v: isinstance(v, bool | np.bool_))
        num = pd.to_numeric(rest.where(~is_bool, None), errors="coerce")
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
            text = strs.map(lambda v: None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else str(v).strip())
            missing = text.isna() | (text == "")
            reason[missing[missing].index] = "missing_field"
            detail[missing[missing].index] = "timestamp is empty"
            text = text[~missing]
            has_off = text.map(lambda s: bool(_OFFSET_RE.search(s)))
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
    return values.map(lambda v: v is None or v is pd.NA or v is pd.NaT or (isinstance(v, str) and not v.strip()))


def _to_float(values: pd.Series) -> pd.Series:
    obj = values.astype("object").map(lambda v: v.strip() if isinstance(v, str) else v)
    obj = obj.map(lambda v: None if isinstance(v, bool | np.bool_) else v)
    return pd.to_numeric(obj, errors="coerce").astype("float64")


def validate_records(rec: pd.DataFrame) -> pd.DataFrame:
    """Record frame -> parsed frame (PARSED_COLUMNS): typed values, and reason/detail for every bad record.

    Checks in order (first failure wins): unparsable_line (set by the parser), missing_field, empty_trace_id,
    nan_coordinate, coordinate_out_of_range, unparsable_time / implausible_time. lon/lat may be absent only when
    prematched_segment_id is set (trips-json without coordinates; filled from road_segments later).
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
    tid_missing = tid.map(lambda v: v is None or (isinstance(v, float) and math.isnan(v)))
    lon_missing = _is_missing(rec["lon"].astype("object"))
    lat_missing = _is_missing(rec["lat"].astype("object"))
    ts_missing = _is_missing(rec["timestamp"].astype("object"))
    for name, m, allow_link in (
        ("trace_id", tid_missing, False), ("timestamp", ts_missing, False),
        ("lon", lon_missing, True), ("lat", lat_missing, True),
    ):
        flag(m & ~(has_link & allow_link), "missing_field", f"{name} is missing")
    trace_str = tid.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip())
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


def cut_pieces(
    t_s: np.ndarray, cells: list[str], max_gap_s: float = MAX_GAP_S, ring=None
) -> tuple[np.ndarray, np.ndarray]:
    """Border rule on one time-sorted trace -> (piece number per fix, True where a piece starts at a spatial cut).

    A new piece starts where a fix's cell is outside the ring-1 of the current piece's home cell (spatial cut) or
    the time gap to the previous fix exceeds max_gap_s (time cut). Home = cell of the piece's first fix.
    """
    if ring is None:
        import h3

        ring = h3.grid_disk
    n = len(cells)
    piece = np.zeros(n, dtype="int32")
    spatial_start = np.zeros(n, dtype=bool)
    if n == 0:
        return piece, spatial_start
    k = 0
    home = cells[0]
    near = set(ring(home, 1))
    for i in range(1, n):
        c = cells[i]
        if t_s[i] - t_s[i - 1] > max_gap_s:
            k += 1
            home, near = c, set(ring(c, 1))
        elif c != home and c not in near:
            k += 1
            spatial_start[i] = True
            home, near = c, set(ring(c, 1))
        piece[i] = k
    return piece, spatial_start


def _reject_rows(df: pd.DataFrame, reason: str, details: Iterable[str]) -> pd.DataFrame:
    out = df.copy()
    out["reason"] = reason
    out["detail"] = list(details)
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
    (see `cut_pieces`) stored in their home cell with up to `context_fixes` context fixes across spatial cuts.
    dt = UTC date of each piece's first owned fix; rejected rows get the UTC date of their own fix.
    """
    import h3

    df = fixes.sort_values(["timestamp_utc", "source_file", "source_row"], kind="mergesort").reset_index(drop=True)
    df["raw"] = df["raw"].astype("object")
    rejects = []
    first_of = df.groupby(["timestamp_utc"], sort=False).cumcount() == 0
    key_dup = df.duplicated(subset=["timestamp_utc", "lon_deg", "lat_deg"], keep="first")
    same_time = ~first_of & ~key_dup
    firsts = df[first_of].set_index("timestamp_utc")[["source_file", "source_row"]]
    for mask, why in ((key_dup, "duplicate_fix"), (same_time, "conflicting_fix")):
        if mask.any():
            ref = firsts.loc[df.loc[mask, "timestamp_utc"]]
            text = (f"{'same fix' if why == 'duplicate_fix' else 'same time, other position'} as {f}:{r}"
                    for f, r in zip(ref["source_file"], ref["source_row"], strict=True))
            rejects.append(_reject_rows(df[mask], why, text))
    df = df[first_of].reset_index(drop=True)

    t_s = epoch_seconds(df["timestamp_utc"])
    spikes = spike_mask(t_s, df["lon_deg"].to_numpy(), df["lat_deg"].to_numpy(), spike_kph)
    if spikes.any():
        idx = np.flatnonzero(spikes)
        d_in = haversine_m(df["lon_deg"].to_numpy()[idx - 1], df["lat_deg"].to_numpy()[idx - 1],
                           df["lon_deg"].to_numpy()[idx], df["lat_deg"].to_numpy()[idx])
        v_in = d_in / (t_s[idx] - t_s[idx - 1]) * 3.6
        rejects.append(_reject_rows(df[spikes], "speed_spike", (f"{v:.0f} km/h from previous fix" for v in v_in)))
        df = df[~spikes].reset_index(drop=True)
        t_s = t_s[~spikes]

    cells = [h3.latlng_to_cell(a, o, h3_res) for a, o in zip(df["lat_deg"].to_numpy(), df["lon_deg"].to_numpy(), strict=True)]
    piece, spatial_start = cut_pieces(t_s, cells, max_gap_s)
    df["piece"] = piece
    df["is_context"] = False
    n_pieces = int(piece[-1]) + 1 if len(piece) else 0
    starts = np.searchsorted(piece, np.arange(n_pieces), side="left")
    ends = np.searchsorted(piece, np.arange(n_pieces), side="right")
    home = [cells[s] for s in starts]
    dts = [df["timestamp_utc"].iloc[s].date() for s in starts]
    df["partition"] = [home[p] for p in piece]
    df["dt"] = [dts[p] for p in piece]
    parts = [df]
    if context_fixes > 0:
        for k in range(n_pieces):
            ctx = []
            if k > 0 and spatial_start[starts[k]]:
                ctx.append(df.iloc[max(starts[k - 1], starts[k] - context_fixes): starts[k]])
            if k + 1 < n_pieces and spatial_start[starts[k + 1]]:
                ctx.append(df.iloc[starts[k + 1]: min(ends[k + 1], starts[k + 1] + context_fixes)])
            for c in ctx:
                c = c.copy()
                c["piece"] = k
                c["is_context"] = True
                c["partition"] = home[k]
                c["dt"] = dts[k]
                parts.append(c)
    out = pd.concat(parts, ignore_index=True)
    out["reason"] = None
    out["detail"] = None
    out["raw"] = None
    if rejects:
        rej = pd.concat(rejects, ignore_index=True)
        rej["piece"] = None
        rej["is_context"] = None
        rej["partition"] = None
        rej["dt"] = [t.date() for t in rej["timestamp_utc"]]
        out = pd.concat([out, rej], ignore_index=True)
    return conform_trace_out(out)


def conform_trace_out(df: pd.DataFrame) -> pd.DataFrame:
    """Column order and dtypes of TRACE_OUT (for Arrow / applyInPandas)."""
    out = pd.DataFrame(index=df.index)
    for c in TRACE_OUT_COLUMNS:
        v = df[c] if c in df.columns else pd.Series([None] * len(df), index=df.index, dtype="object")
        if c in _FLOAT_COLS:
            v = pd.to_numeric(v, errors="coerce").astype("float64")
        elif c in ("source_row",):
            v = pd.to_numeric(v).astype("int64")
        elif c in ("piece",):
            v = pd.to_numeric(v, errors="coerce").astype("Int32")
        elif c == "prematched_segment_id":
            v = pd.to_numeric(v, errors="coerce").astype("Int64")
        elif c == "is_context":
            v = v.astype("boolean")
        elif c == "timestamp_utc":
            v = pd.to_datetime(v, utc=True).astype("datetime64[us, UTC]")
        else:
            v = v.astype("object")
        out[c] = v
    return out.reset_index(drop=True)


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
