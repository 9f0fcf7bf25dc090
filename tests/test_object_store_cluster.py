"""A 4-node distributed MinIO with erasure coding (EC 2+2), one node per network namespace (tests/plugins/netns.py):
objects written through one node are read through every node; with one storage node SIGKILLed reads and writes go
on (write quorum 3 of 4); when it comes back it heals, and the bucket holds exactly the objects written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tests.plugins.objectstore import new_credentials, s3_filesystem, server_env, wait_http_ok

pytestmark = pytest.mark.slow

PORT = 9000
NODES = 4


class MinioCluster:
    """MinIO nodes 1..4, node i in namespace i, each with its own data folder; start/kill one node at a time."""

    def __init__(self, lab, binary: Path, state: Path):
        self.lab, self.binary, self.state = lab, binary, state
        self.access_key, self.secret_key = new_credentials()
        self.bucket = "speedprofile-cluster"
        self.volumes = [f"http://{h.address}:{PORT}{self.data_dir(h.index)}" for h in lab.hosts]
        self.procs: dict[int, subprocess.Popen] = {}

    def __repr__(self) -> str:  # never the secret
        return f"MinioCluster({[h.address for h in self.lab.hosts]})"

    def data_dir(self, i: int) -> Path:
        return self.state / f"node{i}" / "data"

    def log_path(self, i: int) -> Path:
        return self.state / f"node{i}" / "minio.log"

    def endpoint(self, i: int) -> str:
        return f"http://{self.lab.hosts[i - 1].address}:{PORT}"

    def start(self, i: int) -> None:
        host = self.lab.hosts[i - 1]
        home = self.state / f"node{i}" / "home"
        for d in (self.data_dir(i), home):
            d.mkdir(parents=True, exist_ok=True)
        # MINIO_CI_CD: the test drives share the root disk, which a production deployment refuses.
        env = server_env(self.access_key, self.secret_key, home, MINIO_CI_CD="on")
        with open(self.log_path(i), "ab") as log:
            self.procs[i] = self.lab.popen(
                host, [str(self.binary), "server", "--address", f"{host.address}:{PORT}", "--anonymous", *self.volumes],
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

    def on_disk(self, i: int, key: str) -> bool:
        """Node i's drive holds the object's metadata (and its shard): MinIO keeps <drive>/<bucket>/<key>/xl.meta."""
        return (self.data_dir(i) / self.bucket / key / "xl.meta").is_file()


@pytest.fixture(scope="module")
def minio_cluster(netns_factory, minio_binary_path, tmp_path_factory):
    lab = netns_factory(NODES)
    cluster = MinioCluster(lab, minio_binary_path, tmp_path_factory.mktemp("minio-cluster"))
    for i in range(1, NODES + 1):
        cluster.start(i)
    try:
        for i in range(1, NODES + 1):
            cluster.wait_ready(i)
        cluster.wait_write_quorum(1)
        s3_filesystem(cluster.endpoint(1), cluster.access_key, cluster.secret_key,
                      allow_bucket_creation=True).create_dir(cluster.bucket)
        yield cluster
    finally:
        for i in list(cluster.procs):
            cluster.kill(i)
    logs = "".join(cluster.log_path(i).read_text(errors="replace") for i in range(1, NODES + 1))
    assert cluster.secret_key not in logs and cluster.access_key not in logs


def table_for(n: int) -> pa.Table:
    return pa.table({"segment_id": pa.array(range(n * 100, n * 100 + 50), pa.int64()),
                     "speed_kph": pa.array([n + j / 10 for j in range(50)], pa.float64())})


def write_objects(fs: pafs.S3FileSystem, bucket: str, prefix: str, numbers: range) -> dict[str, pa.Table]:
    written = {}
    for n in numbers:
        key = f"{prefix}/partition={n % 3}/part-{n:03d}.parquet"
        pq.write_table(table_for(n), f"{bucket}/{key}", filesystem=fs)
        written[key] = table_for(n)
    return written


def assert_all_readable(cluster: MinioCluster, node: int, prefix: str, written: dict[str, pa.Table]) -> None:
    assert cluster.keys(node, prefix) == sorted(written), f"listing through node {node}"
    fs = cluster.fs(node)
    for key, table in written.items():
        assert pq.read_table(f"{cluster.bucket}/{key}", filesystem=fs).equals(table), (node, key)
    whole = pq.read_table(f"{cluster.bucket}/{prefix}", filesystem=fs, partitioning="hive")
    assert whole.num_rows == 50 * len(written)
    assert len(set(whole.column("segment_id").to_pylist())) == whole.num_rows  # no object counted twice


def test_test_hosts_reach_each_other_only_on_their_subnet_and_a_cut_link_isolates_one(netns_factory):
    import sys
    import urllib.request

    lab = netns_factory(3)
    a, b, _ = lab.hosts
    for host in lab.hosts:
        addrs = lab.run(host, ["ip", "-4", "-o", "addr"]).stdout
        assert f"inet {host.address}/24" in addrs and "inet 127.0.0.1/8" in addrs and addrs.count("inet ") == 2
        assert "default" not in lab.run(host, ["ip", "route"]).stdout  # nothing leaves the test subnet
    server = lab.popen(b, [sys.executable, "-m", "http.server", "--bind", b.address, "8000"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = [sys.executable, "-c", f"import socket; socket.create_connection(('{b.address}', 8000), timeout=1)"]
    deadline = time.monotonic() + 20
    while lab.run(a, probe).returncode != 0:
        assert time.monotonic() < deadline and server.poll() is None, "http.server in host b never answered"
        time.sleep(0.2)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    assert opener.open(f"http://{b.address}:8000/", timeout=5).status == 200  # from the root namespace
    lab.cut(b)
    assert lab.run(a, probe).returncode != 0
    lab.restore(b)
    deadline = time.monotonic() + 10
    while lab.run(a, probe).returncode != 0:
        assert time.monotonic() < deadline, "host b unreachable after restore"
        time.sleep(0.2)
    lab.destroy()
    assert server.poll() is not None and lab.leftovers() == []


def test_objects_written_through_one_node_are_read_through_every_node(minio_cluster):
    written = write_objects(minio_cluster.fs(1), minio_cluster.bucket, "spread", range(12))
    for node in range(1, NODES + 1):
        assert_all_readable(minio_cluster, node, "spread", written)
    # erasure coded over all four drives: every node holds a shard of every object
    for node in range(1, NODES + 1):
        assert all(minio_cluster.on_disk(node, key) for key in written), node


def test_one_storage_node_killed_reads_and_writes_go_on_and_it_heals_on_return(minio_cluster):
    before = write_objects(minio_cluster.fs(1), minio_cluster.bucket, "faults", range(10))
    down = 3
    minio_cluster.kill(down)
    minio_cluster.wait_write_quorum(1, timeout=60)  # 3 of 4 drives: still write quorum
    assert_all_readable(minio_cluster, 1, "faults", before)  # reads go on
    during = write_objects(minio_cluster.fs(2), minio_cluster.bucket, "faults", range(10, 20))  # writes go on
    assert not any(minio_cluster.on_disk(down, key) for key in during)  # they really missed the dead node
    every = before | during
    assert_all_readable(minio_cluster, 4, "faults", every)

    minio_cluster.start(down)
    minio_cluster.wait_ready(down)
    wait_until_found(minio_cluster, down, during)
    minio_cluster.wait_write_quorum(down)
    assert_all_readable(minio_cluster, down, "faults", every)  # served through the node that was away
    wait_until_healed(minio_cluster, down, during)
    for node in range(1, NODES + 1):  # exactly the objects written: nothing lost, nothing duplicated
        assert_all_readable(minio_cluster, node, "faults", every)


def test_a_storage_node_cut_off_the_network_stalls_one_request_then_reads_and_writes_go_on(minio_cluster):
    """A network partition, not a crash: the node keeps running but its link is down. The first request that
    needs it waits for MinIO to give the drive up (tens of seconds, the client SDK retrying), the rest run at
    full speed; after the link is back, reads of the objects heal what the node missed (once the node that
    serves them has reconnected: MinIO's own queue of partial writes gave up on them while the link was down)."""
    before = write_objects(minio_cluster.fs(1), minio_cluster.bucket, "partition", range(5))
    away = minio_cluster.lab.hosts[3]
    minio_cluster.lab.cut(away)
    try:
        t0 = time.monotonic()
        during = write_objects(minio_cluster.fs(1), minio_cluster.bucket, "partition", range(5, 12))
        seconds = time.monotonic() - t0
        every = before | during
        assert_all_readable(minio_cluster, 2, "partition", every)
        print(f"7 writes with node 4 cut off took {seconds:.1f} s")
        assert seconds < 240
    finally:
        minio_cluster.lab.restore(away)
    minio_cluster.wait_ready(4)
    wait_until_found(minio_cluster, 4, during)

    def read_all_through_node_1() -> None:  # heal on read, once node 1 sees node 4's drive again
        for key in every:
            pq.read_table(f"{minio_cluster.bucket}/{key}", filesystem=minio_cluster.fs(1))

    wait_until_healed(minio_cluster, 4, during, reread=read_all_through_node_1)
    for node in range(1, NODES + 1):
        assert_all_readable(minio_cluster, node, "partition", every)


def wait_until_found(cluster: MinioCluster, node: int, keys, timeout: float = 60) -> None:
    """/minio/health/ready answers before a returning node has reconnected to its peers; for that moment (about a
    second here) it answers "no such key" for objects its own drive missed. Wait until it finds them all."""
    deadline = time.monotonic() + timeout
    fs = cluster.fs(node)
    unseen = list(keys)
    while unseen and time.monotonic() < deadline:
        unseen = [k for k in unseen if fs.get_file_info(f"{cluster.bucket}/{k}").type != pafs.FileType.File]
        time.sleep(0.2)
    assert not unseen, f"node {node} still does not find {len(unseen)} objects {timeout:.0f} s after its return"


def wait_until_healed(cluster: MinioCluster, node: int, keys, timeout: float = 120, reread=None) -> None:
    """Until node's drive holds a shard of every key again; `reread` (if given) runs every 2 s meanwhile."""
    deadline = time.monotonic() + timeout
    missing = [k for k in keys if not cluster.on_disk(node, k)]
    last = 0.0
    while missing and time.monotonic() < deadline:
        if reread is not None and time.monotonic() - last > 2:
            reread()
            last = time.monotonic()
        time.sleep(0.5)
        missing = [k for k in missing if not cluster.on_disk(node, k)]
    assert not missing, f"node {node} not healed after {timeout:.0f} s: {len(missing)} objects without its shard"
