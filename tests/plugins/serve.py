"""Shared pytest fixtures: serve (a warehouse built from fixtures/publish_estimates, a private PostGIS cluster,
headless Chromium)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "fixtures" / "publish_estimates"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
WINDOW = "2026-11-01..2026-11-28"


def _missing(what: str) -> None:
    """Missing system dependency: always an error, never a skip (`make setup` installs the Debian packages)."""
    pytest.fail(f"{what} (run `make setup` as root, which installs the Debian packages)")


def profile_kph(free_flow_kph: float, buckets: np.ndarray) -> np.ndarray:
    """The fixture's weekly speed profile: weekday dips near 08:00 and 18:00, free flow at night."""
    day, minute = np.divmod(buckets, 288)
    h = minute * 5 / 60.0
    weekday = (day >= 1) & (day <= 5)
    dip = np.where(weekday,
                   0.65 * np.exp(-0.5 * ((h - 8) / 1.0) ** 2) + 0.55 * np.exp(-0.5 * ((h - 18) / 1.2) ** 2),
                   0.15 * np.exp(-0.5 * ((h - 13) / 2.0) ** 2))
    return free_flow_kph * (1 - dip)


def traces_of(buckets: np.ndarray) -> np.ndarray:
    """Distinct traces per bucket in the fixture: ~31 at midday, < 3 at night."""
    h = (buckets % 288) * 5 / 60.0
    return np.round(1 + 30 * np.exp(-0.5 * ((h - 13) / 4.0) ** 2)).astype("int64")


def estimates_frame(seg: dict):
    """All 2016 speed_estimates rows of one fixture segment (pandas)."""
    import pandas as pd

    b = np.arange(2016)
    speed = profile_kph(seg["free_flow_kph"], b)
    n_traces = traces_of(b)
    prior = seg.get("source") == "road_class_prior"
    source = np.where(n_traces >= 3, "observed", "neighbour_buckets")
    return pd.DataFrame({
        "segment_id": np.int64(seg["segment_id"]),
        "tow_bucket": b.astype("int16"),
        "speed_kph": np.round(speed if not prior else np.full(2016, seg["free_flow_kph"] * 0.8), 2),
        "p15_kph": np.full(2016, np.nan) if prior else np.round(speed * 0.8, 2),
        "p85_kph": np.full(2016, np.nan) if prior else np.round(speed * 1.15, 2),
        "mean_kph": np.round(speed, 2),
        "harmonic_mean_kph": np.round(speed * 0.97, 2),
        "n_obs": 0 if prior else n_traces * 2,
        "n_traces": 0 if prior else n_traces,
        "confidence": 0.1 if prior else np.round(np.minimum(1.0, n_traces / 33.0) * 0.95, 3),
        "free_flow_kph": float(seg["free_flow_kph"]),
        "source": "road_class_prior" if prior else source,
        "window": WINDOW,
    })


def fixture_segments() -> list[dict]:
    return json.loads((FIXTURE / "input" / "road_segments.json").read_text())


def _length_m(lon, lat) -> float:
    from speedprofile.network.graph import haversine_m

    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    return float(haversine_m(lon[:-1], lat[:-1], lon[1:], lat[1:]).sum())


def write_warehouse(root: Path, segments: list[dict], estimates, bad_rows: bool = False) -> Path:
    """Commit road_segments + speed_estimates to the warehouse at root (through the table layer) and write the
    partition list."""
    import pandas as pd

    from tests.seed import commit_pandas

    rs = pd.DataFrame([{
        "segment_id": s["segment_id"], "osm_way_id": s["osm_way_id"], "from_node_id": s["from_node_id"],
        "to_node_id": s["to_node_id"], "reverse_segment_id": s["reverse_segment_id"],
        "length_m": _length_m(s["lon"], s["lat"]), "road_class": s["road_class"],
        "maxspeed_kph": s["maxspeed_kph"], "name": s["name"], "is_oneway": s["is_oneway"],
        "geom_lon_deg": s["lon"], "geom_lat_deg": s["lat"], "timezone": "Europe/Lisbon", "partition": s["partition"],
    } for s in segments])
    commit_pandas(root, "road_segments", rs)
    cells = sorted(rs["partition"].unique())
    (root / "road_segments" / "_partitions.json").write_text(json.dumps(
        {"h3_res": 7, "partitions": [{"cell": c} for c in cells]}))
    part_of = dict(zip(rs["segment_id"], rs["partition"], strict=True))
    est = estimates.copy()
    est["partition"] = est["segment_id"].map(part_of)
    if bad_rows:
        first = segments[0]["partition"]
        bad = est[est["partition"] == first].head(4).copy()
        bad.iloc[0, bad.columns.get_loc("segment_id")] = 999          # no_segment
        bad.iloc[1, bad.columns.get_loc("tow_bucket")] = 2016         # bad_bucket
        bad.iloc[2, bad.columns.get_loc("speed_kph")] = np.nan        # null_speed
        est = pd.concat([est, bad], ignore_index=True)                # row 4: duplicate_key
        est["partition"] = est["partition"].fillna(first)
    commit_pandas(root, "speed_estimates", est)
    return root


def make_serve_warehouse(root: Path, bad_rows: bool = False) -> Path:
    """The fixtures/publish_estimates warehouse: 8 segments in 2 partitions, 2016 buckets each."""
    import pandas as pd

    segs = fixture_segments()
    return write_warehouse(root, segs, pd.concat([estimates_frame(s) for s in segs], ignore_index=True), bad_rows)


def make_grid_warehouse(root: Path, n_segments: int = 1000, cells: int = 1) -> Path:
    """A synthetic grid network of n_segments two-way segments (for throughput runs), 2016 buckets each."""
    import pandas as pd

    side = int(np.ceil(np.sqrt(n_segments / 2))) + 1
    segs = []
    sid = 1
    for i in range(side):
        for j in range(side):
            for di, dj in ((1, 0), (0, 1)):
                if len(segs) >= n_segments or i + di >= side or j + dj >= side:
                    continue
                a, b = i * side + j, (i + di) * side + (j + dj)
                lon = [-8.65 + j * 0.002, -8.65 + (j + dj) * 0.002]
                lat = [41.14 + i * 0.0015, 41.14 + (i + di) * 0.0015]
                ff = 30.0 + 10 * ((i + j) % 5)
                for fwd in (True, False):
                    segs.append({
                        "segment_id": sid, "osm_way_id": 10_000 + len(segs) // 2, "from_node_id": a if fwd else b,
                        "to_node_id": b if fwd else a, "reverse_segment_id": sid + 1 if fwd else sid - 1,
                        "road_class": "residential", "maxspeed_kph": 50.0, "name": f"Rua {i}-{j}", "is_oneway": False,
                        "free_flow_kph": ff, "partition": f"cell{(sid // 2) % cells}",
                        "lon": lon if fwd else lon[::-1], "lat": lat if fwd else lat[::-1],
                    })
                    sid += 1
    segs = segs[:n_segments]
    return write_warehouse(root, segs, pd.concat([estimates_frame(s) for s in segs], ignore_index=True))


@pytest.fixture
def serve_warehouse(tmp_path) -> Path:
    return make_serve_warehouse(tmp_path / "warehouse")


# --- PostgreSQL + PostGIS: a private cluster for the test session --------------------------------------------


def pg_bindir() -> Path | None:
    """Directory with initdb/pg_ctl/postgres ($PG_BINDIR, else the newest /usr/lib/postgresql/*/bin)."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateCluster:
    """initdb + pg_ctl in a temp folder on 127.0.0.1:<free port> (as the `postgres` OS user when run as root)."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="speedprofile-pg-"))
        self.data, self.sock, self.log = self.root / "data", self.root / "sock", self.root / "server.log"
        self.sock.mkdir()
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
            os.chmod(self.root, 0o755)

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        full = [str(self.bindir / cmd[0]), *cmd[1:]]
        if self.as_postgres:
            full = ["runuser", "-u", "postgres", "--", *full]
        return subprocess.run(full, capture_output=True, text=True, timeout=120, cwd=self.root)

    def start(self) -> str:
        r = self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()}")
        opts = (f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        r = self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "-t", "60", "start")
        if r.returncode:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()} {log[-500:]}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster():
    """DSN of a private PostgreSQL cluster with PostGIS available; stopped at the end of the session."""
    bindir = pg_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        _missing("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin; Debian package 'postgresql')")
    version = bindir.parts[-2]
    if not glob.glob(f"/usr/share/postgresql/{version}/extension/postgis.control"):
        _missing(f"PostGIS for PostgreSQL {version} not installed (Debian package 'postgresql-{version}-postgis-3')")
    cluster = PrivateCluster(bindir)
    try:
        dsn = cluster.start()
    except Exception:
        cluster.stop()
        raise
    yield dsn
    cluster.stop()


@pytest.fixture
def postgis_dsn(postgres_cluster):
    """A fresh empty database in the session cluster (PostGIS not yet created: publish creates it)."""
    import psycopg2

    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(postgres_cluster)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    yield postgres_cluster.rsplit("/", 1)[0] + f"/{name}"
    conn = psycopg2.connect(postgres_cluster)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    conn.close()


@pytest.fixture(scope="session")
def chromium_bin() -> str:
    """Path of the headless-capable Chromium (Debian package 'chromium')."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    _missing("Chromium not found (Debian package 'chromium')")
    raise AssertionError("unreachable")
