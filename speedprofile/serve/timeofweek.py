"""Time-of-week text <-> bucket: "Fri 12:00" is local wall-clock time of the road; Sunday 00:00 = bucket 0.

The one place that parses and formats time-of-week for users (CLI flags, map labels, query output).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from schemas.bucketed_traversals import BUCKET_MINUTES, N_BUCKETS
from speedprofile.errors import UserError

DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
BUCKETS_PER_DAY = 24 * 60 // BUCKET_MINUTES
_DAY_NAMES = {
    **{d.lower(): i for i, d in enumerate(DAYS)},
    **{n: i for i, n in enumerate(("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"))},
    "tues": 2, "wednes": 3, "thur": 4, "thurs": 4,
}
_PATTERN = re.compile(r"^\s*([a-zA-Z]+)\.?[\s,]+(\d{1,2}):(\d{2})(?::\d{2})?\s*$")


def parse_time_of_week(text: str) -> int:
    """'Fri 12:00' / 'friday 12:07' -> tow_bucket (0..2015) containing that local time (5-minute buckets)."""
    m = _PATTERN.match(str(text))
    if not m:
        raise UserError(f"cannot read time of week {text!r}: expected a day and a 24-hour time, e.g. 'Fri 12:00'")
    day, hh, mm = m.group(1).lower(), int(m.group(2)), int(m.group(3))
    if day not in _DAY_NAMES:
        raise UserError(f"unknown day {m.group(1)!r} in {text!r}: use Sun, Mon, Tue, Wed, Thu, Fri or Sat")
    if hh > 23 or mm > 59:
        raise UserError(f"invalid time {hh}:{mm:02d} in {text!r}: use 00:00..23:59")
    return _DAY_NAMES[day] * BUCKETS_PER_DAY + (hh * 60 + mm) // BUCKET_MINUTES


def format_bucket(bucket: int) -> str:
    """tow_bucket -> 'Fri 12:00' (start of the bucket, local time)."""
    b = int(bucket)
    if not 0 <= b < N_BUCKETS:
        raise ValueError(f"tow_bucket {b} outside 0..{N_BUCKETS - 1}")
    day, minute = divmod(b, BUCKETS_PER_DAY)
    minute *= BUCKET_MINUTES
    return f"{DAYS[day]} {minute // 60:02d}:{minute % 60:02d}"


def parse_many(values: Sequence[str] | str | None, default: Sequence[str]) -> list[int]:
    """Repeated/comma-separated --at values -> buckets, in the order given (default when none)."""
    if values is None:
        values = list(default)
    if isinstance(values, str):
        values = [values]
    texts = [t for v in values for t in str(v).split(",") if t.strip()]
    if not texts:
        raise UserError("--at needs at least one time of week, e.g. 'Fri 08:00'")
    return [parse_time_of_week(t) for t in texts]
