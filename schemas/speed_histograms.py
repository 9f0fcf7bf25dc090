"""speed_histograms: mergeable speed histogram per segment x time-of-week bucket over a window of days."""

from schemas._base import Column, Table

# Speed bin edges, km/h, half-open [lo, hi); the last bin is [200, inf).
BIN_WIDTH_KPH = 2.0
SPEED_BIN_EDGES_KPH = tuple(float(x) for x in range(0, 202, 2))  # 0, 2, ..., 200
N_SPEED_BINS = len(SPEED_BIN_EDGES_KPH)  # 101 bins, the last open-ended

SPEED_HISTOGRAMS = Table(
    name="speed_histograms",
    grain="one segment x tow_bucket over one window",
    partition_by=("partition", "window"),
    doc=(
        "window='d<YYYY-MM-DD>' holds one day's partial histograms; window='w<N>-<YYYY-MM-DD>' the merge of the "
        "N*7 daily partials ending that day. Merge = sum of the counts of equal bins and of every numeric column "
        "(a commutative monoid). Histograms are sparse: only bins with observations are stored."
    ),
    columns=(
        Column("segment_id", "int64", "road segment"),
        Column("tow_bucket", "int16", "local time-of-week bucket 0..2015"),
        Column("bin_ids", "array<int16>", "speed bins holding observations, ascending (index into SPEED_BIN_EDGES_KPH)"),
        Column("bin_counts", "array<int64>", "observations in each bin of bin_ids (same length; sparse histogram)"),
        Column("n_obs", "int64", "observations (traversals)"),
        Column("n_traces", "int64", "distinct trace pieces (exact: a piece belongs to one day)"),
        Column("sum_speed_kph", "float64", "sum of speeds, for the arithmetic mean"),
        Column("sum_duration_s", "float64", "sum of durations, for the harmonic (space-mean) speed"),
        Column("sum_traversed_m", "float64", "sum of metres traversed, for the harmonic (space-mean) speed"),
        Column("partition", "string", "partition of the segment"),
        Column("window", "string", "'d<date>' daily partial or 'w<weeks>-<end date>' rolling window"),
    ),
)
