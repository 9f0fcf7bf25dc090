"""rejected_probes: one input row that did not become a probe, with the reason."""

from schemas._base import Column, Table

# Every reason a row can be rejected for; ingest counts rows per reason (rows in = kept + sum of these).
REASONS = (
    "unparsable_line",      # CSV/JSON/GPX record that could not be parsed at all
    "missing_field",        # trace_id, timestamp, lon or lat absent
    "empty_trace_id",       # trace_id present but blank
    "nan_coordinate",       # lon/lat not a finite number
    "coordinate_out_of_range",  # |lat| > 90, |lon| > 180, or exactly (0, 0)
    "unparsable_time",      # timestamp not ISO-8601 / epoch s / epoch ms
    "implausible_time",     # before 2000-01-01 or after 2100-01-01 UTC
    "future_time",          # later than the run's clock + FUTURE_SKEW_S (a device clock or time zone error)
    "outside_network",      # H3 cell neither a partition of the network nor next to one (e.g. lat/lon swapped)
    "duplicate_fix",        # same trace_id, timestamp, lon, lat as an earlier row
    "conflicting_fix",      # same trace_id and timestamp as an earlier row but another position
    "speed_spike",          # isolated fix implying > SPIKE_KPH to and from its neighbours
    "unknown_link",         # trips-json link id not in the warehouse's road_segments
    "already_ingested",     # same trace_id, timestamp, lon, lat as a fix already in probes (from any file)
)
SPIKE_KPH = 160.0
FUTURE_SKEW_S = 900.0  # a fix may be at most this many seconds later than the clock of the ingest run

REJECTED_PROBES = Table(
    name="rejected_probes",
    grain="one rejected input row",
    partition_by=("dt",),
    columns=(
        Column("source_file", "string", "input file"),
        Column("source_row", "int64", "1-based line/record number in source_file"),
        Column("src", "string", "content key of source_file (first 16 hex digits of its SHA-256): a re-ingest of "
               "the same bytes replaces exactly these rows"),
        Column("raw", "string", "the raw record, truncated to 500 characters", required=False),
        Column("trace_id", "string", "trace id if it could be read", required=False),
        Column("timestamp_utc", "timestamp", "fix time if it could be read, UTC", required=False),
        Column("lon_deg", "float64", "longitude if it could be read", required=False),
        Column("lat_deg", "float64", "latitude if it could be read", required=False),
        Column("reason", "string", "one of REASONS"),
        Column("detail", "string", "human-readable detail (which field, what value)", required=False),
        Column("dt", "date", "UTC date of the fix when readable, else null (Hive default partition)", required=False),
    ),
)
