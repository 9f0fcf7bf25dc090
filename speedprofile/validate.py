"""Names that become warehouse paths, checked before any path is built: H3 cells (partitions) and UTC dates.

A cell is 15 lowercase hex digits that H3 accepts as a cell index; a date is YYYY-MM-DD and a real calendar day.
Anything else is a one-line UserError naming the flag or file it came from.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from datetime import date

from speedprofile.errors import UserError

CELL_RE = re.compile(r"[0-9a-f]{15}")
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_cell(value: object) -> bool:
    """True for the string form of a valid H3 cell index (not an edge or vertex index)."""
    import h3

    return isinstance(value, str) and CELL_RE.fullmatch(value) is not None and bool(h3.is_valid_cell(value))


def cell(value: object, what: str = "--partition") -> str:
    """The cell itself if `value` is a valid H3 cell, else a UserError."""
    if not is_cell(value):
        raise UserError(f"{what}: {_show(value)} is not an H3 cell (15 lowercase hex digits, e.g. 871e9a0ecffffff)")
    return str(value)


def cells(values: str | Iterable[str], network: Collection[str] | None = None, what: str = "--partition") -> list[str]:
    """Comma-separated text or a list of cells -> the validated cells in order (duplicates dropped).

    With `network` (the cells of road_segments/_partitions.json) every cell must also be one of them.
    """
    items = values.split(",") if isinstance(values, str) else list(values)
    out: list[str] = []
    for raw in items:
        c = raw.strip() if isinstance(raw, str) else raw
        if c == "":
            continue
        c = cell(c, what)
        if network is not None and c not in network:
            raise UserError(f"{what}: {c} is not a partition of the network ({len(network)} cells in "
                            "road_segments/_partitions.json)")
        if c not in out:
            out.append(c)
    if not out:
        raise UserError(f"{what} names no cell")
    return out


def day(value: object, what: str = "--date") -> date:
    """A date object from YYYY-MM-DD text (or a date), else a UserError."""
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or DATE_RE.fullmatch(value) is None:
        raise UserError(f"{what}: {_show(value)} is not a date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise UserError(f"{what}: {_show(value)} is not a date ({exc})") from exc


def partition_list(doc: object, source: str = "_partitions.json") -> list[str]:
    """The cells of a partition list document ({"partitions": [{"cell": ...}, ...]}), each one validated."""
    try:
        entries = doc["partitions"]  # type: ignore[index]
        raw = [p["cell"] for p in entries]
    except (KeyError, TypeError) as exc:
        raise UserError(f"{source}: not a partition list ({{\"partitions\": [{{\"cell\": ...}}]}})") from exc
    return [cell(c, source) for c in raw]
