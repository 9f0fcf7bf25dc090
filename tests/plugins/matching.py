"""Shared pytest fixtures: matching (tiny hand-made network + traces, and a warehouse holding them)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

FIXTURE_DT = "2024-05-06"
FIXTURE_CELL = "8739220f0ffffff"


def _fixture_dir(repo: Path) -> Path:
    return repo / "fixtures" / "match_traces"


def load_fixture_segments(folder: Path):
    """fixtures/match_traces/input/road_segments.csv -> road_segments pyarrow.Table (lengths, H3 res-7 cells)."""
    from speedprofile.network.graph import reverse_of, segments_table

    with open(folder / "input" / "road_segments.csv") as fh:
        rows = list(csv.DictReader(fh))
    ids = np.array([int(r["segment_id"]) for r in rows], np.int64)
    src = np.array([int(r["from_node_id"]) for r in rows], np.int64)
    dst = np.array([int(r["to_node_id"]) for r in rows], np.int64)
    lon, lat, offsets = [], [], [0]
    for r in rows:
        for pair in r["geom_lonlat"].split(";"):
            x, y = pair.split()
            lon.append(float(x))
            lat.append(float(y))
        offsets.append(len(lon))
    oneway = np.array([r["is_oneway"] == "true" for r in rows])
    rev = np.where(oneway, -1, reverse_of(src, dst, ids))
    cols = {"segment_id": ids, "osm_way_id": None, "from_node_id": src, "to_node_id": dst,
            "reverse_segment_id": rev, "road_class": np.full(len(ids), "residential", dtype=object),
            "name": None, "is_oneway": oneway}
    return segments_table(cols, np.array(offsets), np.array(lon), np.array(lat), 7)


def load_fixture_probes(folder: Path) -> pd.DataFrame:
    """fixtures/match_traces/input/probes.csv -> probes rows (PROBES columns; src, dt and partition filled in)."""
    df = pd.read_csv(folder / "input" / "probes.csv", dtype={"trace_id": str})
    out = pd.DataFrame({
        "trace_id": df["trace_id"],
        "piece": df["piece"].astype("int32"),
        "timestamp_utc": pd.to_datetime(df["timestamp_utc"], utc=True).astype("datetime64[us, UTC]"),
        "lon_deg": df["lon_deg"].astype(float),
        "lat_deg": df["lat_deg"].astype(float),
        "speed_kph": df["speed_kph"].astype(float),
        "heading_deg": np.nan,
        "accuracy_m": np.nan,
        "prematched_segment_id": df["prematched_segment_id"].astype("Int64"),
        "is_context": df["is_context"].astype(str).str.lower() == "true",
        "source_file": df["source_file"],
        "source_row": df["source_row"].astype("int64"),
        # a stand-in for the content key: the fixture has no raw files to hash
        "src": df["source_file"].map(lambda f: hashlib.sha256(f.encode()).hexdigest()[:16]),
        "dt": pd.Timestamp(FIXTURE_DT).date(),
        "partition": FIXTURE_CELL,
    })
    return out


def load_expected(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "expected" / "segment_traversals.csv", dtype={"trace_id": str}, comment="#")


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
def match_expected(match_fixture_dir) -> pd.DataFrame:
    return load_expected(match_fixture_dir)


def make_match_warehouse(root: str, segments, probes: pd.DataFrame) -> str:
    """The fixture network (road_segments) and fixes (probes dt=2024-05-06) committed to a warehouse at root."""
    from speedprofile.network.graph import write_road_segments
    from tests.seed import commit_pandas

    write_road_segments(segments, root, 7, "fixtures/match_traces")
    commit_pandas(root, "probes", probes, replace=[{"dt": FIXTURE_DT, "partition": FIXTURE_CELL}])
    return root


@pytest.fixture(scope="session")
def match_warehouse(tmp_path_factory, match_segments, match_probes) -> str:
    """A warehouse with the fixture network (road_segments) and fixes (probes dt=2024-05-06)."""
    return make_match_warehouse(str(tmp_path_factory.mktemp("match_wh")), match_segments, match_probes)
