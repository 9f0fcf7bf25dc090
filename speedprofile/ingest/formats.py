"""Input files: recursive listing, format detection, limits, a streaming scan of each file, per-file parsers.

`scan_file` reads a file once, as a stream (never whole in memory): SHA-256 of its bytes, gzip decompression
under a size and ratio limit, the format (extension, then content), and for CSV/JSONL the longest line. A file
that fails a check raises `FileRejected` (one line naming the file, and a `rejected_files` reason). Parsers turn
one file (a path or a binary stream) into record frames (see `kernel.RECORD_COLUMNS`), batch by batch.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
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
HEAD_BYTES = 65536  # decompressed bytes from the start of a file used to tell and check its format
CHUNK_BYTES = 4 << 20
RECORDS_PER_FRAME = 65536  # rows per record frame yielded by the Parquet / GPX parsers


@dataclass(frozen=True)
class IngestLimits:
    """Per-file limits; a file over one is refused as a whole (`rejected_files`), the batch goes on."""

    max_file_bytes: int = 4 << 30             # bytes on disk
    max_decompressed_bytes: int = 16 << 30    # bytes after gzip decompression
    max_compression_ratio: float = 100.0      # decompressed / on-disk, checked past ratio_floor_bytes
    ratio_floor_bytes: int = 64 << 20         # the ratio limit applies once this many bytes were decompressed
    max_line_bytes: int = 1 << 20             # longest CSV/JSONL line (so the longest field), bytes
    max_document_bytes: int = 64 << 20        # trips-json files are parsed as one JSON document (on the driver)


class FileRejected(UserError):
    """An input file refused as a whole: `reason` is one of schemas.rejected_files.FILE_REASONS."""

    def __init__(self, path: str, reason: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path, self.reason, self.detail = path, reason, detail


@dataclass(frozen=True)
class InputFile:
    """One input file: its path (local path or URI), detected format, CSV header and content hash."""

    path: str
    format: str
    header: tuple[str, ...] = ()
    sha: str = ""
    size: int = 0  # bytes on disk (0 when unknown)
    data_bytes: int = 0  # bytes after decompression (0 when unknown)


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


def _rej_format(path: str, detail: str) -> FileRejected:
    return FileRejected(path, "wrong_format", detail)


def sniff_format(path: str, head: bytes, requested: str = "auto") -> str:
    """Format of a file from --format, its extension, then its first bytes; FileRejected when it cannot be told."""
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
    raise _rej_format(path, f"cannot tell the input format; pass --format ({', '.join(FORMATS)})")


def check_csv_header(path: str, first_line: str) -> tuple[str, ...]:
    """Header columns of a CSV file; FileRejected when a required column is absent (wrong format)."""
    cols = tuple(c.strip().strip('"') for c in first_line.lstrip("\ufeff").rstrip("\r\n").split(","))
    missing = [c for c in kernel.REQUIRED_FIELDS if c not in cols]
    if missing:
        shown = first_line.strip()[:60]
        raise _rej_format(path, f"not a probe CSV: header lacks {', '.join(missing)} (first line: {shown!r})")
    return cols


def check_jsonl_head(path: str, head: bytes, probe_lines: int = 20) -> None:
    """FileRejected unless one of the first non-blank lines of a JSONL file is a JSON object (wrong format).

    A bad line among good ones is a row to reject, not a wrong file; the head is cut at HEAD bytes, so its last
    (possibly truncated) line is not judged.
    """
    lines = [ln for ln in head.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        raise FileRejected(path, "empty_file", "file is empty (no non-blank line)")
    complete = lines[:-1] if not head.endswith(b"\n") and len(lines) > 1 else lines
    for line in complete[:probe_lines]:
        try:
            if isinstance(json.loads(line), dict):
                return
        except ValueError:
            continue
    if len(complete) == 1 and not head.endswith(b"\n") and len(head) >= HEAD_BYTES:
        return  # one very long first line: judged row by row
    raise _rej_format(path, f"not JSON Lines: none of the first lines is a JSON object ({lines[0].strip()[:60]!r})")


# ---- the streaming scan ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileScan:
    """What one streaming read of a file found (decompressed view for gzip)."""

    format: str
    header: tuple[str, ...]
    sha256: str              # hex, of the bytes on disk
    size_bytes: int          # on disk
    data_bytes: int          # after decompression
    gzip: bool


def _chunks(raw: BinaryIO, path: str, size: int, limits: IngestLimits, digest) -> Iterator[tuple[bytes, bool]]:
    """Decompressed chunks of a stream (plain or gzip, also concatenated gzip members), hashing the raw bytes.

    Yields (chunk, is_gzip). Raises FileRejected over the decompression limits or for a corrupt stream.
    """
    first = raw.read(CHUNK_BYTES)
    digest.update(first)
    if first[:2] != b"\x1f\x8b":
        if first:
            yield first, False
        while chunk := raw.read(CHUNK_BYTES):
            digest.update(chunk)
            yield chunk, False
        return
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out_total = 0
    pending = first
    eof = False
    while True:
        try:
            while pending:
                out = d.decompress(pending, CHUNK_BYTES)
                pending = d.unconsumed_tail
                if d.eof:
                    rest = d.unused_data
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    pending = pending + rest if rest.lstrip(b"\x00") else b""
                    eof = not pending
                else:
                    eof = False
                if out:
                    out_total += len(out)
                    if out_total > limits.max_decompressed_bytes:
                        raise FileRejected(path, "decompression_limit", (
                            f"decompresses to more than {limits.max_decompressed_bytes} bytes "
                            f"(limit max_decompressed_bytes)"))
                    if out_total > limits.ratio_floor_bytes and out_total > limits.max_compression_ratio * max(size, 1):
                        raise FileRejected(path, "decompression_limit", (
                            f"compression ratio over {limits.max_compression_ratio:g} ({size} bytes on disk "
                            f"decompress to more than {out_total}; limit max_compression_ratio)"))
                    yield out, True
        except zlib.error as exc:
            raise FileRejected(path, "unreadable_file", f"cannot decompress ({exc})") from None
        chunk = raw.read(CHUNK_BYTES)
        if not chunk:
            break
        digest.update(chunk)
        pending = chunk
    if not eof:
        raise FileRejected(path, "unreadable_file", "cannot decompress (truncated gzip stream)")


def scan_file(path: str, raw: BinaryIO, size: int, limits: IngestLimits, fmt: str = "auto") -> FileScan:
    """One streaming pass over a file: checks every limit and the format, hashes the bytes on disk.

    Text formats (CSV, JSONL) also get their longest line checked against `max_line_bytes`; GPX is parsed
    through (streaming) and trips-json as one document (at most `max_document_bytes`), so a file that passes
    is one its parser will read to the end.
    """
    if size > limits.max_file_bytes:
        raise FileRejected(path, "file_too_large",
                           f"{size} bytes on disk, over the limit of {limits.max_file_bytes} (max_file_bytes)")
    digest = hashlib.sha256()
    head = b""
    found: str | None = None
    header: tuple[str, ...] = ()
    is_gz = False
    total = 0
    lines = 0
    run = 0  # bytes of the current (unfinished) line
    doc: list[bytes] = []
    gpx: ET.XMLPullParser | None = None
    for chunk, gz in _chunks(raw, path, size, limits, digest):
        is_gz = gz
        total += len(chunk)
        if found is None:
            head += chunk
            if len(head) < HEAD_BYTES:
                continue
            found, header = _check_head(path, head[:HEAD_BYTES], fmt)
            chunk, head = head, head[:HEAD_BYTES]
            if found == "gpx":
                gpx = ET.XMLPullParser(events=("end",))
        if found in TEXT_FORMATS:
            lines, run = _check_lines(path, chunk, lines, run, limits.max_line_bytes)
        elif found == "gpx":
            _feed_gpx(path, gpx, chunk)
        elif found == "trips-json":
            if total > limits.max_document_bytes:
                raise FileRejected(path, "file_too_large", (
                    f"trips-json document over {limits.max_document_bytes} bytes (max_document_bytes)"))
            doc.append(chunk)
    if found is None:
        if not head.strip(b" \t\r\n"):
            raise FileRejected(path, "empty_file", "file is empty")
        found, header = _check_head(path, head, fmt)
        if found in TEXT_FORMATS:
            lines, run = _check_lines(path, head, lines, run, limits.max_line_bytes)
        elif found == "gpx":
            gpx = ET.XMLPullParser(events=("end",))
            _feed_gpx(path, gpx, head)
        elif found == "trips-json":
            doc.append(head)
    if found == "gpx":
        _feed_gpx(path, gpx, None)
    elif found == "trips-json":
        _check_trips_doc(path, b"".join(doc))
    elif found == "parquet":
        _check_parquet(path, raw if is_gz else None, limits)
    return FileScan(found, header, digest.hexdigest(), size, total, is_gz)


def _check_head(path: str, head: bytes, fmt: str) -> tuple[str, tuple[str, ...]]:
    if not head.strip(b" \t\r\n"):
        raise FileRejected(path, "empty_file", "file is empty (only blanks in its first bytes)")
    f = sniff_format(path, head, fmt)
    header: tuple[str, ...] = ()
    if f == "csv":
        header = check_csv_header(path, head.decode("utf-8", "replace").splitlines()[0])
    elif f == "jsonl":
        check_jsonl_head(path, head)
    elif f == "parquet" and head[:4] != b"PAR1":
        raise _rej_format(path, "not a Parquet file (no PAR1 magic)")
    elif f == "gpx" and b"<gpx" not in head:
        raise _rej_format(path, "not a GPX file (no <gpx> element)")
    elif f == "trips-json" and not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        raise _rej_format(path, "not a trips-json file (does not start with a JSON object)")
    return f, header


def _check_lines(path: str, chunk: bytes, lines: int, run: int, limit: int) -> tuple[int, int]:
    """Line count and current line length after `chunk`; FileRejected when a line exceeds `limit` bytes."""
    nl = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
    if not len(nl):
        run += len(chunk)
        longest, at = run, lines
    else:
        lengths = np.diff(nl, prepend=-1) - 1
        lengths[0] += run
        k = int(np.argmax(lengths))
        longest, at = int(lengths[k]), lines + k
        run = len(chunk) - int(nl[-1]) - 1
        if run > longest:
            longest, at = run, lines + len(nl)
        lines += len(nl)
    if longest > limit:
        raise FileRejected(path, "field_too_long", (
            f"line {at + 1} is longer than {limit} bytes (limit max_line_bytes; at least {longest} bytes)"))
    return lines, run


def _feed_gpx(path: str, parser, chunk: bytes | None) -> None:
    try:
        if chunk is None:
            parser.close()
        else:
            parser.feed(chunk)
        for _, el in parser.read_events():
            if _local(el.tag) == "trkpt":
                el.clear()
    except ET.ParseError as exc:
        raise FileRejected(path, "unreadable_file", f"not a readable GPX file ({exc})") from None


def _check_trips_doc(path: str, data: bytes) -> None:
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FileRejected(path, "unreadable_file",
                           f"not a readable trips-json file ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise _rej_format(path, "not a trips-json file (no top-level array 'data')")


def _check_parquet(path: str, gz_raw: BinaryIO | None, limits: IngestLimits) -> None:
    """Footer readable, probe columns present, uncompressed size within the limit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if gz_raw is not None:
        raise _rej_format(path, "gzip-compressed Parquet is not supported (Parquet compresses its pages itself)")
    try:
        meta = pq.ParquetFile(path).metadata if not _is_uri(path) else None
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileRejected(path, "unreadable_file",
                           f"not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    if meta is None:
        return
    names = set(meta.schema.to_arrow_schema().names)
    missing = [c for c in kernel.REQUIRED_FIELDS if c not in names]
    if missing:
        raise _rej_format(path, f"Parquet file lacks column(s) {', '.join(missing)}")
    unpacked = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if unpacked > limits.max_decompressed_bytes:
        raise FileRejected(path, "decompression_limit", (
            f"Parquet data is {unpacked} bytes uncompressed, over {limits.max_decompressed_bytes} "
            "(max_decompressed_bytes)"))


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def open_local(path: str) -> BinaryIO:
    """A local file as a binary stream (gzip decompressed on the fly)."""
    fh = open(path.removeprefix("file://"), "rb")
    magic = fh.read(2)
    fh.seek(0)
    return gzip.GzipFile(fileobj=fh, mode="rb") if magic == b"\x1f\x8b" else fh  # type: ignore[return-value]


# ---- parsers: one file -> record frames ------------------------------------------------------------------------

def parse_parquet(path: str, source: str | BinaryIO) -> Iterator[pd.DataFrame]:
    """Parquet probe file -> record frames, batch by batch (source_row = 1-based row number)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileRejected(path, "unreadable_file",
                           f"not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
    missing = [c for c in kernel.REQUIRED_FIELDS if c not in pf.schema_arrow.names]
    if missing:
        raise _rej_format(path, f"Parquet file lacks column(s) {', '.join(missing)}")
    wanted = [c for c in (*kernel.REQUIRED_FIELDS, *kernel.OPTIONAL_FIELDS) if c in pf.schema_arrow.names]
    row0 = 1
    for batch in pf.iter_batches(batch_size=RECORDS_PER_FRAME, columns=wanted):
        yield _parquet_records(path, pa.Table.from_batches([batch]), row0)
        row0 += batch.num_rows


def _parquet_records(path: str, table, row0: int) -> pd.DataFrame:
    import pyarrow as pa

    n = table.num_rows
    rec = {"source_file": [path] * n, "source_row": list(range(row0, row0 + n))}
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


def parse_gpx(path: str, source: BinaryIO) -> Iterator[pd.DataFrame]:
    """GPX file -> record frames (streamed): one trace per track segment, trace_id = `<stem>-t<track>-s<segment>`
    (0-based).

    source_row = 1-based trkpt number in the file; `<time>` per trkpt; speed from `<speed>` (GPX 1.0) or any
    extension element named `speed` (Garmin TrackPointExtension), both metres per second -> km/h; heading
    from `<course>` or an extension `course`/`heading`.
    """
    base = stem(path)
    rows: list[dict] = []
    row_no = 0
    ti = si = -1
    stack: list[str] = []
    try:
        for event, el in ET.iterparse(source, events=("start", "end")):
            name = _local(el.tag)
            if event == "start":
                if not stack and name != "gpx":
                    raise _rej_format(path, f"not a GPX file (root element <{name}>)")
                stack.append(name)
                if stack == ["gpx", "trk"]:
                    ti, si = ti + 1, -1
                elif stack == ["gpx", "trk", "trkseg"]:
                    si += 1
                continue
            if stack == ["gpx", "trk", "trkseg", "trkpt"]:
                row_no += 1
                rows.append(_gpx_point(path, el, row_no, f"{base}-t{ti}-s{si}"))
                el.clear()
                if len(rows) >= RECORDS_PER_FRAME:
                    yield kernel.records_frame(rows)
                    rows = []
            stack.pop()
    except ET.ParseError as exc:
        raise FileRejected(path, "unreadable_file", f"not a readable GPX file ({exc})") from exc
    if rows or row_no == 0:
        yield kernel.records_frame(rows)


def _gpx_point(path: str, pt: ET.Element, row_no: int, trace_id: str) -> dict:
    vals: dict[str, str | None] = {"time": None, "speed": None, "course": None}
    for el in pt.iter():
        name = _local(el.tag).lower()
        if name in ("time", "speed", "course", "heading") and el is not pt:
            key = "course" if name == "heading" else name
            vals[key] = vals[key] or (el.text or "").strip() or None
    speed = _float_or_none(vals["speed"])
    return {
        "source_file": path, "source_row": row_no,
        "raw": ET.tostring(pt, encoding="unicode")[: kernel.RAW_MAX_CHARS],
        "trace_id": trace_id, "timestamp": vals["time"],
        "lon": pt.get("lon"), "lat": pt.get("lat"),
        "speed_kph": speed * MS_TO_KPH if speed is not None else None,
        "heading_deg": vals["course"],
    }


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


_TIME_KEYS = ("timestamp", "time", "ts")
_LON_KEYS = ("lon", "lng", "longitude")
_LAT_KEYS = ("lat", "latitude")


def parse_trips_json(path: str, source: BinaryIO) -> Iterator[pd.DataFrame]:
    """trips-json file (one trip, one JSON document) -> record frame; trace_id = file stem, source_row = 1-based
    index in `data`.

    Each element: `dbResponse.linkID` (road link id = segment_id), `absVelocity` (km/h), a time under
    `timestamp`/`time`/`ts`, optional coordinates `lon`/`lng`/`longitude` and `lat`/`latitude`.
    """
    try:
        doc = json.loads(source.read().decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FileRejected(path, "unreadable_file",
                           f"not a readable trips-json file ({str(exc).splitlines()[0]})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise _rej_format(path, "not a trips-json file (no top-level array 'data')")
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
    yield kernel.records_frame(rows)


def _int_or_none(v: object) -> int | None:
    if isinstance(v, bool):
        return None
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


FILE_PARSERS: dict[str, Callable[[str, BinaryIO], Iterator[pd.DataFrame]]] = {
    "parquet": parse_parquet, "gpx": parse_gpx, "trips-json": parse_trips_json,
}
