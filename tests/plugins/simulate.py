"""Shared pytest fixtures: simulate (small simulated fleets with probes, truth and truth paths)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_simulation(tmp_path_factory, tiny_network_warehouse) -> str:
    """Output folder of a 1-day, 6-vehicle fleet on the tiny grid network (seed 11, 10 s fixes, 5 m noise)."""
    from speedprofile.simulate.fleet import simulate

    out = tmp_path_factory.mktemp("tiny_simulation")
    simulate(tiny_network_warehouse, str(out), days=1, vehicles=6, seed=11)
    return str(out)


@pytest.fixture(scope="session")
def porto_simulation(tmp_path_factory, porto_warehouse) -> str:
    """Output folder of a 1-day, 20-vehicle fleet on the Porto network (seed 7, 10 s fixes, 5 m noise)."""
    from speedprofile.simulate.fleet import simulate

    out = tmp_path_factory.mktemp("porto_simulation")
    simulate(porto_warehouse, str(out), days=1, vehicles=20, seed=7)
    return str(out)
