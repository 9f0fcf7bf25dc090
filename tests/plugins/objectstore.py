"""Shared pytest fixtures: a real S3 object store — MinIO built from source (scripts/fetch_minio.sh) on 127.0.0.1.

`minio_server` (session) runs one single-drive server on a free loopback port with freshly generated root
credentials, handed to MinIO through its environment (never its argv) and never logged; `minio_env` (per test)
puts them into this process's environment, where speedprofile.storage and pyarrow read them.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"


def pinned_minio_version() -> str:
    """MINIO_VERSION from conf/versions.env, the one pin the fetch script, the roles and compose read."""
    for line in (REPO / "conf" / "versions.env").read_text().splitlines():
        if line.startswith("MINIO_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("MINIO_VERSION missing in conf/versions.env")


def minio_binary() -> Path:
    """The pinned MinIO binary, built into the cache by scripts/fetch_minio.sh when it is not there yet."""
    proc = subprocess.run([str(REPO / "scripts" / "fetch_minio.sh")], capture_output=True, text=True, timeout=3600)
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
            with urllib.request.urlopen(url, timeout=2) as resp:
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
    import pyarrow.fs as pafs

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
