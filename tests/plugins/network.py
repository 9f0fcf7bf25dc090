"""Shared pytest fixtures: network (warehouses with a built road_segments table)."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "build_network" / "input"


@pytest.fixture(scope="session")
def porto_warehouse(tmp_path_factory, data_dir) -> str:
    """A warehouse with road_segments built once per session from the real Porto OSM extract (h3 res 7)."""
    from speedprofile.network.build import build

    wh = tmp_path_factory.mktemp("porto_warehouse")
    build(str(wh), osm=str(data_dir / "osm_porto" / "porto.osm.pbf"))
    return str(wh)


@pytest.fixture(scope="session")
def tiny_network_warehouse(tmp_path_factory) -> str:
    """A warehouse built from the hand-made 5x5 grid graph (72 arcs, 3 partitions) in fixtures/build_network."""
    from speedprofile.network.build import build

    wh = tmp_path_factory.mktemp("tiny_network_warehouse")
    build(str(wh), nodes=str(FIXTURES / "tiny.nodes"), arcs=str(FIXTURES / "tiny.arcs.gz"))
    return str(wh)
