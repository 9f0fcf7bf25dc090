"""bucketed_traversals: a traversal tagged with the 5-minute local time-of-week bucket of its midpoint."""

from schemas._base import Column, Table

BUCKET_MINUTES = 5
N_BUCKETS = 7 * 24 * 60 // BUCKET_MINUTES  # 2016; bucket 0 = Sunday 00:00-00:05 local
DAY_TYPES = ("weekday", "saturday", "sunday")
# Why a segment traversal is not bucketed (first failing check, in this order); counted in the stage metrics.
REJECT_REASONS = (
    "missing_field",        # trace_id, enter/exit time or is_complete is null
    "partial",              # is_complete = false: the segment was not driven end to end
    "duration_nonpositive", # duration_s <= 0 or exit <= enter
    "speed_implausible",    # speed_kph null/NaN or outside [MIN_PLAUSIBLE_KPH, MAX_PLAUSIBLE_KPH]
    "low_confidence",       # confidence null or below MIN_CONFIDENCE (schemas.segment_traversals): unsure match
    "unknown_segment",      # segment_id not in road_segments of the partition
    "unknown_timezone",     # the segment's timezone is null or not an IANA zone
)

BUCKETED_TRAVERSALS = Table(
    name="bucketed_traversals",
    grain="one complete, plausible traversal with its local time-of-week bucket",
    partition_by=("dt", "partition"),
    doc="Rule: a traversal belongs to the bucket containing its midpoint time, in the road's local time.",
    columns=(
        Column("trace_id", "string", "trace id"),
        Column("piece", "int32", "trace piece"),
        Column("segment_id", "int64", "traversed road segment"),
        Column("midpoint_time_utc", "timestamp", "(enter + exit) / 2, UTC"),
        Column("local_time", "string", "midpoint as local wall-clock time, ISO-8601 with offset"),
        Column("timezone", "string", "IANA time zone used"),
        Column("tow_bucket", "int16", "local time-of-week bucket 0..2015, Sunday 00:00 = 0, [lo, hi) 5 minutes"),
        Column("day_type", "string", "weekday | saturday | sunday (local)"),
        Column("duration_s", "float64", "traversal duration, seconds"),
        Column("traversed_m", "float64", "metres traversed"),
        Column("speed_kph", "float64", "observed speed, km/h"),
        Column("dt", "date", "UTC date (as in segment_traversals)"),
        Column("partition", "string", "partition of the segment"),
    ),
)
