"""segment_traversals: one trace piece's traversal of one road segment, with observed speed."""

from schemas._base import Column, Table

# Reasons a matched traversal is not emitted (counted in the stage metrics).
REJECT_REASONS = (
    "speed_implausible",      # speed outside [MIN_PLAUSIBLE_KPH, MAX_PLAUSIBLE_KPH]
    "duration_nonpositive",   # enter time not before exit time
    "owned_by_other_piece",   # entered outside this piece's owned time span (the neighbouring piece writes it)
    "speed_unknown",          # pre-matched partial run without reported speeds: no length to divide
    "unknown_segment",        # pre-matched link id not in the road network
)
MAX_PLAUSIBLE_KPH = 200.0
MIN_PLAUSIBLE_KPH = 0.5
# Traversals matched with a confidence below this are not bucketed (bucketed_traversals reject `low_confidence`).
# 0.5 = the matcher preferred this road over its best rival by no more than a coin flip (see docs/matching.md).
MIN_CONFIDENCE = 0.5

SEGMENT_TRAVERSALS = Table(
    name="segment_traversals",
    grain="one trace piece's traversal of one segment",
    partition_by=("dt", "partition"),
    columns=(
        Column("trace_id", "string", "trace id"),
        Column("piece", "int32", "trace piece (see probes)"),
        Column("seq", "int32", "0-based order of the traversal along the matched path of the piece"),
        Column("segment_id", "int64", "traversed road segment"),
        Column("enter_time_utc", "timestamp", "interpolated time the vehicle entered the segment (or first fix on it), UTC"),
        Column("exit_time_utc", "timestamp", "interpolated time the vehicle left the segment (or last fix on it), UTC"),
        Column("duration_s", "float64", "exit - enter, seconds"),
        Column("traversed_m", "float64", "metres of the segment covered by this traversal"),
        Column("speed_kph", "float64", "traversed_m / duration_s, km/h"),
        Column("is_complete", "bool", "true when the segment was driven from its start to its end"),
        Column("n_fixes", "int32", "fixes matched onto the segment"),
        Column("match_source", "string", "'hmm' (map matched) or 'prematched' (link ids from the source)"),
        Column("confidence", "float64", "0..1, how sure the match of this traversal is (1 for prematched); "
               "below MIN_CONFIDENCE it is not bucketed"),
        Column("dt", "date", "probes dt of the trace piece"),
        Column("partition", "string", "partition of the segment (the piece may be homed in a neighbouring cell)"),
    ),
)
