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

    ts_all = pd.to_datetime(fixes["timestamp_utc"], utc=True).astype("datetime64[us, UTC]")
    t_us = np.asarray(ts_all.array.asi8, dtype="int64")  # microseconds since the epoch (unit fixed above)
    files = fixes["source_file"].astype(str).to_numpy()
    rows_no = fixes["source_row"].to_numpy().astype("int64")
    order = np.lexsort((rows_no, files, t_us))
    t_us = t_us[order]
    lon = fixes["lon_deg"].to_numpy("float64")[order]
    lat = fixes["lat_deg"].to_numpy("float64")[order]

    # Same time as the previous fix: exact duplicate of an earlier fix of that instant, or a conflicting one.
    reject_pos: list[int] = []
    reject_reason: list[str] = []
    reject_detail: list[str] = []
    keep = np.ones(len(order), dtype=bool)
    same = np.flatnonzero(np.diff(t_us) == 0) + 1
    for i in same:
        group_first = i - 1
        while group_first > 0 and t_us[group_first - 1] == t_us[i]:
            group_first -= 1
        earlier = range(group_first, i)
        exact = any(lon[j] == lon[i] and lat[j] == lat[i] for j in earlier)
        ref = order[group_first]
        keep[i] = False
        reject_pos.append(i)
        reject_reason.append("duplicate_fix" if exact else "conflicting_fix")
        reject_detail.append(f"{'same fix' if exact else 'same time, other position'} as "
                             f"{files[ref]}:{rows_no[ref]}")
    kept = np.flatnonzero(keep)
    t_s = t_us[kept] / 1e6
    spikes = spike_mask(t_s, lon[kept], lat[kept], spike_kph)
    if spikes.any():
        for k in np.flatnonzero(spikes):
            prev = kept[:k][~spikes[:k]][-1]
            v = haversine_m(lon[prev], lat[prev], lon[kept[k]], lat[kept[k]]) / max(t_s[k] - t_us[prev] / 1e6, 1e-9) * 3.6
            reject_pos.append(int(kept[k]))
            reject_reason.append("speed_spike")
            reject_detail.append(f"{float(v):.0f} km/h from previous fix")
        kept = kept[~spikes]
        t_s = t_s[~spikes]

    cells = [h3.latlng_to_cell(a, o, h3_res) for a, o in zip(lat[kept], lon[kept], strict=True)]
    piece, spatial_start = cut_pieces(t_s, cells, max_gap_s)
    n_pieces = int(piece[-1]) + 1 if len(piece) else 0
    starts = np.searchsorted(piece, np.arange(n_pieces), side="left")
    ends = np.searchsorted(piece, np.arange(n_pieces), side="right")
    home = np.array([cells[i] for i in starts], dtype="object")
    day_us = 86_400_000_000
    piece_day = (t_us[kept[starts]] // day_us) if n_pieces else np.zeros(0, dtype="int64")

    # Owned rows, then context copies (positions into `kept`), then rejects (positions into the sorted trace).
    take = [np.arange(len(kept))]
    take_piece = [piece]
    is_ctx = [np.zeros(len(kept), dtype=bool)]
    if context_fixes > 0:
        for k in range(n_pieces):
            if k > 0 and spatial_start[starts[k]]:
                r = np.arange(max(starts[k - 1], starts[k] - context_fixes), starts[k])
                take.append(r)
                take_piece.append(np.full(len(r), k, dtype="int32"))
                is_ctx.append(np.ones(len(r), dtype=bool))
            if k + 1 < n_pieces and spatial_start[starts[k + 1]]:
                r = np.arange(starts[k + 1], min(ends[k + 1], starts[k + 1] + context_fixes))
                take.append(r)
                take_piece.append(np.full(len(r), k, dtype="int32"))
                is_ctx.append(np.ones(len(r), dtype=bool))
    pos_kept = np.concatenate(take)
    out_piece = np.concatenate(take_piece).astype("int32")
    sorted_pos = np.concatenate([kept[pos_kept], np.asarray(reject_pos, dtype="int64")])
    src_idx = order[sorted_pos]  # row positions in `fixes`
    n_ok = len(pos_kept)
    n_rej = len(reject_pos)
    t_out = t_us[sorted_pos]
    day = np.concatenate([piece_day[out_piece], t_out[n_ok:] // day_us]) if n_ok + n_rej else np.zeros(0, "int64")
    cols: dict[str, object] = {
        "trace_id": fixes["trace_id"].to_numpy(dtype="object")[src_idx],
        "piece": pd.array(np.concatenate([out_piece, np.zeros(n_rej, "int32")]), dtype="Int32"),
        "timestamp_utc": pd.to_datetime(t_out, unit="us", utc=True),
        "lon_deg": lon[sorted_pos],
        "lat_deg": lat[sorted_pos],
    }
    for c in OPTIONAL_FIELDS:
        cols[c] = pd.to_numeric(fixes[c], errors="coerce").to_numpy("float64", na_value=np.nan)[src_idx]
    cols["prematched_segment_id"] = pd.array(fixes["prematched_segment_id"], dtype="Int64")[src_idx]
    cols["is_context"] = pd.array(np.concatenate([np.concatenate(is_ctx), np.zeros(n_rej, bool)]), dtype="boolean")
    cols["source_file"] = files[src_idx].astype("object")
    cols["source_row"] = rows_no[src_idx]
    cols["dt"] = (np.datetime64("1970-01-01") + day.astype("timedelta64[D]")).astype(object)
    cols["partition"] = np.concatenate([home[out_piece], np.full(n_rej, None, dtype="object")])
    cols["raw"] = np.concatenate([np.full(n_ok, None, dtype="object"),
                                  fixes["raw"].to_numpy(dtype="object")[src_idx[n_ok:]]])
    cols["reason"] = np.array([None] * n_ok + reject_reason, dtype="object")
    cols["detail"] = np.array([None] * n_ok + reject_detail, dtype="object")
    out = pd.DataFrame(cols)
    if n_rej:
        out.loc[n_ok:, "piece"] = pd.NA
        out.loc[n_ok:, "is_context"] = pd.NA
    return out


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
