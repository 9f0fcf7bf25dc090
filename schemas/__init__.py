"""One declaration per warehouse table: the single source every reader, writer and test uses."""

from schemas._base import Column, Table
from schemas.bucketed_traversals import BUCKETED_TRAVERSALS
from schemas.probes import PROBES
from schemas.rejected_files import REJECTED_FILES
from schemas.rejected_probes import REJECTED_PROBES
from schemas.road_segments import ROAD_SEGMENTS
from schemas.segment_traversals import SEGMENT_TRAVERSALS
from schemas.speed_estimates import SPEED_ESTIMATES
from schemas.speed_histograms import SPEED_HISTOGRAMS

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        ROAD_SEGMENTS, PROBES, REJECTED_PROBES, REJECTED_FILES, SEGMENT_TRAVERSALS,
        BUCKETED_TRAVERSALS, SPEED_HISTOGRAMS, SPEED_ESTIMATES,
    )
}

__all__ = ["TABLES", "Column", "Table"] + [n for n in dir() if n.isupper() and n != "TABLES"]
