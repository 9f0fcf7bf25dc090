"""speed_estimates: the published expected speed per segment x 5-minute time-of-week bucket, stored as run-length rows.

A row covers the buckets tow_bucket .. tow_bucket_end - 1 of one segment, which all have the same estimate; the rows
of a segment cover its 2016 buckets exactly once. Back-off levels pool whole hours or the week, so a sparsely observed
segment is a few dozen rows instead of 2016. Readers that want one row per bucket expand the runs
(speedprofile.serve.data.load_estimates, aggregate.transforms.dense_estimates). A row without tow_bucket_end (written
before runs) covers its one bucket.
"""

from schemas._base import Column, Table

# Back-off chain for buckets with fewer than MIN_TRACES distinct traces, in order. An 'observed' bucket (own histogram
# >= MIN_TRACES traces) is estimated from its own and its neighbours' histograms b-2..b+2 weighted 1-2-3-2-1 (the
# temporal kernel, docs/estimation.md); every other level from the pooled histogram of the level.
SOURCES = ("observed", "neighbour_buckets", "hour_daytype", "segment_week", "road_class_prior")
MIN_TRACES = 3  # privacy / reliability threshold (k distinct traces)

SPEED_ESTIMATES = Table(
    name="speed_estimates",
    grain="one segment x run of consecutive tow_buckets with one estimate (the runs cover all 2016 buckets of every "
          "segment with any data or a prior)",
    partition_by=("partition",),
    columns=(
        Column("segment_id", "int64", "road segment"),
        Column("tow_bucket", "int16", "first local time-of-week bucket of the run, 0..2015, Sunday 00:00 = 0"),
        Column("tow_bucket_end", "int16", "bucket after the run's last, 1..2016 (null: a one-bucket row)",
               required=False),
        Column("speed_kph", "float64", "expected speed (median of the histogram used; observed: kernel-weighted), km/h"),
        Column("p15_kph", "float64", "15th percentile speed of the same histogram, km/h", required=False),
        Column("p85_kph", "float64", "85th percentile speed of the same histogram, km/h", required=False),
        Column("mean_kph", "float64", "arithmetic mean speed of the same histogram, km/h", required=False),
        Column("harmonic_mean_kph", "float64", "space-mean speed (total metres / total time), km/h", required=False),
        Column("n_obs", "int64", "observations behind the estimate (observed: in the b-2..b+2 window, unweighted)"),
        Column("n_traces", "int64", "traces behind the estimate (observed: sum of the window buckets' distinct traces)"),
        Column("confidence", "float64", "0..1, grows with n_traces, shrinks with spread and back-off depth"),
        Column("free_flow_kph", "float64", "segment free-flow speed (85th pct of night-time speeds, else prior)"),
        Column("source", "string", "one of SOURCES: 'observed' or the back-off level used"),
        Column("window", "string", "histogram window the estimate was computed from"),
        Column("partition", "string", "partition of the segment"),
    ),
)
