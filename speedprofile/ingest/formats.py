"""Input files: recursive listing, format detection (extension, then content sniffing) and per-file parsers.

Parsers turn one file's bytes into a record frame (see `kernel.RECORD_COLUMNS`); a file that is not in the
format it claims raises `UserError` (one line). Pure Python; I/O is done by the caller (local or Hadoop FS).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pandas as pd

from speedprofile.errors import UserError
from speedprofile.ingest import kernel

FORMATS = ("csv", "jsonl", "parquet", "gpx", "trips-json")
TEXT_FORMATS = ("csv", "jsonl")  # read line by line with Spark; the others are parsed per file
_EXTENSIONS = {
    ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
    ".gpx": "gpx", ".json": None,  # .json: trips-json or JSONL, decided by content
}
MS_TO_KPH = 3.6


@dataclass(frozen=True)
class InputFile:
    """One input file: its path (local path or URI), detected format, CSV header and content hash."""

    path: str
    format: str
    header: tuple[str, ...] = ()
    sha: str = ""
    size: int = 0  # bytes on disk (0 when unknown)


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("_")


def extension(path: str) -> str:
    name = os.path.basename(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in (".gz",):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return os.path.splitext(name)[0]


def known_extension(path: str) -> bool:
    return extension(path) in _EXTENSIONS


def decompress(path: str, data: bytes) -> bytes:
    if path.lower().endswith(".gz") or data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise UserError(f"{path}: cannot decompress ({exc})") from exc
    return data


def sniff_format(path: str, head: bytes, requested: str = "auto") -> str:
    """Format of a file from --format, its extension, then its first bytes; UserError when it cannot be told."""
    if requested != "auto":
        if requested not in FORMATS:
            raise UserError(f"unknown format {requested!r} (one of: auto, {', '.join(FORMATS)})")
        return requested
    by_ext = _EXTENSIONS.get(extension(path), "")
    if by_ext:
        return by_ext
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head[:4] == b"PAR1":
        return "parquet"
    if text[:5] == b"<?xml" or text[:4] == b"<gpx":
        return "gpx"
    if text[:1] == b"{":
        first_line = text.split(b"\n", 1)[0].strip()
        try:
            obj = json.loads(first_line)
        except ValueError:
            return "trips-json"  # a JSON document over several lines
        is_trip = isinstance(obj, dict) and isinstance(obj.get("data"), list) and "trace_id" not in obj
        return "trips-json" if is_trip else "jsonl"
    first = text.split(b"\n", 1)[0].decode("utf-8", "replace")
    if {"trace_id", "timestamp", "lon", "lat"} <= {c.strip() for c in first.split(",")}:
        return "csv"
    raise UserError(f"{path}: cannot tell the input format; pass --format ({', '.join(FORMATS)})")


def check_csv_header(path: str, first_line: str) -> tuple[str, ...]:
    """Header columns of a CSV file; UserError when a required column is absent (wrong format)."""
    cols = tuple(c.strip().strip('"') for c in first_line.lstrip("\ufeff").rstrip("\r\n").split(","))
    missing = [c for c in kernel.REQUIRED_FIELDS if c not in cols]
    if missing:
        shown = first_line.strip()[:60]
        raise UserError(f"{path}: not a probe CSV: header lacks {', '.join(missing)} (first line: {shown!r})")
    return cols


def check_jsonl_head(path: str, head: bytes, probe_lines: int = 20) -> None:
    """UserError unless one of the first non-blank lines of a JSONL file is a JSON object (wrong format).

    A bad line among good ones is a row to reject, not a wrong file; the head is cut at HEAD bytes, so its last
    (possibly truncated) line is not judged.
    """
    lines = [ln for ln in head.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        raise UserError(f"{path}: file is empty")
    complete = lines[:-1] if not head.endswith(b"\n") and len(lines) > 1 else lines
    for line in complete[:probe_lines]:
        try:
            if isinstance(json.loads(line), dict):
                return
        except ValueError:
            continue
    if len(complete) == 1 and not head.endswith(b"\n") and len(head) >= 65536:
        return  # one very long first line: judged row by row
    raise UserError(f"{path}: not JSON Lines: none of the first lines is a JSON object ({lines[0].strip()[:60]!r})")


def parse_parquet(path: str, data: bytes) -> pd.DataFrame:
    """Parquet probe file -> record frame (source_row = 1-based row number)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
    missing = [c for c in kernel.REQUIRED_FIELDS if c not in table.column_names]
    if missing:
        raise UserError(f"{path}: Parquet file lacks column(s) {', '.join(missing)}")
    n = table.num_rows
    rec = {"source_file": [path] * n, "source_row": list(range(1, n + 1))}
    for c in (*kernel.REQUIRED_FIELDS, *kernel.OPTIONAL_FIELDS):
        if c in table.column_names:
            col = table.column(c)
            if pa.types.is_timestamp(col.type):
                s = col.to_pandas()
                if getattr(s.dtype, "tz", None) is None:
                    s = s.dt.tz_localize("UTC")
                rec[c] = pd.Series(list(s.astype("object")), dtype="object").where(s.notna().to_numpy(), None)
            else:
                rec[c] = pd.Series(col.to_pylist(), dtype="object")
        else:
            rec[c] = [None] * n
    df = pd.DataFrame(rec)
    df["raw"] = [json.dumps({c: _jsonable(v) for c, v in zip(kernel.REQUIRED_FIELDS, vals, strict=True)})
                 for vals in zip(*(df[c] for c in kernel.REQUIRED_FIELDS), strict=True)] if n else []
    df["prematched_segment_id"] = None
    df["reason"] = None
    df["detail"] = None
    return df[list(kernel.RECORD_COLUMNS)]


def _jsonable(v: object) -> object:
    if v is None or isinstance(v, str | int | float | bool):
        return v
    return str(v)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_gpx(path: str, data: bytes) -> pd.DataFrame:
    """GPX file -> record frame: one trace per track segment, trace_id = `<stem>-t<track>-s<segment>` (0-based).

    source_row = 1-based trkpt number in the file; `<time>` per trkpt; speed from `<speed>` (GPX 1.0) or any
    extension element named `speed` (Garmin TrackPointExtension), both metres per second -> km/h; heading
    from `<course>` or an extension `course`/`heading`.
    """
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise UserError(f"{path}: not a readable GPX file ({exc})") from exc
    if _local(root.tag) != "gpx":
        raise UserError(f"{path}: not a GPX file (root element <{_local(root.tag)}>)")
    base = stem(path)
    rows = []
    row_no = 0
    tracks = [e for e in root if _local(e.tag) == "trk"]
    for ti, trk in enumerate(tracks):
        segs = [e for e in trk if _local(e.tag) == "trkseg"]
        for si, seg in enumerate(segs):
            trace_id = f"{base}-t{ti}-s{si}"
            for pt in seg:
                if _local(pt.tag) != "trkpt":
                    continue
                row_no += 1
                vals: dict[str, str | None] = {"time": None, "speed": None, "course": None}
                for el in pt.iter():
                    name = _local(el.tag).lower()
                    if name in ("time", "speed", "course", "heading") and el is not pt:
                        key = "course" if name == "heading" else name
                        vals[key] = vals[key] or (el.text or "").strip() or None
                speed = _float_or_none(vals["speed"])
                rows.append({
                    "source_file": path, "source_row": row_no,
                    "raw": ET.tostring(pt, encoding="unicode")[: kernel.RAW_MAX_CHARS],
                    "trace_id": trace_id, "timestamp": vals["time"],
                    "lon": pt.get("lon"), "lat": pt.get("lat"),
                    "speed_kph": speed * MS_TO_KPH if speed is not None else None,
                    "heading_deg": vals["course"],
                })
    return kernel.records_frame(rows)


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


_TIME_KEYS = ("timestamp", "time", "ts")
_LON_KEYS = ("lon", "lng", "longitude")
_LAT_KEYS = ("lat", "latitude")


def parse_trips_json(path: str, data: bytes) -> pd.DataFrame:
    """trips-json file (one trip) -> record frame; trace_id = file stem, source_row = 1-based index in `data`.

    Each element: `dbResponse.linkID` (road link id = segment_id), `absVelocity` (km/h), a time under
    `timestamp`/`time`/`ts`, optional coordinates `lon`/`lng`/`longitude` and `lat`/`latitude`.
    """
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable trips-json file ({str(exc).splitlines()[0]})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise UserError(f"{path}: not a trips-json file (no top-level array 'data')")
    trace_id = stem(path)
    rows = []
    for i, el in enumerate(doc["data"], start=1):
        rec: dict = {"source_file": path, "source_row": i, "raw": json.dumps(el)[: kernel.RAW_MAX_CHARS]}
        if not isinstance(el, dict):
            rec.update(reason="unparsable_line", detail=f"element is a JSON {type(el).__name__}, not an object")
            rows.append(rec)
            continue
        db = el.get("dbResponse")
        link = db.get("linkID") if isinstance(db, dict) else None
        if link is None or (isinstance(link, str) and not link.strip()):
            rec.update(reason="missing_field", detail="dbResponse.linkID is missing")
        elif _int_or_none(link) is None:
            rec.update(reason="unparsable_line", detail=f"dbResponse.linkID {link!r} is not an integer")
        rec["trace_id"] = trace_id
        rec["timestamp"] = next((el[k] for k in _TIME_KEYS if el.get(k) is not None), None)
        rec["lon"] = next((el[k] for k in _LON_KEYS if el.get(k) is not None), None)
        rec["lat"] = next((el[k] for k in _LAT_KEYS if el.get(k) is not None), None)
        rec["speed_kph"] = el.get("absVelocity")
        rec["heading_deg"] = el.get("heading")
        rec["prematched_segment_id"] = _int_or_none(link)
        rows.append(rec)
    return kernel.records_frame(rows)


def _int_or_none(v: object) -> int | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


FILE_PARSERS = {"parquet": parse_parquet, "gpx": parse_gpx, "trips-json": parse_trips_json}
