"""Several hosts, real faults: the Spark master, two workers and a 4-node erasure-coded MinIO each in their own network
namespace (tests/plugins/netns.py), the driver (`speedprofile run`, client mode) in the root namespace on the bridge
address. A worker SIGKILLed mid-stage, a storage node SIGKILLed during a run, and a master cut off the network (the
run fails with one clear line, the retry succeeds): every stage table then equals a local run's, row for row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from speedprofile import storage, tables
from speedprofile.cli import main as sp
from speedprofile.run import STAGES
from speedprofile.warehouse import partition_cells
from tests.plugins.infra import ClusterLog, load_cluster_module
from tests.plugins.objectstore import NODES, MinioCluster, running
from tests.plugins.orchestration import SIM_DAYS
from tests.seed import table_rows

pytestmark = pytest.mark.slow

DAY = SIM_DAYS[0]  # one day: each run stays well under a minute per fault
RUN_ARGS = ["run", "--date", DAY, "--window-weeks", "1"]
RUN_TIMEOUT_S = 600  # a loaded 2-core machine: one run took 4-6 min here
SPEEDPROFILE = str(Path(sys.executable).with_name("speedprofile"))


STAGE_TABLES = ("segment_traversals", "bucketed_traversals", "speed_histograms", "speed_estimates")


@contextmanager
def environ(extra: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _write_inputs(src: Path, inputs: dict, dst: str) -> None:
    """The stage inputs of a local warehouse (partition list, road_segments, probes rows) into dst."""
    storage.write_text(f"{dst}/road_segments/_partitions.json",
                       (src / "road_segments" / "_partitions.json").read_text())
    for name, rows in inputs.items():
        tables.write_arrow(dst, name, rows, replace=[{}])


class _StoreHosts:
    """The first NODES hosts of the lab, as MinioCluster wants its lab: node i on hosts[i - 1]."""

    def __init__(self, lab):
        self._lab = lab
        self.hosts = lab.hosts[:NODES]

    def popen(self, host, argv, **kw):
        return self._lab.popen(host, argv, **kw)


@pytest.fixture(scope="module")
def lab(netns_factory):
    """Hosts 1-4: MinIO nodes; 5: Spark master; 6, 7: workers. One bridge, so every host reaches every other."""
    return netns_factory(NODES + 3)


@pytest.fixture(scope="module")
def store(lab, minio_binary_path, tmp_path_factory) -> Iterator[MinioCluster]:
    with running(MinioCluster(_StoreHosts(lab), minio_binary_path, tmp_path_factory.mktemp("hosts-minio"))) as cluster:
        yield cluster


def store_env(store: MinioCluster) -> dict[str, str]:
    """Keys and endpoint (node 1; the faults hit other nodes) for the driver, the daemons and pyiceberg."""
    return {"AWS_ACCESS_KEY_ID": store.access_key, "AWS_SECRET_ACCESS_KEY": store.secret_key,
            "AWS_ENDPOINT_URL": store.endpoint(1), "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def spark_hosts(lab, store, tmp_path_factory):
    """A secured standalone cluster: master in host 5, workers in hosts 6 and 7; the workers' environment holds the
    object store's keys (their executors read and write s3a://)."""
    mod = load_cluster_module()
    state = tmp_path_factory.mktemp("hosts-spark")
    log = ClusterLog(state / "cluster-test.log")
    cluster = mod.Cluster(state_dir=str(state), auth=True)
    placement = [(h.address, h.argv([])) for h in lab.hosts[NODES:]]
    t0 = time.time()
    with environ(store_env(store)):
        cluster.start(workers=2, cores=1, memory="1g", placement=placement)
    cluster.log = log
    log(f"cluster up in {time.time() - t0:.1f}s: master {cluster.url}, workers "
        + ", ".join(f"{w.worker_id} at {w.host}" for w in cluster.workers))
    try:
        yield cluster
    finally:
        pids = cluster.stop()
        assert not [p for p in pids if mod.pid_alive(p)]


@pytest.fixture(scope="module")
def reference(airflow_warehouse_template, tmp_path_factory) -> tuple[Path, dict[str, list[str]], dict]:
    """The same stages in local mode (local[2], local warehouse and catalog): the rows every fault run must give,
    and the stage inputs (read here, while the local catalog is the one in use)."""
    from tests.seed import copy_warehouse

    wh = copy_warehouse(airflow_warehouse_template["warehouse"], tmp_path_factory.mktemp("hosts-ref") / "wh")
    saved = os.environ.pop(tables.CATALOG_ENV, None)
    try:
        assert sp([*RUN_ARGS, "--all", "--warehouse", str(wh), "--master", "local[2]"]) == 0
        rows = {t: table_rows(str(wh), t) for t in STAGE_TABLES}
        inputs = {name: tables.read_arrow(str(wh), name) for name in ("road_segments", "probes")}
    finally:
        if saved is not None:
            os.environ[tables.CATALOG_ENV] = saved
    for t in STAGE_TABLES:
        assert rows[t], f"reference run wrote no {t}"
    return wh, rows, inputs


@pytest.fixture
def s3_env(store, monkeypatch, tmp_path):
    """This process sees the store and a catalog of its own (SQLite file), as the driver does."""
    for k, v in store_env(store).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv(tables.CATALOG_ENV, str(tmp_path / "catalog.db"))
    storage._remote_fs.cache_clear()
    yield
    storage._remote_fs.cache_clear()


def new_warehouse(store: MinioCluster, reference) -> str:
    """A fresh s3a:// warehouse holding the stage inputs of the reference warehouse."""
    wh = f"s3a://{store.bucket}/hosts-{uuid.uuid4().hex[:8]}"
    _write_inputs(Path(reference[0]), reference[2], wh)
    return wh


def start_run(lab, spark_hosts, reference, wh: str, log_dir: Path, *extra: str) -> subprocess.Popen:
    """`speedprofile run` against the master, as a user starts it: driver in the root namespace on the bridge
    address (executors in the workers' namespaces connect back to it)."""
    env = {**os.environ, "SPARK_CONF_DIR": str(spark_hosts.conf_dir), "SPARK_LOCAL_IP": lab.gateway,
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    env.pop("SPEEDPROFILE_DEBUG", None)
    # An s3a:// warehouse has no local partition list: the cells are named (those of the reference's network).
    cells = ",".join(partition_cells(str(reference[0])))
    cmd = [SPEEDPROFILE, *RUN_ARGS, "--partition", cells, "--warehouse", wh, "--master", spark_hosts.url, "--log-dir", str(log_dir),
           "--conf", f"spark.driver.host={lab.gateway}", "--conf", "spark.executor.memory=512m",
           "--conf", "spark.sql.shuffle.partitions=8", *extra]
    log_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, env=env, stdout=open(log_dir / "run.out", "w"), stderr=open(log_dir / "run.err", "w"),
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True)


def finish(proc: subprocess.Popen, log_dir: Path, timeout: float = RUN_TIMEOUT_S) -> tuple[int, str]:
    """Wait for the run (its whole process group is killed if it overruns); exit code and stderr."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"run still going after {timeout:.0f}s; {tail(log_dir)}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, (log_dir / "run.err").read_text(errors="replace")


def tail(log_dir: Path, n: int = 30) -> str:
    out = []
    for p in sorted(log_dir.glob("*")):
        lines = p.read_text(errors="replace").splitlines()[-n:]
        out.append(f"--- {p.name}\n" + "\n".join(lines))
    return "\n".join(out)


def assert_equals_reference(wh: str, reference) -> dict[str, int]:
    """Every stage table holds exactly the reference's rows: nothing lost, nothing duplicated."""
    counts = {}
    for table in STAGE_TABLES:
        got = table_rows(wh, table)
        assert got == reference[1][table], f"{table}: {len(got)} rows, reference {len(reference[1][table])}"
        counts[table] = len(got)
    return counts


def run_ok(proc: subprocess.Popen, log_dir: Path) -> None:
    rc, _ = finish(proc, log_dir)
    assert rc == 0, tail(log_dir)


def test_hosts_are_separate_and_the_cluster_runs_on_them(lab, store, spark_hosts):
    mod = load_cluster_module()
    state = spark_hosts.state()
    assert {w["host"] for w in state["workers"] if w["state"] == "ALIVE"} == {h.address for h in lab.hosts[5:7]}
    assert spark_hosts.master.host == lab.hosts[4].address
    # Each daemon lives in its own namespace: a worker's host reaches the master at its address, not on loopback.
    def probe(address: str) -> list[str]:
        code = f"import socket; socket.create_connection(('{address}', {spark_hosts.master.port}), timeout=2)"
        return [sys.executable, "-c", code]

    assert lab.run(lab.hosts[5], probe(spark_hosts.master.host)).returncode == 0
    assert lab.run(lab.hosts[5], probe("127.0.0.1")).returncode != 0
    assert all(mod.pid_alive(w.pid) for w in spark_hosts.workers)


def restore_workers(cluster) -> None:
    """A new worker on the host (namespace) of each killed one; wait until both are registered."""
    mod = load_cluster_module()
    dead = [w for w in cluster.workers if not mod.pid_alive(w.pid)]
    cluster.workers = [w for w in cluster.workers if w not in dead]
    for w in dead:
        cluster.start_worker(cores=1, memory="1g", host=w.host, prefix=w.prefix)
    cluster.wait_ready(timeout=180)


def test_a_master_cut_off_fails_the_run_with_one_clear_line_and_a_retry_succeeds(lab, store, spark_hosts,
                                                                                 reference, s3_env, tmp_path):
    wh = new_warehouse(store, reference)
    master_host = lab.hosts[NODES]
    lab.cut(master_host)
    try:
        t0 = time.time()
        rc, err = finish(start_run(lab, spark_hosts, reference, wh, tmp_path / "cut"), tmp_path / "cut")
        spark_hosts.log(f"run with the master cut off: exit {rc} after {time.time() - t0:.1f}s: {err.strip()}")
    finally:
        lab.restore(master_host)
    assert rc != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("speedprofile: error:"), err
    assert STAGES[0] in lines[0]
    # The line says why (the scheduler's reason, not a stack frame) and names the stage log.
    assert "All masters are unresponsive" in lines[0], lines[0]
    # No stage table was committed by the failed run.
    for table in STAGE_TABLES:
        assert not storage.exists(f"{wh}/{table}") or not storage.list_files(f"{wh}/{table}/data"), table

    spark_hosts.wait_ready(timeout=180)  # workers registered again
    retry_with_a_worker_and_a_storage_node_killed(lab, store, spark_hosts, reference, wh, tmp_path / "retry")


def retry_with_a_worker_and_a_storage_node_killed(lab, store, spark_hosts, reference, wh: str, logs: Path) -> None:
    """The retry runs through two more faults: a worker (and its executor) SIGKILLed while a stage has running
    tasks, and a storage node SIGKILLed once the second stage starts (EC 2+2: write quorum 3). It completes, and
    every stage table equals the local run: nothing lost, nothing duplicated; also once the node is back."""
    mod = load_cluster_module()
    ui_port = mod.free_port()
    down = 3  # not the endpoint's node 1
    second = logs / f"{STAGES[1]}_{DAY}_{DAY}.log"
    apps_before = {a["id"] for a in spark_hosts.state().get("completedapps", [])}
    t0 = time.time()
    proc = start_run(lab, spark_hosts, reference, wh, logs, "--conf", f"spark.ui.port={ui_port}")
    try:
        worker = spark_hosts.kill_worker_mid_stage(f"http://{lab.gateway}:{ui_port}",
                                                   is_running=lambda: proc.poll() is None,
                                                   timeout=RUN_TIMEOUT_S, log=spark_hosts.log)
        assert worker is not None, "no stage was caught part-way through, so no worker was killed"
        assert not mod.pid_alive(worker.pid)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert second.exists(), f"second stage never started; {tail(logs)}"
        store.kill(down)
        spark_hosts.log(f"storage node {down} killed while {STAGES[1]} starts")
        run_ok(proc, logs)
        spark_hosts.log(f"retry with a killed worker and storage node: {time.time() - t0:.1f}s")
        stage_logs = "\n".join(p.read_text(errors="replace") for p in logs.glob("*.log")).lower()
        assert "lost executor" in stage_logs or "executorlostfailure" in stage_logs
        counts = assert_equals_reference(wh, reference)
        spark_hosts.log(f"retry equals the local run: {counts}")
        # Every stage ran as an application of the cluster (not a local fallback), and its data is in the bucket.
        new_apps = [a for a in spark_hosts.state().get("completedapps", []) if a["id"] not in apps_before]
        assert len(new_apps) >= len(STAGES), [a["name"] for a in new_apps]
        assert storage.list_files(f"{wh}/speed_estimates/data")
        # The keys reached the driver, the daemons and the executors through the environment only: no log of the
        # run, of the cluster's daemons and executors, or of the storage nodes holds the secret.
        texts = [p for d in (logs, Path(spark_hosts.state_dir)) for p in d.rglob("*")
                 if p.is_file() and (p.suffix in {".log", ".out", ".err"} or p.name in {"stdout", "stderr"})]
        texts += [store.log_path(i) for i in range(1, NODES + 1) if store.log_path(i).exists()]
        leaked = [str(p) for p in texts if store.secret_key.encode() in p.read_bytes()]
        assert not leaked, leaked
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        restore_workers(spark_hosts)
        if down not in store.procs:
            store.start(down)
            store.wait_ready(down)
            store.wait_write_quorum(down)
    assert_equals_reference(wh, reference)  # and with the node back
