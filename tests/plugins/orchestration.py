"""Shared pytest fixtures: orchestration (isolated Airflow home, Airflow CLI runner, partition lists)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
AIRFLOW = str(VENV_BIN / "airflow")


def write_partitions(warehouse: Path, cells: list[str], h3_res: int = 7) -> Path:
    """A `_partitions.json` as `network build` writes it (only what the DAGs read)."""
    path = warehouse / "road_segments" / "_partitions.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"h3_res": h3_res, "partitions": [{"cell": c} for c in cells]}))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow_env(home: Path, warehouse: Path | str, port: int = 8080) -> dict[str, str]:
    """Environment of every Airflow process in the tests: isolated home + SQLite DB, this repo's DAGs, local Spark."""
    env = dict(os.environ)
    for k in [k for k in env if k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))]:
        del env[k]
    secret = (home / ".secret").read_text().strip() if (home / ".secret").exists() else "speedprofile-tests"
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # SQLite: wait up to 60 s for a lock (scheduler, DAG processor and the CLI write concurrently).
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db?timeout=60",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret,
        "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "True",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "SPEEDPROFILE_WAREHOUSE": str(warehouse),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TZ": "UTC",
    })
    env.pop("SPEEDPROFILE_PG_DSN", None)  # publish stays a visible no-op unless a test sets one
    return env


def spark_connect_conn(url: str) -> str:
    """AIRFLOW_CONN_SPARK_DEFAULT for a Spark Connect server (the Spark provider's `spark_connect` type)."""
    host, port = url.removeprefix("sc://").split(":")
    return json.dumps({"conn_type": "spark_connect", "host": host, "port": int(port)})


@pytest.fixture(scope="session")
def connect_url(tmp_path_factory):
    """A real Spark Connect server (`speedprofile server`) on 127.0.0.1, shared by the tests that run stages
    through Airflow on it (one JVM start instead of one per stage); stopped at the end of the session."""
    from speedprofile import server

    port = free_port()
    state = tmp_path_factory.mktemp("connect_server")
    url = server.start(port=port, master="local[2]", state=str(state), timeout=300)
    yield url
    server.stop(port, str(state))
    assert not server.answering("127.0.0.1", port)


@pytest.fixture(scope="session")
def airflow_home_template(tmp_path_factory) -> Path:
    """An Airflow home with a migrated SQLite metadata DB (migrated once per test session; never run in)."""
    home = tmp_path_factory.mktemp("airflow_home_template")
    (home / ".secret").write_text(secrets.token_hex(16))
    env = airflow_env(home, home / "no-warehouse")
    proc = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return home


def clone_airflow_home(template: Path, dest: Path) -> Path:
    """A fresh Airflow home: a copy of the migrated template DB (runs of one test never leak into another)."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(template / "airflow.db", dest / "airflow.db")
    shutil.copy(template / ".secret", dest / ".secret")
    return dest


@pytest.fixture
def airflow_home(airflow_home_template, tmp_path) -> Path:
    """A per-test Airflow home with a migrated, empty metadata DB."""
    return clone_airflow_home(airflow_home_template, tmp_path / "airflow_home")


def run_airflow(home: Path, args: list[str], warehouse: Path | str, timeout: float = 600, port: int = 8080,
                check: bool = True) -> subprocess.CompletedProcess:
    """Run `airflow ARGS...` with the given Airflow home and warehouse; fails the test with the output on error."""
    proc = subprocess.run([AIRFLOW, *args], env=airflow_env(home, warehouse, port), cwd=str(REPO),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"airflow {' '.join(args)} exited {proc.returncode}; key lines:\n{key_lines(proc.stdout + proc.stderr)}"
                    f"\n--- end of output ---\n{(proc.stdout + proc.stderr)[-2500:]}")
    return proc


def key_lines(output: str, limit: int = 40) -> str:
    """The lines of an Airflow/Spark log that say what went wrong (gate messages, app errors, task failures)."""
    import re

    pat = re.compile(r"quality gate|^\s*- |Cannot execute|error:|Error: |Exception: |new_state=(failed|up_for_retry)")
    hits = [ln.split(" [airflow.")[0][-400:] for ln in output.splitlines() if pat.search(ln)]
    return "\n".join(list(dict.fromkeys(hits))[-limit:])


SIM_DAYS = ("2026-11-02", "2026-11-03")  # simulate's default start (a Monday) and the day after
E2E_CELL = "8739220f1ffffff"  # the tiny grid's central partition (54 of its 72 segments)


@pytest.fixture(scope="session")
def airflow_warehouse_template(tmp_path_factory, airflow_home_template) -> dict:
    """The tiny Porto grid + a simulated fleet (2 days) ingested through the `ingest_probes` DAG, built once.

    Both days' probe files land in one landing folder (dt=2026-11-03), so one `airflow dags test ingest_probes`
    run ingests both days. Tests copy the warehouse (`airflow_warehouse`) before writing to it.
    """
    import shutil

    from speedprofile.cli import main as sp

    base = tmp_path_factory.mktemp("airflow_e2e")
    wh, sim = base / "warehouse", base / "sim"
    nodes = REPO / "fixtures" / "build_network" / "input"
    assert sp(["network", "build", "--warehouse", str(wh), "--nodes", str(nodes / "tiny.nodes"),
               "--arcs", str(nodes / "tiny.arcs.gz")]) == 0
    assert sp(["simulate", "--warehouse", str(wh), "--days", "2", "--vehicles", "4", "--seed", "3",
               "--start-date", SIM_DAYS[0], "--out", str(sim)]) == 0
    landing = wh / "landing" / f"dt={SIM_DAYS[1]}"
    landing.mkdir(parents=True)
    for f in sorted((sim / "probes").iterdir()):
        shutil.copy(f, landing / f.name)
    # Data interval [2026-11-03, 2026-11-04): the run reads landing/dt=2026-11-03.
    home = clone_airflow_home(airflow_home_template, base / "airflow_home")
    proc = run_airflow(home, ["dags", "test", "ingest_probes", "2026-11-04"], wh, timeout=900)
    return {"warehouse": wh, "sim": sim, "ingest_output": proc.stdout + proc.stderr}


@pytest.fixture
def airflow_warehouse(airflow_warehouse_template, tmp_path) -> Path:
    """A private copy of the ingested e2e warehouse."""
    from tests.seed import copy_warehouse

    return copy_warehouse(airflow_warehouse_template["warehouse"], tmp_path / "warehouse")


def partition_rows(warehouse: Path, table: str) -> dict[str, int]:
    """Committed rows per partition of a table, keyed `k1=v1/k2=v2` (partition keys in the table's order)."""
    from schemas import TABLES
    from speedprofile import tables

    keys = list(TABLES[table].partition_by)
    got = tables.read_pandas(str(warehouse), table, columns=keys)
    if got.empty:
        return {}
    sizes = got.astype(str).groupby(keys).size()
    return {"/".join(f"{k}={v}" for k, v in zip(keys, idx if isinstance(idx, tuple) else (idx,), strict=True)): int(n)
            for idx, n in sorted(sizes.items())}


def partition_folders(warehouse: Path, table: str) -> list[str]:
    """Partitions of a table that hold committed rows (`k1=v1/k2=v2`), sorted."""
    return sorted(partition_rows(warehouse, table))


SERVICES = ("api-server", "scheduler", "dag-processor")


def wait_for(what: str, check, timeout_s: float, every_s: float = 3.0, on_timeout=lambda: ""):
    """Poll `check()` until it returns something truthy; fail with `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}\n{on_timeout()}")


@contextlib.contextmanager
def airflow_services(home: Path, warehouse: Path, extra_env: dict[str, str] | None = None):
    """API server, scheduler and DAG processor on a free port, each in its own process group; stopped by PID.
    Yields {"port", "env", "procs"} once the API server reports the metadata DB and the scheduler healthy."""
    port = free_port()
    env = {**airflow_env(home, warehouse, port), **(extra_env or {})}
    procs: list[subprocess.Popen] = []
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    try:
        for svc in SERVICES:
            with open(logs / f"{svc}.out", "w") as out:
                procs.append(subprocess.Popen([AIRFLOW, svc], env=env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))

        def healthy():
            for p, svc in zip(procs, SERVICES, strict=True):
                if p.poll() is not None:
                    pytest.fail(f"airflow {svc} exited with {p.returncode}:\n{(logs / f'{svc}.out').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=3) as r:
                    h = json.load(r)
                return h["metadatabase"]["status"] == "healthy" and h["scheduler"]["status"] == "healthy"
            except (OSError, ValueError, KeyError):
                return False

        wait_for("the API server and scheduler to report healthy", healthy, 240)
        yield {"port": port, "env": env, "procs": procs}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
