"""A real Spark standalone cluster on 127.0.0.1 (master + 2 workers from pyspark's jars), secured like the Pi
cluster (RPC authentication and encryption, UIs behind a token): a client without the secret is refused; jobs
submitted with it give the same output as local mode, also when one worker is killed while a stage is running.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.plugins.infra import REPO, load_cluster_module, run_logged, spark_submit_cmd, submit_env

pytestmark = pytest.mark.slow

SMOKE_JOB = REPO / "scripts" / "cluster_smoke_job.py"


def read_sorted(path: Path, keys: list[str]) -> pd.DataFrame:
    df = pd.read_parquet(path)
    assert len(df) > 0, f"no rows under {path}"
    return df.sort_values(keys).reset_index(drop=True)[sorted(df.columns)]


@pytest.fixture(scope="module")
def smoke_local(tmp_path_factory) -> Path:
    """The smoke job's output in local mode (the reference)."""
    out = tmp_path_factory.mktemp("smoke-local")
    run_logged(spark_submit_cmd("local[2]", SMOKE_JOB, ["--out", str(out / "out")]), out / "submit.log")
    return out / "out"


def test_cluster_has_two_live_workers(standalone_cluster):
    state = standalone_cluster.state()
    alive = [w["id"] for w in state["workers"] if w["state"] == "ALIVE"]
    assert sorted(alive) == sorted(w.worker_id for w in standalone_cluster.workers)
    assert state["status"] == "ALIVE"


def test_smoke_job_on_cluster_equals_local(standalone_cluster, smoke_local, tmp_path):
    t0 = time.time()
    run_logged(
        spark_submit_cmd(standalone_cluster.url, SMOKE_JOB, ["--out", str(tmp_path / "out")]),
        tmp_path / "submit.log", conf_dir=standalone_cluster.conf_dir,
    )
    standalone_cluster.log(f"smoke job on {standalone_cluster.url} finished in {time.time() - t0:.1f}s")
    # Both workers' executors took part.
    executors = {e["worker_id"] for e in finished_executors(standalone_cluster)}
    assert executors == {w.worker_id for w in standalone_cluster.workers}
    pd.testing.assert_frame_equal(read_sorted(tmp_path / "out", ["key"]), read_sorted(smoke_local, ["key"]))


# ---- security -------------------------------------------------------------------------------------------------


def master_log(cluster) -> str:
    return Path(cluster.master.log).read_text(errors="replace")


@pytest.mark.parametrize("secret", [None, "not-the-cluster-secret-0123456789abcdef"], ids=["no-secret", "wrong-secret"])
def test_master_refuses_a_client_without_the_secret(standalone_cluster, tmp_path, secret):
    mod = load_cluster_module()
    conf = tmp_path / "conf"
    conf.mkdir()
    if secret:
        mod.write_properties(conf / "spark-defaults.conf", mod.auth_properties(secret))
    state = standalone_cluster.state()
    apps_before = {a["id"] for a in state["activeapps"] + state["completedapps"]}
    log_before = len(master_log(standalone_cluster))
    cmd = spark_submit_cmd(standalone_cluster.url, SMOKE_JOB, ["--out", str(tmp_path / "out")])
    with open(tmp_path / "submit.log", "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=submit_env(conf), cwd=REPO,
                                start_new_session=True)
        try:
            # The client retries its registration for about a minute; the refused handshake shows at once, in
            # the client's log (bootstrap failed) and, for a client without auth, in the master's log.
            deadline, refused = time.time() + 180, ""
            while time.time() < deadline and proc.poll() is None and not refused:
                client = (tmp_path / "submit.log").read_text(errors="replace")
                m = re.search(r".*(Exception while bootstrapping client|Failed to connect to master).*", client)
                refused = m.group(0) if m else ""
                time.sleep(0.5)
            server = master_log(standalone_cluster)[log_before:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    standalone_cluster.log(f"client {'with a wrong secret' if secret else 'without a secret'} refused: {refused[:160]}")
    assert refused, "the master logged no refusal; client log:\n" + (tmp_path / "submit.log").read_text()[-3000:]
    if secret is None:
        assert re.search(r"Expected SaslMessage|AuthRpcHandler", server), server[-3000:]
    new_log = master_log(standalone_cluster)[log_before:]
    assert "Registering app" not in new_log and "Launching executor" not in new_log
    state = standalone_cluster.state()
    assert {a["id"] for a in state["activeapps"] + state["completedapps"]} == apps_before
    assert not (tmp_path / "out").exists()


def test_client_with_the_secret_runs_and_the_conf_holds_it_privately(standalone_cluster, tmp_path):
    conf = Path(standalone_cluster.conf_dir) / "spark-defaults.conf"
    assert conf.stat().st_mode & 0o077 == 0, "the secret must be readable by its owner only"
    text = conf.read_text()
    for line in ("spark.authenticate true", "spark.network.crypto.enabled true", "spark.master.rest.enabled false"):
        assert line in text
    before = {a["id"] for a in standalone_cluster.state()["completedapps"]}
    run_logged(spark_submit_cmd(standalone_cluster.url, SMOKE_JOB, ["--out", str(tmp_path / "out")]),
               tmp_path / "submit.log", conf_dir=standalone_cluster.conf_dir)
    assert {a["id"] for a in standalone_cluster.state()["completedapps"]} - before
    # The secret never appears on a command line of the cluster's processes (master, workers, executors).
    secret = next(ln.split()[1] for ln in text.splitlines() if ln.startswith("spark.authenticate.secret "))
    for pid in [standalone_cluster.master.pid, *[w.pid for w in standalone_cluster.workers]]:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert secret not in cmdline


def test_web_uis_refuse_requests_without_the_token(standalone_cluster):
    mod = load_cluster_module()
    urls = [standalone_cluster.master_json_url,
            *[f"http://127.0.0.1:{w.webui_port}/json/" for w in standalone_cluster.workers]]
    for url in urls:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=10)
        assert err.value.code in (401, 403), url
        forged = mod.jws_token(mod._b64url(b"x" * 32))
        with pytest.raises(urllib.error.HTTPError):
            mod.get_json(url, token=forged)
        assert isinstance(mod.get_json(url, token=standalone_cluster.ui_token), dict)


# An app that writes and reads s3a:// on executors, reports what its executors' processes hold in their environment
# and what the driver's UI shows of its configuration (REST API, with the cluster's UI token).
S3A_PROBE_APP = """
import configparser, json, os, sys, urllib.request
sys.path.insert(0, os.path.join(sys.argv[3], "scripts"))
import cluster
from pyspark.sql import SparkSession

out, uri = sys.argv[1], sys.argv[2]
spark = SparkSession.builder.appName("s3a-credentials-probe").getOrCreate()
sc = spark.sparkContext
spark.range(0, 20000, numPartitions=4).selectExpr("id", "id % 7 AS k").write.mode("overwrite").parquet(uri)
rows = spark.read.parquet(uri).count()
profile = sc.getConf().get("spark.hadoop.fs.s3a.auth.profile.file")

def probe(_):
    ini = configparser.ConfigParser()
    ini.read(profile)
    keys = dict(ini["default"])
    def holds(env):
        return sorted(k for k, v in env.items() if k.startswith("AWS_") and ("KEY" in k or "SECRET" in k)
                      or any(s in v for s in keys.values()))
    jvm = int(open(f"/proc/{os.getppid()}/stat").read().rsplit(")", 1)[1].split()[1])  # daemon's parent
    jvm_env = dict(kv.split("=", 1) for kv in open(f"/proc/{jvm}/environ").read().split("\\0") if "=" in kv)
    yield {"python": holds(dict(os.environ)), "jvm": holds(jvm_env), "jvm_cmd": open(f"/proc/{jvm}/cmdline").read(),
           "jvm_pid": jvm}

executors = sc.parallelize(range(4), 4).mapPartitions(probe).collect()
token = cluster.jws_token(sc.getConf().get("spark.org.apache.spark.ui.JWSFilter.param.secretKey"))
req = urllib.request.Request(f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/environment",
                             headers={"Authorization": f"Bearer {token}"})
environment = json.load(urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30))
json.dump({"rows": rows, "executors": executors, "environment": environment}, open(out, "w"))
spark.stop()
"""


def test_executors_read_the_key_pair_from_their_nodes_credentials_file(standalone_cluster, minio_pipeline_user,
                                                                        tmp_path):
    """As the spark role deploys it: no key in any Spark conf or process environment; each JVM (driver, executors)
    reads the 0600 credentials file through the conf's path, as the pipeline's least-privilege MinIO user; the UI
    redacts every key-like setting (spark.redaction.regex of the role)."""
    import json

    import pyarrow.fs as pafs
    import yaml

    user = minio_pipeline_user
    creds = user.credentials_file(tmp_path / "s3a-credentials")
    workers = [w.pid for w in standalone_cluster.workers]
    for pid in workers:  # the workers (and so their executors) were started without any key
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        assert user.secret_key not in environ and "AWS_SECRET_ACCESS_KEY=" not in environ
    regex = yaml.safe_load((REPO / "infra/rpi-ansible/roles/spark/defaults/main.yml").read_text())[
        "spark_redaction_regex"]
    conf = {
        "spark.hadoop.fs.s3a.endpoint": user.server.endpoint,
        "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
        "spark.hadoop.fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.auth.ProfileAWSCredentialsProvider",
        "spark.hadoop.fs.s3a.auth.profile.file": str(creds),
        "spark.hadoop.fs.s3a.auth.profile.name": "default",
        "spark.redaction.regex": regex,
        "spark.ui.enabled": "true",
        # markers (no secrets): settings an operator might add, which the UI must not show
        "spark.executorEnv.SPEEDPROFILE_PROBE_ACCESS_KEY_ID": "marker-access-key-id",
        "spark.sql.catalog.probe.s3.secret-access-key": "marker-secret-access-key",
    }
    app = tmp_path / "s3a_probe.py"
    app.write_text(S3A_PROBE_APP)
    uri = f"s3a://{user.bucket}/warehouse/credentials-probe"
    cmd = spark_submit_cmd(standalone_cluster.url, app, [str(tmp_path / "out.json"), uri, str(REPO)], conf)
    env = {k: v for k, v in submit_env(standalone_cluster.conf_dir).items()
           if not k.startswith("AWS_") or k == "AWS_REGION"}
    t0 = time.time()
    with open(tmp_path / "submit.log", "wb") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=900)
    log = (tmp_path / "submit.log").read_text(errors="replace")
    assert proc.returncode == 0, log[-4000:]
    standalone_cluster.log(f"s3a credentials-file probe finished in {time.time() - t0:.1f}s")
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["rows"] == 20000
    assert len(got["executors"]) == 4
    for e in got["executors"]:
        assert e["python"] == [] and e["jvm"] == [], e
        assert "CoarseGrainedExecutorBackend" in e["jvm_cmd"] and user.secret_key not in e["jvm_cmd"]
    # what the UI's Environment tab shows: no key, and the markers redacted
    shown = json.dumps(got["environment"])
    assert user.secret_key not in shown and user.access_key not in shown
    props = dict(got["environment"]["sparkProperties"])
    assert props["spark.executorEnv.SPEEDPROFILE_PROBE_ACCESS_KEY_ID"] == "*********(redacted)"
    assert props["spark.sql.catalog.probe.s3.secret-access-key"] == "*********(redacted)"
    assert props["spark.authenticate.secret"] == "*********(redacted)"
    assert props["spark.hadoop.fs.s3a.auth.profile.file"] == str(creds)
    # the objects are there, written as the pipeline's user; no log of the run holds the key pair
    listed = user.filesystem().get_file_info(pafs.FileSelector(f"{user.bucket}/warehouse/credentials-probe"))
    assert any(i.path.endswith(".parquet") for i in listed)
    logs = [log, *(p.read_text(errors="replace") for p in Path(standalone_cluster.state_dir).rglob("*")
                   if p.is_file() and (p.name in ("stderr", "stdout") or p.suffix == ".log"))]
    assert not [t for t in logs if user.secret_key in t or user.access_key in t]


def finished_executors(cluster) -> list[dict]:
    """Executors (with the worker that ran them) of the applications the master lists as completed."""
    mod = load_cluster_module()
    out = []
    for w in cluster.workers:
        if not mod.pid_alive(w.pid):
            continue
        ws = mod.get_json(f"http://127.0.0.1:{w.webui_port}/json/", token=cluster.ui_token)
        for e in ws.get("finishedexecutors", []) + ws.get("executors", []):
            out.append({**e, "worker_id": w.worker_id})
    return out


def submit_and_kill_a_worker(cluster, cmd: list[str], log_path: Path, timeout: float = 900.0):
    """Run `cmd` (a spark-submit whose driver UI is on cmd's spark.ui.port) and kill one worker mid-stage.

    Returns (exit code, killed worker or None). The kill is logged as "killed worker <id> (pid N)".
    """
    ui_port = next(c.split("=", 1)[1] for c in cmd if c.startswith("spark.ui.port="))
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=submit_env(cluster.conf_dir), cwd=REPO)
        killed: dict = {}

        def watch():
            killed["worker"] = cluster.kill_worker_mid_stage(
                f"http://127.0.0.1:{ui_port}", is_running=lambda: proc.poll() is None, log=cluster.log
            )

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        watcher.join(timeout=30)
    return rc, killed.get("worker")


def restore_workers(cluster) -> None:
    """Replace killed workers so later tests again see two live workers."""
    mod = load_cluster_module()
    dead = [w for w in cluster.workers if not mod.pid_alive(w.pid)]
    if not dead:
        return
    cluster.workers = [w for w in cluster.workers if w not in dead]
    for _ in dead:
        cluster.start_worker(cores=1, memory="1g")
    cluster.wait_ready()
    cluster.log("workers restored: " + ", ".join(f"{w.worker_id} (pid {w.pid})" for w in cluster.workers))


# ---- the real pipeline ---------------------------------------------------------------------------------------

PIPE_DATE = "2026-11-02"
PIPE_CONF = ["spark.sql.shuffle.partitions=8", "spark.executor.memory=512m", "spark.driver.memory=768m"]
# Output tables of the stages `speedprofile run` drives, with the columns that identify a row.
PIPE_TABLES = {
    "segment_traversals": ["dt", "partition", "trace_id", "piece", "seq", "segment_id"],
    "bucketed_traversals": ["dt", "partition", "trace_id", "piece", "seq", "segment_id"],
    "speed_histograms": ["partition", "window", "segment_id", "tow_bucket"],
    "speed_estimates": ["partition", "segment_id", "tow_bucket"],
}


def read_table(wh: Path, name: str) -> pd.DataFrame:
    """A warehouse table as one frame, rows in key order; floats kept, every other value as text."""
    from speedprofile import tables

    df = tables.read_pandas(str(wh), name)
    keys = [c for c in PIPE_TABLES[name] if c in df.columns]
    df = df.sort_values(keys).reset_index(drop=True)[sorted(df.columns)]
    for c in df.columns:
        if not pd.api.types.is_float_dtype(df[c]):
            df[c] = df[c].astype(str)
    return df


def assert_same_tables(got: Path, expected: Path) -> dict[str, int]:
    rows = {}
    for name in PIPE_TABLES:
        a, b = read_table(got, name), read_table(expected, name)
        assert len(b) > 0, f"reference run wrote no {name}"
        # Exact for keys, counts, bins and text; floating aggregates may differ in the last bits because
        # partial sums are combined in another order on the cluster (e.g. 29.6694958675427 vs ...42686).
        pd.testing.assert_frame_equal(a, b, obj=name, check_exact=False, rtol=1e-9, atol=1e-9)
        rows[name] = len(a)
    return rows


@pytest.fixture(scope="module")
def pipeline_base(tmp_path_factory, tiny_network_warehouse, spark) -> tuple[Path, list[str]]:
    """The tiny grid network + one simulated day (12 vehicles) ingested: the input every run starts from."""
    from speedprofile.ingest.pipeline import ingest
    from speedprofile.simulate.fleet import simulate
    from speedprofile.warehouse import partition_cells
    from tests.seed import copy_warehouse

    root = tmp_path_factory.mktemp("cluster-pipeline")
    base = copy_warehouse(tiny_network_warehouse, root / "base")
    simulate(str(base), str(root / "sim"), days=1, vehicles=12, seed=5, start_date=PIPE_DATE)
    ingest(spark, str(base), [str(root / "sim" / "probes")])
    return base, partition_cells(str(base))


def fresh_copy(base: Path, dst: Path) -> Path:
    from tests.seed import copy_warehouse

    return copy_warehouse(base, dst)


@pytest.fixture(scope="module")
def pipeline_local(pipeline_base, tmp_path_factory) -> Path:
    """`speedprofile run` in local mode: the reference output."""
    from speedprofile.run import run_stages

    base, cells = pipeline_base
    wh = fresh_copy(base, tmp_path_factory.mktemp("pipeline-local") / "wh")
    run_stages(str(wh), PIPE_DATE, None, cells, master="local[2]", confs=PIPE_CONF, window_weeks=1,
               log_dir=str(wh.parent / "logs"), echo=lambda *_: None)
    return wh


def test_pipeline_survives_a_worker_killed_mid_stage(standalone_cluster, pipeline_base, pipeline_local, tmp_path,
                                                     monkeypatch):
    """Every stage runs as an application of the cluster; a worker SIGKILLed while a stage has running tasks costs
    a retry of its tasks, and the tables equal those of local mode, row for row."""
    from speedprofile.run import STAGES, run_stages

    monkeypatch.setenv("SPARK_CONF_DIR", str(standalone_cluster.conf_dir))
    mod = load_cluster_module()
    before = {a["id"] for a in standalone_cluster.state()["completedapps"]}
    base, cells = pipeline_base
    wh = fresh_copy(base, tmp_path / "wh")
    ui_port = mod.free_port()
    done = threading.Event()
    killed: dict = {}

    def watch():
        killed["worker"] = standalone_cluster.kill_worker_mid_stage(
            f"http://127.0.0.1:{ui_port}", is_running=lambda: not done.is_set(), log=standalone_cluster.log
        )

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.time()
    try:
        run_stages(str(wh), PIPE_DATE, None, cells, master=standalone_cluster.url,
                   confs=[*PIPE_CONF, f"spark.ui.port={ui_port}"], window_weeks=1,
                   log_dir=str(tmp_path / "logs"), echo=standalone_cluster.log)
        done.set()
        watcher.join(timeout=30)
        worker = killed.get("worker")
        assert worker is not None, "no stage was caught part-way through, so no worker was killed"
        standalone_cluster.log(f"pipeline with a killed worker finished in {time.time() - t0:.1f}s")
        assert f"killed worker {worker.worker_id} (pid {worker.pid})" in standalone_cluster.log.text()
        assert not mod.pid_alive(worker.pid)
        logs = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log"))
        assert re.search(r"lost executor|executorlostfailure|executor \S+ removed", logs, re.I)
        new_apps = [a for a in standalone_cluster.state()["completedapps"] if a["id"] not in before]
        assert len(new_apps) == len(STAGES), [a["name"] for a in new_apps]
        rows = assert_same_tables(wh, pipeline_local)
        standalone_cluster.log(f"cluster output equals local mode: {rows}")
    finally:
        done.set()
        restore_workers(standalone_cluster)


# ---- Spark Connect server: clients need its token -------------------------------------------------------------

CONNECT_CLIENT = """
import sys
from pyspark.sql import SparkSession
try:
    print("COUNT", SparkSession.builder.remote(sys.argv[1]).getOrCreate().range(7).count())
except Exception as exc:
    print("REFUSED", type(exc).__name__, " ".join(str(exc).split())[:300])
"""


def test_spark_connect_server_refuses_clients_without_its_token(tmp_path):
    """The head node's Connect server as the spark role runs it (loopback, spark.connect.authenticate.token): a
    client with the token runs a query; one without it, or with another token, is refused."""
    mod = load_cluster_module()
    port, token = mod.free_port(), "connect-token-for-the-test-0123456789abcdef"
    conf = tmp_path / "conf"
    mod.write_properties(conf / "spark-defaults.conf", {
        "spark.connect.authenticate.token": token, "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port), "spark.ui.enabled": "false"})
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[1]",
           "--class", "org.apache.spark.sql.connect.service.SparkConnectServer", "spark-internal"]
    log = tmp_path / "server.log"
    with open(log, "wb") as fh:
        server = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=submit_env(conf), cwd=tmp_path,
                                  start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and server.poll() is None and "server started" not in log.read_text():
            time.sleep(0.5)
        assert "Spark Connect server started" in log.read_text(), log.read_text()[-3000:]
        assert token not in Path(f"/proc/{server.pid}/cmdline").read_text(errors="replace")

        def client(url: str) -> str:
            out = subprocess.run([sys.executable, "-c", CONNECT_CLIENT, url], capture_output=True, text=True,
                                 timeout=300, env=submit_env())
            return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:]

        assert client(f"sc://localhost:{port}/;token={token}") == "COUNT 7"
        for url in (f"sc://localhost:{port}", f"sc://localhost:{port}/;token=not-the-token-0123456789abcdef"):
            answer = client(url)
            assert answer.startswith("REFUSED"), answer
            assert "COUNT" not in answer
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
