"""probes: one accepted GPS fix, grouped into trace pieces homed in one spatial partition."""

from schemas._base import Column, Table

PROBES = Table(
    name="probes",
    grain="one GPS fix of one trace piece (context fixes are copies owned by a neighbouring piece)",
    partition_by=("dt", "partition"),
    doc=(
        "Border rule: a trace is cut into pieces wherever it leaves the ring-1 neighbourhood of the current "
        "piece's home cell; each piece is stored in its home partition with up to CONTEXT_FIXES fixes of the "
        "neighbouring pieces as context (is_context=true). A trace is also cut (without context) where two "
        "consecutive fixes are more than MAX_GAP_S apart. Fixes are ordered by time; the home cell is the H3 "
        "cell (resolution from road_segments/_partitions.json) of the piece's first owned fix. A traversal "
        "belongs to the piece whose owned time span contains its enter time, so border segments are matched "
        "once, with context on both sides."
    ),
    columns=(
        Column("trace_id", "string", "trace (vehicle trip) id as given by the source"),
        Column("piece", "int32", "0-based piece number of the trace after border cutting"),
        Column("timestamp_utc", "timestamp", "fix time, UTC"),
        Column("lon_deg", "float64", "longitude, WGS84 degrees"),
        Column("lat_deg", "float64", "latitude, WGS84 degrees"),
        Column("speed_kph", "float64", "speed reported by the device, km/h", required=False),
        Column("heading_deg", "float64", "heading reported by the device, degrees clockwise from north", required=False),
        Column("accuracy_m", "float64", "horizontal accuracy reported by the device, metres", required=False),
        Column("prematched_segment_id", "int64", "road link id from pre-matched input (trips-json), else null", required=False),
        Column("is_context", "bool", "true for a context copy of a fix owned by a neighbouring piece"),
        Column("source_file", "string", "input file the fix came from"),
        Column("source_row", "int64", "1-based line/record number in source_file"),
        Column("src", "string", "content key of source_file (first 16 hex digits of its SHA-256): a re-ingest of "
               "the same bytes replaces exactly these rows"),
        Column("dt", "date", "UTC date of the piece's first owned fix"),
        Column("partition", "string", "H3 cell of the piece's home (first owned fix)"),
    ),
)
CONTEXT_FIXES = 5  # fixes of the neighbouring piece copied on each side of a border (spatial) cut
MAX_GAP_S = 600.0  # a time gap longer than this (seconds) between consecutive fixes starts a new piece
