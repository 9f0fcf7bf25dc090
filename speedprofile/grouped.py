"""Arrow batches of a Spark task sorted by a group key -> tables of whole groups of bounded size.

A task that needs every row of a group at once (a trace piece, a segment) but not every group of the task reads
its rows sorted by the key (`sortWithinPartitions`) and works on one table of whole groups at a time, so its
memory follows the chunk size and the largest group, not the task's input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def last_group_start(table: pa.Table, keys: Sequence[str]) -> int:
    """Row where the last group of a table sorted by `keys` begins (0 when the table holds one group)."""
    n = table.num_rows
    same = np.ones(n, dtype=bool)
    for key in keys:
        col = table.column(key)
        last = col[n - 1]
        eq = pc.equal(col, last) if last.is_valid else pc.is_null(col)
        same &= pc.fill_null(eq, False).to_numpy(zero_copy_only=False)
    other = np.flatnonzero(~same)
    return int(other[-1]) + 1 if len(other) else 0


def whole_groups(batches: Iterable[pa.RecordBatch], keys: Sequence[str], chunk_rows: int) -> Iterator[pa.Table]:
    """Tables of at least `chunk_rows` rows (the last one may be smaller) holding only whole groups of `keys`,
    from batches sorted by `keys`; a group larger than chunk_rows comes as one table."""
    held: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        held.append(batch)
        rows += batch.num_rows
        if rows < chunk_rows:
            continue
        table = pa.Table.from_batches(held)
        cut = last_group_start(table, keys)
        if cut:
            yield table.slice(0, cut)
            held = table.slice(cut).to_batches()
            rows = table.num_rows - cut
    if rows:
        yield pa.Table.from_batches(held)
