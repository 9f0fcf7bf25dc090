"""Shared pytest fixtures: matching (tiny hand-made network + traces, and a warehouse holding them)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

FIXTURE_DT = "2026-03-24"  # the day of the matching cases (the aggregation drives come on later days)
FIXTURE_CELL = "8739220f0ffffff"


def _fixture_dir(repo: Path) -> Path:
    return repo / "fixtures" / "match_traces"


def load_fixture_segments(folder: Path):
    """fixtures/match_traces/input/road_segments.jsonl -> road_segments pyarrow.Table."""
    from tests.plugins.aggregation import read_jsonl_table

    return read_jsonl_table(folder / "input" / "road_segments.jsonl", "road_segments")


def load_fixture_probes(folder: Path) -> pd.DataFrame:
    """fixtures/match_traces/input/probes.jsonl (= ingest_probes' expected output) -> probes rows (PROBES columns)."""
    from tests.plugins.aggregation import read_jsonl_table

    df = read_jsonl_table(folder / "input" / "probes.jsonl", "probes").to_pandas()
    return df.astype({"prematched_segment_id": "Int64"})


def load_by_hand(folder: Path) -> pd.DataFrame:
    """Traversals worked out by hand: enter_s/exit_s after the trace's first fix, rounded speeds."""
    return pd.read_csv(folder / "expected" / "segment_traversals_by_hand.csv", dtype={"trace_id": str}, comment="#")


@pytest.fixture(scope="session")
def match_fixture_dir(repo) -> Path:
    return _fixture_dir(repo)


@pytest.fixture(scope="session")
def match_segments(match_fixture_dir):
    return load_fixture_segments(match_fixture_dir)


@pytest.fixture(scope="session")
def match_probes(match_fixture_dir) -> pd.DataFrame:
    return load_fixture_probes(match_fixture_dir)


@pytest.fixture(scope="session")
def match_by_hand(match_fixture_dir) -> pd.DataFrame:
    return load_by_hand(match_fixture_dir)


def write_fixture_network(root: str, segments) -> str:
    """The fixture network as the warehouse's road_segments (and _partitions.json, H3 resolution 7)."""
    from speedprofile.network.graph import write_road_segments

    write_road_segments(segments, root, 7, "fixtures/match_traces")
    return root


def make_match_warehouse(root: str, segments, probes: pd.DataFrame) -> str:
    """The fixture network (road_segments, _partitions.json) and fixes (the whole probes table) in a warehouse."""
    from tests.seed import commit_pandas

    write_fixture_network(root, segments)
    commit_pandas(root, "probes", probes)
    return root


@pytest.fixture(scope="session")
def match_warehouse(tmp_path_factory, match_segments, match_probes) -> str:
    """A warehouse with the fixture network (road_segments) and fixes (probes)."""
    return make_match_warehouse(str(tmp_path_factory.mktemp("match_wh")), match_segments, match_probes)
