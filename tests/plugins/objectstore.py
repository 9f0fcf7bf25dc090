"""Shared pytest fixtures: a real S3 object store — MinIO built from source (scripts/fetch_minio.sh) on 127.0.0.1.

`minio_server` (session) runs one single-drive server on a free loopback port with freshly generated root
credentials, handed to MinIO through its environment (never its argv) and never logged; `minio_env` (per test)
puts them into this process's environment, where speedprofile.storage and pyarrow read them. `minio_cluster`
(module) runs a 4-node erasure-coded deployment, one node per network namespace (tests/plugins/netns.py).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs
import pytest

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
# Test servers live on loopback and the namespaces' 10.213.X.0/24: never send their traffic through a proxy.
for _var in ("no_proxy", "NO_PROXY"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var, ""), "127.0.0.1", "localhost", "10.213.0.0/16"]))
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def pinned_minio_version() -> str:
    """MINIO_VERSION from conf/versions.env, the one pin the fetch script, the roles and compose read."""
    for line in (REPO / "conf" / "versions.env").read_text().splitlines():
        if line.startswith("MINIO_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("MINIO_VERSION missing in conf/versions.env")


def minio_binary(tool: str = "minio") -> Path:
    """The pinned MinIO server (or `mc` client) binary, built into the cache by scripts/fetch_minio.sh when it is
    not there yet."""
    proc = subprocess.run([str(REPO / "scripts" / "fetch_minio.sh"), tool], capture_output=True, text=True,
                          timeout=3600)
    if proc.returncode != 0:
        pytest.fail(f"scripts/fetch_minio.sh failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file() and os.access(path, os.X_OK), f"fetch_minio.sh printed {path}, which is not executable"
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def new_credentials() -> tuple[str, str]:
    """A random root user and password (hex: nothing that needs quoting in a URL or an env file)."""
    return "sp" + secrets.token_hex(8), secrets.token_hex(24)


def server_env(access_key: str, secret_key: str, home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a MinIO process: the root credentials, no update checks, no console, own HOME."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "MINIO_ROOT_USER": access_key,
        "MINIO_ROOT_PASSWORD": secret_key,
        "MINIO_REGION": REGION,
        "MINIO_BROWSER": "off",
        "MINIO_UPDATE": "off",
        **extra,
    }


def wait_http_ok(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll url until it answers 200; fail with the server log's tail when the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            with _DIRECT.open(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    state = f"exited {proc.returncode}" if proc is not None and proc.poll() is not None else f"no 200 ({last})"
    pytest.fail(f"{url}: {state} after {timeout:.0f}s; log {log}:\n{tail}")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop one process we started (its own process group), SIGKILL when it does not go in time."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def s3_filesystem(endpoint: str, access_key: str, secret_key: str, **kw):
    """A pyarrow S3FileSystem on one endpoint (path-style, plain HTTP, the test region)."""
    scheme, host = endpoint.split("://", 1)
    return pafs.S3FileSystem(access_key=access_key, secret_key=secret_key, endpoint_override=host, scheme=scheme,
                             region=REGION, force_virtual_addressing=False, **kw)


@dataclass
class MinioServer:
    """A running MinIO: where it listens, its root key pair (the secret is left out of repr) and one bucket."""

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str
    log_path: Path
    data_dir: Path
    process: subprocess.Popen = field(repr=False)

    def env(self) -> dict[str, str]:
        """What a client subprocess needs: the AWS_* variables pyarrow, the AWS SDKs and s3a read."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
        }

    def uri(self, key: str = "") -> str:
        """s3a://<bucket>/<key>: the form warehouse paths take."""
        return f"s3a://{self.bucket}/{key}".rstrip("/")

    def filesystem(self, **kw):
        return s3_filesystem(self.endpoint, self.access_key, self.secret_key, **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def s3a_conf(self) -> dict[str, str]:
        """Spark settings for s3a:// on this server; the key pair comes from env() (never a --conf)."""
        return {
            "spark.hadoop.fs.s3a.endpoint": self.endpoint,
            "spark.hadoop.fs.s3a.endpoint.region": REGION,
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
            "spark.hadoop.fs.s3a.aws.credentials.provider":
                "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider",
        }


@pytest.fixture(scope="session")
def minio_binary_path() -> Path:
    return minio_binary()


@pytest.fixture(scope="session")
def minio_server(minio_binary_path, tmp_path_factory) -> Iterator[MinioServer]:
    """One single-drive MinIO on 127.0.0.1 with random root credentials and a fresh bucket; stopped at the end."""
    state = tmp_path_factory.mktemp("minio")
    data, home = state / "data", state / "home"
    data.mkdir()
    home.mkdir()
    access_key, secret_key = new_credentials()
    port = free_port()
    log_path = state / "minio.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(minio_binary_path), "server", "--address", f"127.0.0.1:{port}", "--anonymous", str(data)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=server_env(access_key, secret_key, home),
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{endpoint}/minio/health/ready", timeout=60, proc=proc, log=log_path)
        server = MinioServer(endpoint, access_key, secret_key, "speedprofile-test", log_path, data, proc)
        server.filesystem(allow_bucket_creation=True).create_dir(server.bucket)
        yield server
    finally:
        stop_process(proc)


@pytest.fixture
def minio_env(minio_server, monkeypatch) -> Iterator[MinioServer]:
    """minio_server with its AWS_* variables in os.environ (and speedprofile.storage's file-system cache fresh)."""
    from speedprofile import storage

    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    for key, value in minio_server.env().items():
        monkeypatch.setenv(key, value)
    storage._remote_fs.cache_clear()
    yield minio_server
    storage._remote_fs.cache_clear()


# ---- the pipeline's user, made by the minio role ------------------------------------------------------------

ANSIBLE = REPO / "infra" / "rpi-ansible"
# The warehouse bucket of the role runs on minio_server: the role's policy (one per deployment) names it.
WAREHOUSE_BUCKET = "speedprofile-wh"


@dataclass
class PipelineUser:
    """The pipeline's key pair on minio_server, made by the minio role's own tasks: its bucket (the warehouse),
    a bucket it must not reach, and every command line seen while the role ran that held its secret or the root
    password."""

    server: MinioServer
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str
    other_bucket: str
    argv_with_secret: list[str] = field(repr=False)
    run_output: str = field(repr=False)
    state: Path = field(repr=False)  # the role run's folder (its policy file, mc's configuration)

    def filesystem(self, **kw):
        return s3_filesystem(self.server.endpoint, self.access_key, self.secret_key, **kw)

    def credentials_file(self, path: Path, runs_drivers: bool = False) -> Path:
        """The spark role's s3a-credentials template rendered for this key pair, mode 0600, at `path`."""
        import jinja2

        env = jinja2.Environment(undefined=jinja2.StrictUndefined)
        env.filters["bool"] = lambda v: str(v).lower() in ("1", "true", "yes", "on")
        text = env.from_string((ANSIBLE / "roles/spark/templates/s3a-credentials.j2").read_text()).render(
            ansible_managed="rendered by the tests", spark_runs_drivers=runs_drivers,
            spark_s3_credentials_profile="default", spark_s3_access_key=self.access_key,
            spark_s3_secret_key=self.secret_key)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return path


def command_lines_holding(text: str) -> list[str]:
    """Command lines of live processes that contain `text` (what any local user could read)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(cmd)
    return found


def run_minio_user_tasks(server: MinioServer, state: Path, access_key: str, secret_key: str, bucket: str
                         ) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run roles/minio/tasks/buckets.yml (bucket, user, policy) against `server` through ansible-playbook, as the
    role runs on the first storage node, and watch every process's command line for the user's secret and the
    server's root password meanwhile."""
    state.mkdir(parents=True, exist_ok=True)
    host, port = server.endpoint.removeprefix("http://").split(":")
    assert host == "127.0.0.1"
    (state / "vars.json").write_text(json.dumps({
        "minio_tls": False, "minio_api_port": int(port), "minio_mc_bin": str(minio_binary("mc")),
        "minio_root_user": server.access_key, "minio_root_password": server.secret_key,
        "speedprofile_warehouse_bucket": bucket, "minio_app_access_key": access_key,
        "minio_app_secret_key": secret_key, "minio_app_policy_file": str(state / "policies" / "warehouse.json"),
        "ansible_python_interpreter": sys.executable,
    }))
    (state / "play.yml").write_text(
        "- name: Make the warehouse bucket, the pipeline's user and its policy\n"
        "  hosts: localhost\n  gather_facts: false\n  connection: local\n  tasks:\n"
        "    - name: Run the minio role's bucket and user tasks\n      ansible.builtin.include_role:\n"
        "        name: minio\n        tasks_from: buckets.yml\n")
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": str(state), "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
           "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(state / "tmp"), "ANSIBLE_REMOTE_TEMP": str(state / "tmp"),
           "no_proxy": os.environ.get("no_proxy", "127.0.0.1"), "NO_PROXY": os.environ.get("NO_PROXY", "127.0.0.1")}
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for secret in (secret_key, server.secret_key):
                seen.extend(command_lines_holding(secret))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
                               str(state / "play.yml"), "-e", f"@{state / 'vars.json'}"],
                              cwd=state, env=env, capture_output=True, text=True, timeout=600)
    finally:
        stop.set()
        watcher.join(timeout=10)
    return proc, seen


@pytest.fixture(scope="session")
def minio_pipeline_user(minio_server, tmp_path_factory) -> PipelineUser:
    """The pipeline's user on minio_server, made once by the minio role's tasks (bucket `speedprofile-wh`, its
    policy), plus a bucket `speedprofile-other` the root user made, which the pipeline user must not reach."""
    access_key, secret_key = "pipeline-" + secrets.token_hex(6), "sk-" + secrets.token_hex(20)
    bucket, other = WAREHOUSE_BUCKET, "speedprofile-other"
    state = tmp_path_factory.mktemp("minio-user")
    proc, seen = run_minio_user_tasks(minio_server, state, access_key, secret_key, bucket)
    if proc.returncode != 0:
        pytest.fail(f"the minio role's buckets.yml failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    root = minio_server.filesystem(allow_bucket_creation=True)
    root.create_dir(other)
    with root.open_output_stream(f"{other}/private/thing.txt") as out:
        out.write(b"not for the pipeline")
    return PipelineUser(minio_server, access_key, secret_key, bucket, other, seen, proc.stdout + proc.stderr,
                        state)


# ---- a distributed deployment over network namespaces -------------------------------------------------------

CLUSTER_PORT = 9000
NODES = 4


class MinioCluster:
    """MinIO nodes 1..4, node i in namespace i, each with its own data folder; start/kill one node at a time."""

    def __init__(self, lab, binary: Path, state: Path):
        self.lab, self.binary, self.state = lab, binary, state
        self.access_key, self.secret_key = new_credentials()
        self.bucket = "speedprofile-cluster"
        self.volumes = [f"http://{h.address}:{CLUSTER_PORT}{self.data_dir(h.index)}" for h in lab.hosts]
        self.procs: dict[int, subprocess.Popen] = {}

    def __repr__(self) -> str:  # never the secret
        return f"MinioCluster({[h.address for h in self.lab.hosts]})"

    def data_dir(self, i: int) -> Path:
        return self.state / f"node{i}" / "data"

    def log_path(self, i: int) -> Path:
        return self.state / f"node{i}" / "minio.log"

    def endpoint(self, i: int) -> str:
        return f"http://{self.lab.hosts[i - 1].address}:{CLUSTER_PORT}"

    def start(self, i: int) -> None:
        host = self.lab.hosts[i - 1]
        home = self.state / f"node{i}" / "home"
        for d in (self.data_dir(i), home):
            d.mkdir(parents=True, exist_ok=True)
        # MINIO_CI_CD: the test drives share the root disk, which a production deployment refuses.
        env = server_env(self.access_key, self.secret_key, home, MINIO_CI_CD="on")
        with open(self.log_path(i), "ab") as log:
            self.procs[i] = self.lab.popen(
                host,
                [str(self.binary), "server", "--address", f"{host.address}:{CLUSTER_PORT}", "--anonymous", *self.volumes],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )

    def kill(self, i: int) -> None:
        """SIGKILL node i: no shutdown, no flush, as when a Pi loses power."""
        proc = self.procs.pop(i)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def wait_ready(self, i: int, timeout: float = 90) -> None:
        wait_http_ok(f"{self.endpoint(i)}/minio/health/ready", timeout, self.procs.get(i), self.log_path(i))

    def wait_write_quorum(self, i: int, timeout: float = 90) -> None:
        """/minio/health/cluster answers 200 when the deployment has write quorum."""
        wait_http_ok(f"{self.endpoint(i)}/minio/health/cluster", timeout, self.procs.get(i), self.log_path(i))

    def fs(self, i: int) -> pafs.S3FileSystem:
        return s3_filesystem(self.endpoint(i), self.access_key, self.secret_key, connect_timeout=5,
                             request_timeout=30)

    def keys(self, i: int, prefix: str) -> list[str]:
        sel = pafs.FileSelector(f"{self.bucket}/{prefix}", recursive=True, allow_not_found=True)
        return sorted(f.path.split("/", 1)[1] for f in self.fs(i).get_file_info(sel) if f.type == pafs.FileType.File)

    def wait_finds(self, i: int, keys, timeout: float = 60) -> None:
        """/minio/health/ready answers before a (re)started node has connected to its peers; for that moment it
        answers "no such key" (or HTTP 503) for objects its own drive lacks. Wait until node i finds every key."""
        deadline = time.monotonic() + timeout
        fs = self.fs(i)
        unseen = list(keys)

        def found(key: str) -> bool:
            try:
                return fs.get_file_info(f"{self.bucket}/{key}").type == pafs.FileType.File
            except OSError:  # HTTP 503 while the node has not joined its peers yet (seen on a loaded box)
                return False

        while unseen and time.monotonic() < deadline:
            unseen = [k for k in unseen if not found(k)]
            if unseen:
                time.sleep(0.2)
        assert not unseen, f"node {i} still does not find {len(unseen)} objects after {timeout:.0f} s"

    def start_all(self) -> None:
        """Start every node, wait for write quorum, make the bucket, and wait until every node has joined (it finds
        what another node wrote)."""
        for i in range(1, NODES + 1):
            self.start(i)
        for i in range(1, NODES + 1):
            self.wait_ready(i)
        self.wait_write_quorum(1)
        s3_filesystem(self.endpoint(1), self.access_key, self.secret_key,
                      allow_bucket_creation=True).create_dir(self.bucket)
        probe = "_probe/started"
        with self.fs(1).open_output_stream(f"{self.bucket}/{probe}") as out:
            out.write(b"ok")
        for i in range(1, NODES + 1):
            self.wait_finds(i, [probe])
        self.fs(1).delete_dir(f"{self.bucket}/_probe")

    def on_disk(self, i: int, key: str) -> bool:
        """Node i's drive holds the object's metadata (and its shard): MinIO keeps <drive>/<bucket>/<key>/xl.meta."""
        return (self.data_dir(i) / self.bucket / key / "xl.meta").is_file()


@contextmanager
def running(cluster: MinioCluster) -> Iterator[MinioCluster]:
    """Every node started and joined; every node killed on the way out, also after a failure."""
    try:
        cluster.start_all()
        yield cluster
    finally:
        for i in list(cluster.procs):
            cluster.kill(i)


@pytest.fixture(scope="module")
def minio_cluster(netns_factory, minio_binary_path, tmp_path_factory) -> Iterator[MinioCluster]:
    """A 4-node distributed MinIO (EC 2+2), node i in network namespace i (tests/plugins/netns.py), one bucket."""
    lab = netns_factory(NODES)
    with running(MinioCluster(lab, minio_binary_path, tmp_path_factory.mktemp("minio-cluster"))) as cluster:
        yield cluster
    logs = "".join(cluster.log_path(i).read_text(errors="replace") for i in range(1, NODES + 1))
    assert cluster.secret_key not in logs and cluster.access_key not in logs
