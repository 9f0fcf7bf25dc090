"""Shared pytest fixtures: ingest (warehouses ready to ingest into, and the ingest fixture folder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

INGEST_FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "ingest_probes"


@pytest.fixture(scope="session")
def ingest_fixtures() -> Path:
    """fixtures/ingest_probes (input/, expected/)."""
    return INGEST_FIXTURES


# The area the ingest fixtures drive in (central Porto), lon/lat degrees: its cells are the test network's partitions.
FIXTURE_AREA = ((-8.70, 41.10), (-8.50, 41.20))


def area_cells(h3_res: int, area: tuple[tuple[float, float], tuple[float, float]] = FIXTURE_AREA) -> list[str]:
    """H3 cells covering a lon/lat box."""
    import h3

    (lon0, lat0), (lon1, lat1) = area
    box = h3.LatLngPoly([(lat0, lon0), (lat0, lon1), (lat1, lon1), (lat1, lon0)])
    return sorted(h3.polygon_to_cells(box, h3_res))


def make_partition_only_warehouse(root: Path, h3_res: int, cells: list[str] | None = None) -> str:
    """A warehouse with only road_segments/_partitions.json (enough for ingest of non-pre-matched formats); its
    partitions are `cells`, by default the cells of FIXTURE_AREA."""
    cells = area_cells(h3_res) if cells is None else cells
    (root / "road_segments").mkdir(parents=True, exist_ok=True)
    (root / "road_segments" / "_partitions.json").write_text(json.dumps(
        {"h3_res": h3_res, "partitions": [{"cell": c} for c in cells]}))
    return str(root)


@pytest.fixture
def ingest_warehouse(tmp_path) -> str:
    """An empty warehouse at H3 resolution 9 (cells ~0.1 km^2, so a 3 km drive crosses several partitions)."""
    return make_partition_only_warehouse(tmp_path / "wh", 9)


@pytest.fixture
def ingest_network_warehouse(tmp_path, tiny_network_warehouse) -> str:
    """A private copy of the tiny grid network warehouse (road_segments, res 7) to ingest trips-json into."""
    from speedprofile import tables

    dst = tmp_path / "wh_net"
    (dst / "road_segments").mkdir(parents=True)
    shutil.copy(Path(tiny_network_warehouse) / "road_segments" / "_partitions.json", dst / "road_segments")
    tables.write_arrow(str(dst), "road_segments", tables.read_arrow(tiny_network_warehouse, "road_segments"), [{}])
    return str(dst)
