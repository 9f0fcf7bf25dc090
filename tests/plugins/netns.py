"""Shared pytest fixtures: several test hosts on one machine — Linux network namespaces on a private bridge.

`netns_factory(n)` makes n namespaces, each with loopback up and one veth (`eth0`) plugged into a bridge in the
root namespace, addressed 10.213.<X>.11, .12, ... (X = 77, or the next /24 of 10.213.77-126 no other run holds);
the bridge has .1, so the test process reaches every host. The namespaces have no default route: their traffic
stays on 127.0.0.0/8 and that subnet. Names carry this process's pid; everything is removed at teardown (also
after a failed test), and leftovers of a killed run (dead pid) are removed before new ones are made.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

LOCK = Path("/run/lock/speedprofile-netns.lock")
SUBNETS = range(77, 127)  # third octet of 10.213.X.0/24
_serial = itertools.count()


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def pid_alive(pid: int) -> bool:
    """scripts/cluster.py's check (a process that exists, ours or not)."""
    from tests.plugins.infra import load_cluster_module

    return bool(load_cluster_module().pid_alive(pid))


def kill_namespace_processes(ns: str) -> None:
    """SIGKILL what still runs inside one of our namespaces (a namespace lives on while a process holds it)."""
    out = ip("netns", "pids", ns, check=False).stdout.split()
    for pid in out:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def remove_leftovers() -> None:
    """Namespaces and links of earlier runs whose pytest process is gone (killed before its teardown)."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        m = re.match(r"(spnet-(\d+)-\d+-\d+)\b", line)
        if m and not pid_alive(int(m.group(2))):
            kill_namespace_processes(m.group(1))
            ip("netns", "del", m.group(1), check=False)
    for m in re.finditer(r"^\d+: (sp(\d+)-\d+(?:br|v\d+))[@:]", ip("-o", "link", "show", check=False).stdout, re.M):
        if not pid_alive(int(m.group(2))):
            ip("link", "del", m.group(1), check=False)


@dataclass
class Host:
    """One namespace: its name, its address on the test subnet and the root-side end of its veth."""

    index: int
    ns: str
    address: str
    veth: str

    def argv(self, argv: list[str]) -> list[str]:
        """argv run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]


class NetnsLab:
    """n namespaces on one bridge; `run`/`popen` inside a host, `cut`/`restore` its link."""

    def __init__(self, n: int):
        k = next(_serial)
        pid = os.getpid()
        self.bridge = f"sp{pid}-{k}br"
        self.hosts: list[Host] = []
        self._names = [(f"spnet-{pid}-{k}-{i}", f"sp{pid}-{k}v{i}") for i in range(1, n + 1)]
        self.subnet = ""
        self.gateway = ""
        self.processes: list[subprocess.Popen] = []

    def create(self) -> NetnsLab:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            remove_leftovers()
            used = ip("-4", "-o", "addr", "show").stdout
            third = next((x for x in SUBNETS if f" 10.213.{x}." not in used), None)
            if third is None:
                raise RuntimeError("no free 10.213.X.0/24 test subnet")
            self.subnet, self.gateway = f"10.213.{third}.0/24", f"10.213.{third}.1"
            try:
                ip("link", "add", self.bridge, "type", "bridge")
                ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
                ip("link", "set", self.bridge, "up")
            except Exception:
                self.destroy()
                raise
        try:
            for i, (ns, veth) in enumerate(self._names, start=1):
                host = Host(i, ns, f"10.213.{third}.{10 + i}", veth)
                ip("netns", "add", ns)
                self.hosts.append(host)
                ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                ip("link", "set", veth, "master", self.bridge, "up")
                ip("-n", ns, "link", "set", "lo", "up")
                ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
            self.wait_reachable()
        except Exception:
            self.destroy()
            raise
        return self

    def wait_reachable(self, timeout: float = 10) -> None:
        """Until every host opens a TCP connection to the bridge address (the links are up and forwarding)."""
        with socket.socket() as listener:
            listener.bind((self.gateway, 0))
            listener.listen(64)
            port = listener.getsockname()[1]
            probe = f"import socket; socket.create_connection(('{self.gateway}', {port}), timeout=1).close()"
            deadline = time.monotonic() + timeout
            for host in self.hosts:
                while self.run(host, [sys.executable, "-c", probe]).returncode != 0:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{host.ns} ({host.address}) cannot reach {self.gateway}")
                    time.sleep(0.1)

    def popen(self, host: Host, argv: list[str], **kw) -> subprocess.Popen:
        """Start argv inside host's namespace in its own process group; stopped at teardown if still running."""
        proc = subprocess.Popen(host.argv(argv), start_new_session=True, stdin=subprocess.DEVNULL, **kw)
        self.processes.append(proc)
        return proc

    def run(self, host: Host, argv: list[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(host.argv(argv), **kw)

    def cut(self, host: Host) -> None:
        """Unplug host from the bridge: its packets go nowhere until `restore`."""
        ip("link", "set", host.veth, "down")

    def restore(self, host: Host) -> None:
        ip("link", "set", host.veth, "up")

    def destroy(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)
        for ns, veth in self._names:
            if ip("netns", "pids", ns, check=False).returncode == 0:
                kill_namespace_processes(ns)
                ip("netns", "del", ns, check=False)
            ip("link", "del", veth, check=False)
        ip("link", "del", self.bridge, check=False)

    def leftovers(self) -> list[str]:
        """Our names still present (empty after destroy)."""
        names = ip("netns", "list").stdout + ip("-o", "link", "show").stdout
        return [n for ns, veth in self._names for n in (ns, veth) if re.search(rf"\b{re.escape(n)}\b", names)] + (
            [self.bridge] if re.search(rf"\b{re.escape(self.bridge)}\b", names) else [])


@pytest.fixture(scope="module")
def netns_factory() -> Iterator[Callable[[int], NetnsLab]]:
    """make(n) -> a NetnsLab of n hosts; every lab made is removed when the module's tests are done."""
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (ip netns add)")
    labs: list[NetnsLab] = []

    def make(n: int) -> NetnsLab:
        lab = NetnsLab(n)
        labs.append(lab)
        return lab.create()

    try:
        yield make
    finally:
        for lab in labs:
            lab.destroy()
