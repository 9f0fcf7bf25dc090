"""Map matching: HMM kernel (`Matcher`), routing structures, Spark transforms and the Kubicka benchmark."""

from speedprofile.matching.kernel import FIX_STATUSES, Matcher, MatchParams, TraceMatch

__all__ = ["FIX_STATUSES", "MatchParams", "Matcher", "TraceMatch"]
