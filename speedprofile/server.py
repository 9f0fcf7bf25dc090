"""`speedprofile server start|stop|status`: a long-lived Spark Connect server for the stage apps.

Spark's own `sbin/spark-daemon.sh` runs it, as Spark's `start-connect-server.sh` does: one JVM, warm Python
workers, reused by every stage and every partition-day. `speedprofile run --remote sc://HOST:PORT` and the Airflow
`spark_connect` connection use it.
Bound to 127.0.0.1 unless --host says otherwise. Configuration: $SPARK_CONF_DIR (a cluster's spark-defaults),
else the repository's conf/.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from speedprofile.errors import UserError

DEFAULT_PORT = 15002


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address the server binds (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"gRPC port (default {DEFAULT_PORT})")
    p.add_argument("--master", default=os.environ.get("SPEEDPROFILE_SPARK_MASTER"),
                   help="Spark master for the server (default: spark-defaults, else local[*])")
    p.add_argument("--state-dir", default=None,
                   help="pid and log folder (default ~/.cache/speedprofile/connect-<port>)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server to answer")


CONNECT_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def spark_home() -> str:
    from pyspark.find_spark_home import _find_spark_home

    return _find_spark_home()


def state_dir(port: int, given: str | None = None) -> Path:
    d = Path(given) if given else Path.home() / ".cache" / "speedprofile" / f"connect-{port}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def server_env(state: Path) -> dict[str, str]:
    """The server's environment: a spark-submit's, with $PGPASSFILE naming this user's password file in place of
    the table catalog's password when a PostgreSQL catalog is configured (its clients register the catalog
    without a password; pgjdbc in the server's JVM reads it from that file)."""
    from speedprofile.run import submit_env
    from speedprofile.tables import CATALOG_PASSWORD_ENV, passfile_env

    env = submit_env()
    env.pop("SPARK_REMOTE", None)
    env.update(passfile_env())
    env.pop(CATALOG_PASSWORD_ENV, None)
    env.update(SPARK_HOME=spark_home(), SPARK_LOG_DIR=str(state), SPARK_PID_DIR=str(state),
               SPARK_IDENT_STRING="speedprofile")
    return env


def url(host: str, port: int) -> str:
    return f"sc://{host}:{port}"


def answering(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def start(host: str = "127.0.0.1", port: int = DEFAULT_PORT, master: str | None = None,
          state: str | None = None, timeout: float = 120.0, confs: dict[str, str] | None = None) -> str:
    """Start the server (no-op when one answers on host:port) and wait until a session opens; returns its URL."""
    if answering(host, port):
        return url(host, port)
    from speedprofile.tables import spark_jars

    sd = state_dir(port, state)
    # What Spark's sbin/start-connect-server.sh does (the pip-installed Spark ships spark-daemon.sh, not that script)
    cmd = [os.path.join(spark_home(), "sbin", "spark-daemon.sh"), "submit", CONNECT_CLASS, "1",
           "--name", "Spark Connect server"]
    if master:
        cmd += ["--master", master]
    conf = {"spark.connect.grpc.binding.address": host, "spark.connect.grpc.binding.port": str(port),
            "spark.ui.enabled": "false", "spark.python.worker.reuse": "true", "spark.jars": spark_jars(),
            # one Python daemon per session is started and never stopped by Spark 4.1: ours exits when idle
            "spark.python.daemon.module": "speedprofile.pydaemon",
            **(confs or {})}
    for k, v in conf.items():
        cmd += ["--conf", f"{k}={v}"]
    cmd.append("spark-internal")
    res = subprocess.run(cmd, env=server_env(sd), capture_output=True, text=True)
    if res.returncode != 0:
        raise UserError(f"Spark Connect server did not start: {(res.stderr or res.stdout).strip()[-300:]}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answering(host, port):
            return url(host, port)
        if not _pid_alive(sd):
            break
        time.sleep(0.5)
    logs = sorted(sd.glob("*.out"))
    raise UserError(f"Spark Connect server on {host}:{port} did not come up [log: {logs[-1] if logs else sd}]")


def _pid_files(sd: Path) -> list[Path]:
    return sorted(sd.glob("*.pid"))


def _pid_alive(sd: Path) -> bool:
    for f in _pid_files(sd):
        try:
            os.kill(int(f.read_text().strip()), 0)
            return True
        except (ValueError, ProcessLookupError, PermissionError):
            continue
    return False


def stop(port: int = DEFAULT_PORT, state: str | None = None, timeout: float = 60.0, host: str = "127.0.0.1") -> bool:
    """Stop the server started from this state folder and wait until its JVM is gone (SIGKILL after `timeout`
    seconds); False when none was running."""
    import signal

    sd = state_dir(port, state)
    pids = []
    for f in _pid_files(sd):
        try:
            pids.append(int(f.read_text().strip()))
        except ValueError:
            continue
    was = _pid_alive(sd)
    subprocess.run([os.path.join(spark_home(), "sbin", "spark-daemon.sh"), "stop", CONNECT_CLASS, "1"],
                   env=server_env(sd),
                   capture_output=True, text=True)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.3)
    while was and answering(host, port) and time.monotonic() < deadline:  # the JVM's gRPC port closes last
        time.sleep(0.3)
    return was


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purpose
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cli(args: argparse.Namespace) -> int:
    if args.subverb == "start":
        u = start(args.host, args.port, args.master, args.state_dir, args.timeout)
        print(f"server: Spark Connect at {u} (use: speedprofile run --remote {u}, or SPEEDPROFILE_SPARK_REMOTE={u})")
        return 0
    if args.subverb == "stop":
        print("server: stopped" if stop(args.port, args.state_dir, host=args.host) else "server: none was running")
        return 0
    up = answering(args.host, args.port)
    print(f"server: {url(args.host, args.port)} {'answering' if up else 'not running'}")
    return 0 if up else 3


if __name__ == "__main__":
    from speedprofile.cli import main

    sys.exit(main(["server", *sys.argv[1:]]))
