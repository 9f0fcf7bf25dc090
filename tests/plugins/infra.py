"""Shared pytest fixtures: infra — a real Spark standalone cluster (master + 2 workers) on 127.0.0.1.

The daemons come from the installed pyspark's own jars (`scripts/cluster.py`); each runs in its own process
group and is stopped by PID when the module's tests are done. The cluster is secured as the Raspberry Pi roles
render it (RPC authentication + encryption, UIs behind the JWS filter): clients use its conf dir, which holds
the secret.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_cluster_module():
    """scripts/cluster.py as a module (scripts/ is not a package)."""
    name = "speedprofile_local_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "cluster.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


class ClusterLog:
    """The cluster test's own log: one line per event (start, submit, kill), in a file and on stderr."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
        print(line, file=sys.stderr)

    def text(self) -> str:
        return self.path.read_text() if self.path.exists() else ""


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """A running master and two 1-core workers; yields the `Cluster` (url, workers, kill/stop helpers, .log)."""
    mod = load_cluster_module()
    state = tmp_path_factory.mktemp("spark-cluster")
    log = ClusterLog(state / "cluster-test.log")
    cluster = mod.Cluster(state_dir=str(state), auth=True)
    t0 = time.time()
    cluster.start(workers=2, cores=1, memory="1g")
    log(
        f"cluster up in {time.time() - t0:.1f}s: master {cluster.url} (pid {cluster.master.pid}), "
        + ", ".join(f"{w.worker_id} (pid {w.pid})" for w in cluster.workers)
    )
    cluster.log = log
    yield cluster
    pids = cluster.stop()
    still = [p for p in pids if mod.pid_alive(p)]
    log(f"cluster stopped: pids {pids}")
    assert not still, f"daemons still running after stop: {still}"


def spark_submit_cmd(master: str, app: str | Path, args: list[str], conf: dict[str, str] | None = None) -> list[str]:
    """A spark-submit command line with the test-sized settings; `conf` adds/overrides --conf entries."""
    settings = {
        "spark.sql.shuffle.partitions": "8",
        "spark.executor.memory": "512m",
        "spark.driver.memory": "768m",
        "spark.sql.session.timeZone": "UTC",
        **(conf or {}),
    }
    from speedprofile.tables import spark_jars

    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", master, "--jars", spark_jars()]
    for k, v in settings.items():
        cmd += ["--conf", f"{k}={v}"]
    return [*cmd, str(app), *args]


def submit_env(conf_dir: str | Path | None = None) -> dict[str, str]:
    """Environment of a test spark-submit; `conf_dir` (SPARK_CONF_DIR) carries a secured cluster's secret."""
    env = dict(os.environ)
    if conf_dir is not None:
        env["SPARK_CONF_DIR"] = str(conf_dir)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env["PYSPARK_PYTHON"] = sys.executable
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_logged(cmd: list[str], log_path: Path, timeout: float = 900.0,
               conf_dir: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run a command with stdout+stderr to log_path; fail the test with the log's tail when it exits non-zero."""
    with open(log_path, "wb") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=submit_env(conf_dir), timeout=timeout,
                              cwd=REPO)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"{' '.join(cmd[:6])} ... exited {proc.returncode}; log {log_path}:\n{tail}")
    return proc
