#!/usr/bin/env python3
"""A local Spark standalone cluster (one master, N workers) on 127.0.0.1, from the jars of the installed pyspark.

Every daemon runs in its own process group (setsid) with its PID recorded in `<state-dir>/cluster.json` and its
log in `<state-dir>/logs/`; stopping kills exactly those process groups (the worker's group also holds the
executors and Python workers it launched). With `--auth` the cluster runs as the Raspberry Pi roles render it:
RPC authentication with a shared secret and AES-encrypted RPC (`spark.authenticate`, `spark.network.crypto`),
web UIs behind Spark's JWS filter; the secret lives in `<state-dir>/conf/spark-defaults.conf` (mode 0600), which
clients use as their SPARK_CONF_DIR. Used by `make cluster-test` and usable by hand:

    .venv/bin/python scripts/cluster.py start --state-dir /tmp/sp-cluster --workers 2 [--auth]
    .venv/bin/python scripts/cluster.py status --state-dir /tmp/sp-cluster
    .venv/bin/python scripts/cluster.py stop --state-dir /tmp/sp-cluster
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
# The repository's local-run settings (quiet logging, small shuffles); an --auth cluster's conf dir starts from them.
REPO_CONF = Path(__file__).resolve().parents[1] / "conf"


def spark_home() -> Path:
    """The pyspark package folder: it holds Spark's `jars/` and `bin/`, so it serves as SPARK_HOME."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def scala_version() -> str:
    """Scala binary version of the installed Spark jars (e.g. "2.13"), from spark-core_<scala>-<version>.jar."""
    for jar in (spark_home() / "jars").glob("spark-core_*.jar"):
        return jar.name.split("_", 1)[1].split("-", 1)[0]
    raise RuntimeError(f"no spark-core jar under {spark_home() / 'jars'}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 5.0, token: str | None = None) -> object:
    """GET a JSON document; `token` is sent as `Authorization: Bearer` (UIs behind the JWS filter)."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jws_token(key_b64url: str, subject: str = "speedprofile") -> str:
    """An HS256-signed JWS (compact form) that Spark's org.apache.spark.ui.JWSFilter accepts for this key."""
    key = base64.urlsafe_b64decode(key_b64url + "=" * (-len(key_b64url) % 4))
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64url(json.dumps({"sub": subject}, separators=(",", ":")).encode())
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64url(sig)}"


def auth_properties(secret: str, ui_key: str | None = None) -> dict[str, str]:
    """Spark properties of an authenticated, encrypted standalone cluster (daemons and clients alike)."""
    props = {
        "spark.authenticate": "true",
        "spark.authenticate.secret": secret,
        "spark.network.crypto.enabled": "true",
        "spark.master.rest.enabled": "false",
    }
    if ui_key:
        props["spark.ui.filters"] = "org.apache.spark.ui.JWSFilter"
        props["spark.org.apache.spark.ui.JWSFilter.param.secretKey"] = ui_key
    return props


def write_properties(path: Path, props: dict[str, str], base: str = "") -> Path:
    """A spark-defaults style file (`base` text, then props) readable by its owner only (it holds the secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base)
        fh.writelines(f"{k} {v}\n" for k, v in props.items())
    os.chmod(path, 0o600)
    return path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, IndexError):
        return False


@dataclass
class Daemon:
    """One started JVM: role ("master" / "worker-N"), PID (= its process group id), ports and log file."""

    role: str
    pid: int
    port: int
    webui_port: int
    log: str
    worker_id: str | None = None
    host: str = HOST  # the address it binds and is reached at
    prefix: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", NAME]: runs it on another host


@dataclass
class Cluster:
    state_dir: str
    master: Daemon | None = None
    workers: list[Daemon] = field(default_factory=list)
    killed: list[dict] = field(default_factory=list)
    auth: bool = False

    # ---- security ---------------------------------------------------------------------------------------------
    @property
    def conf_dir(self) -> Path:
        """SPARK_CONF_DIR for daemons and clients of an --auth cluster (spark-defaults.conf with the secret)."""
        return Path(self.state_dir) / "conf"

    def _properties(self) -> dict[str, str]:
        conf = self.conf_dir / "spark-defaults.conf"
        props = {}
        for line in conf.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.partition(" ")
                props[key] = value.strip()
        return props

    @property
    def ui_token(self) -> str | None:
        """Bearer token for the daemons' web UIs (None without --auth)."""
        if not self.auth:
            return None
        return jws_token(self._properties()["spark.org.apache.spark.ui.JWSFilter.param.secretKey"])

    def _write_auth_conf(self) -> None:
        secret = secrets.token_hex(32)
        ui_key = _b64url(secrets.token_bytes(32))
        base = ""
        if (REPO_CONF / "spark-defaults.conf").is_file():
            base = (REPO_CONF / "spark-defaults.conf").read_text() + "\n"
        write_properties(self.conf_dir / "spark-defaults.conf", auth_properties(secret, ui_key), base)
        if (REPO_CONF / "log4j2.properties").is_file():
            (self.conf_dir / "log4j2.properties").write_text((REPO_CONF / "log4j2.properties").read_text())

    # ---- life cycle -------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self.master is not None
        return f"spark://{self.master.host}:{self.master.port}"

    @property
    def master_json_url(self) -> str:
        assert self.master is not None
        return f"http://{self.master.host}:{self.master.webui_port}/json/"

    def _env(self, host: str = HOST) -> dict[str, str]:
        env = dict(os.environ)
        env["SPARK_HOME"] = str(spark_home())
        env["SPARK_LOCAL_IP"] = host
        # The launcher that builds executor command lines wants the Scala version of the jars (a source build
        # would let it look under launcher/target/); pyspark ships Scala 2.13 jars.
        env.setdefault("SPARK_SCALA_VERSION", scala_version())
        env.setdefault("PYSPARK_PYTHON", sys.executable)
        env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        # Small daemons: the machine is shared; executors get their memory from --memory / spark.executor.memory.
        env.setdefault("SPARK_DAEMON_MEMORY", "256m")
        if self.auth:
            env["SPARK_CONF_DIR"] = str(self.conf_dir)
        return env

    def _spawn(self, role: str, main_class: str, args: list[str], port: int, webui_port: int,
               host: str = HOST, prefix: list[str] | None = None) -> Daemon:
        logs = Path(self.state_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{role}.log"
        cmd = [
            *(prefix or []),
            "java",
            "-Xmx256m",
            "-cp",
            f"{spark_home() / 'conf'}{os.pathsep}{spark_home() / 'jars'}/*",
            main_class,
            *args,
            *(["--properties-file", str(self.conf_dir / "spark-defaults.conf")] if self.auth else []),
        ]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(host),
                cwd=self.state_dir,
                start_new_session=True,  # own process group: killed as a unit, never by name
            )
        # With a prefix like `ip netns exec NAME`, that command execs java: the PID is still the JVM's.
        return Daemon(role=role, pid=proc.pid, port=port, webui_port=webui_port, log=str(log_path), host=host,
                      prefix=list(prefix or []))

    def start_master(self, host: str = HOST, prefix: list[str] | None = None) -> None:
        """Start the master; `host`/`prefix` put it on another address, e.g. in a network namespace."""
        port, webui = free_port(), free_port()
        self.master = self._spawn(
            "master",
            "org.apache.spark.deploy.master.Master",
            ["--host", host, "--port", str(port), "--webui-port", str(webui)],
            port,
            webui,
            host,
            prefix,
        )
        self.save()

    def start_worker(self, cores: int = 1, memory: str = "1g", host: str = HOST,
                     prefix: list[str] | None = None) -> Daemon:
        """Start one more worker; `host`/`prefix` as for start_master."""
        n = len(self.workers) + 1
        port, webui = free_port(), free_port()
        work_dir = Path(self.state_dir) / f"work-{n}"
        work_dir.mkdir(parents=True, exist_ok=True)
        d = self._spawn(
            f"worker-{n}",
            "org.apache.spark.deploy.worker.Worker",
            [
                "--host", host, "--port", str(port), "--webui-port", str(webui),
                "--cores", str(cores), "--memory", memory, "--work-dir", str(work_dir),
                self.url,
            ],
            port,
            webui,
            host,
            prefix,
        )
        self.workers.append(d)
        self.save()
        return d

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the master answers and every started worker is registered ALIVE; record worker ids."""
        deadline = time.time() + timeout
        last: object = None
        while time.time() < deadline:
            for d in [self.master, *self.workers]:
                assert d is not None
                if not pid_alive(d.pid):
                    raise RuntimeError(f"{d.role} (pid {d.pid}) exited during start-up; see {d.log}:\n{tail(d.log)}")
            try:
                state = get_json(self.master_json_url, token=self.ui_token)
            except (OSError, ValueError) as exc:  # not listening yet / UI still starting
                last = exc
                time.sleep(0.5)
                continue
            last = state
            alive = {(w["host"], int(w["port"])): w["id"] for w in state.get("workers", []) if w["state"] == "ALIVE"}
            if all((w.host, w.port) in alive for w in self.workers):
                for w in self.workers:
                    w.worker_id = alive[(w.host, w.port)]
                self.save()
                return
            time.sleep(0.5)
        raise RuntimeError(f"cluster not ready after {timeout:.0f}s; last master state: {last}")

    def start(self, workers: int = 2, cores: int = 1, memory: str = "1g", timeout: float = 120.0,
              placement: list[tuple[str, list[str]]] | None = None) -> Cluster:
        """Start the master and `workers` workers; `placement` gives (address, command prefix) for the master and
        then each worker, e.g. one network namespace each (default: all on 127.0.0.1)."""
        places = placement or [(HOST, [])] * (workers + 1)
        if len(places) != workers + 1:
            raise ValueError(f"placement names {len(places)} hosts for a master and {workers} workers")
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        if self.auth:
            self._write_auth_conf()
        self.start_master(*places[0])
        try:
            for host, prefix in places[1:]:
                self.start_worker(cores=cores, memory=memory, host=host, prefix=prefix)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def kill_worker(self, worker: Daemon, log=print) -> None:
        """SIGKILL the worker's whole process group (worker JVM, its executor JVM, their Python workers)."""
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # SIGKILL cannot be caught, but tearing down a JVM with a large heap takes the kernel a moment.
        deadline = time.monotonic() + 30
        while pid_alive(worker.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        msg = f"killed worker {worker.worker_id} (pid {worker.pid})"
        self.killed.append({"role": worker.role, "worker_id": worker.worker_id, "pid": worker.pid, "at": time.time()})
        self.save()
        log(msg)

    def worker_running_tasks(self, driver_ui: str) -> tuple[Daemon, dict] | None:
        """While a stage of the app behind `driver_ui` is part-way through (some tasks done, some running), the
        worker whose executor is running one of them, with that stage's REST record; None otherwise."""
        token = self.ui_token
        apps = get_json(f"{driver_ui}/api/v1/applications", token=token)
        if not apps:
            return None
        app_id = apps[0]["id"]  # type: ignore[index]
        stages = get_json(f"{driver_ui}/api/v1/applications/{app_id}/stages?status=active", token=token)
        mid = [s for s in stages if s["numActiveTasks"] > 0 and s["numCompleteTasks"] > 0]  # type: ignore[union-attr]
        if not mid:
            return None
        busy = {
            str(e["id"])
            for e in get_json(f"{driver_ui}/api/v1/applications/{app_id}/executors", token=token)  # type: ignore[union-attr]
            if e["id"] != "driver" and e.get("isActive") and e.get("activeTasks", 0) > 0
        }
        for w in self.workers:
            if not pid_alive(w.pid):
                continue
            ws = get_json(f"http://{w.host}:{w.webui_port}/json/", token=token)
            if any(str(e["id"]) in busy and e.get("appid") == app_id for e in ws.get("executors", [])):  # type: ignore[union-attr]
                return w, mid[0]
        return None

    def kill_worker_mid_stage(self, driver_ui: str, is_running, timeout: float = 600.0, log=print) -> Daemon | None:
        """Poll the driver's REST API until a stage is part-way through, then kill a worker running its tasks.

        `is_running()` tells whether the driver is still up; returns the killed worker, or None if the app ended
        (or `timeout` passed) before any stage was caught mid-way.
        """
        deadline = time.time() + timeout
        while time.time() < deadline and is_running():
            try:
                found = self.worker_running_tasks(driver_ui)
            except (OSError, ValueError, KeyError):  # UI not up yet, or between applications
                found = None
            if found:
                worker, stage = found
                log(
                    f"stage {stage['stageId']} ({stage['name'][:60]}) has {stage['numCompleteTasks']}/"
                    f"{stage['numTasks']} tasks done and {stage['numActiveTasks']} running"
                )
                self.kill_worker(worker, log=log)
                return worker
            time.sleep(0.2)
        return None

    def stop(self, grace: float = 10.0) -> list[int]:
        """Stop every recorded daemon by its process group: SIGTERM, then SIGKILL after `grace` seconds."""
        daemons = [d for d in [*self.workers, self.master] if d is not None]
        for d in daemons:
            try:
                os.killpg(d.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and any(pid_alive(d.pid) for d in daemons):
            time.sleep(0.2)
        for d in daemons:
            try:
                os.killpg(d.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Reap our own children so they do not linger as zombies.
        for d in daemons:
            try:
                os.waitpid(d.pid, os.WNOHANG)
            except ChildProcessError:
                pass
        return [d.pid for d in daemons]

    # ---- inspection -------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return get_json(self.master_json_url, token=self.ui_token)  # type: ignore[return-value]

    def save(self) -> None:
        path = Path(self.state_dir) / "cluster.json"
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: str) -> Cluster:
        raw = json.loads((Path(state_dir) / "cluster.json").read_text())
        return cls(
            state_dir=raw["state_dir"],
            master=Daemon(**raw["master"]) if raw.get("master") else None,
            workers=[Daemon(**w) for w in raw.get("workers", [])],
            killed=raw.get("killed", []),
            auth=raw.get("auth", False),
        )


def tail(path: str, n: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return "(no log)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Local Spark standalone cluster on 127.0.0.1 (pyspark's own jars).")
    p.add_argument("action", choices=["start", "status", "stop"])
    p.add_argument("--state-dir", required=True, help="folder for cluster.json, logs and worker work dirs")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cores", type=int, default=1, help="cores per worker")
    p.add_argument("--memory", default="1g", help="memory per worker")
    p.add_argument("--auth", action="store_true",
                   help="RPC authentication + encryption, UIs behind the JWS filter (secret in <state-dir>/conf)")
    args = p.parse_args(argv)
    state_file = Path(args.state_dir) / "cluster.json"
    if args.action == "start":
        if state_file.exists() and any(pid_alive(d.pid) for d in _daemons(Cluster.load(args.state_dir))):
            print(f"error: a cluster recorded in {state_file} is still running; stop it first", file=sys.stderr)
            return 2
        c = Cluster(state_dir=str(Path(args.state_dir).resolve()), auth=args.auth)
        c.start(workers=args.workers, cores=args.cores, memory=args.memory)
        print(f"master {c.url} (web UI http://{HOST}:{c.master.webui_port}, pid {c.master.pid})")  # type: ignore[union-attr]
        if c.auth:
            print(f"clients: SPARK_CONF_DIR={c.conf_dir}; UI header: Authorization: Bearer {c.ui_token}")
        for w in c.workers:
            print(f"{w.role} {w.worker_id} (pid {w.pid}, web UI http://{HOST}:{w.webui_port})")
        return 0
    if not state_file.exists():
        print(f"error: no cluster recorded in {state_file}", file=sys.stderr)
        return 2
    c = Cluster.load(args.state_dir)
    if args.action == "status":
        for d in _daemons(c):
            print(f"{d.role} pid {d.pid} {'running' if pid_alive(d.pid) else 'stopped'}")
        return 0
    pids = c.stop()
    print(f"stopped pids {' '.join(map(str, pids))}")
    return 0


def _daemons(c: Cluster) -> list[Daemon]:
    return [d for d in [c.master, *c.workers] if d is not None]


if __name__ == "__main__":
    sys.exit(main())
