"""A 4-node distributed MinIO with erasure coding (EC 2+2), one node per network namespace (tests/plugins/netns.py):
objects written through one node are read through every node; with one storage node SIGKILLed reads and writes go
on (write quorum 3 of 4), also with one cut off the network; when it comes back it heals, and the bucket holds
exactly the objects written. The cluster itself is tests/plugins/objectstore.py's `minio_cluster`.
"""

from __future__ import annotations

import subprocess
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential

from tests.plugins.objectstore import NODES, MinioCluster

pytestmark = pytest.mark.slow


def table_for(n: int) -> pa.Table:
    return pa.table({"segment_id": pa.array(range(n * 100, n * 100 + 50), pa.int64()),
                     "speed_kph": pa.array([n + j / 10 for j in range(50)], pa.float64())})


def unavailable(exc: BaseException) -> bool:
    """MinIO answers 503 (SlowDown/SlowDownWrite) while it has, for a moment, fewer drives than its quorum, e.g.
    before the nodes agree that a peer is gone. Clients retry it with back-off (S3A: fs.s3a.retry.throttle.*)."""
    return isinstance(exc, OSError) and "HTTP status 503" in str(exc)


@retry(retry=retry_if_exception(unavailable), wait=wait_exponential(multiplier=0.5, max=8),
       stop=stop_after_delay(120), reraise=True)
def write_object(fs: pafs.S3FileSystem, path: str, table: pa.Table) -> None:
    pq.write_table(table, path, filesystem=fs)


def write_objects(fs: pafs.S3FileSystem, bucket: str, prefix: str, numbers: range) -> dict[str, pa.Table]:
    written = {}
    for n in numbers:
        key = f"{prefix}/partition={n % 3}/part-{n:03d}.parquet"
        write_object(fs, f"{bucket}/{key}", table_for(n))
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
    minio_cluster.wait_write_quorum(2, timeout=60)  # also as seen by the node the writes go through
    assert_all_readable(minio_cluster, 1, "faults", before)  # reads go on
    during = write_objects(minio_cluster.fs(2), minio_cluster.bucket, "faults", range(10, 20))  # writes go on
    assert not any(minio_cluster.on_disk(down, key) for key in during)  # they really missed the dead node
    every = before | during
    assert_all_readable(minio_cluster, 4, "faults", every)

    minio_cluster.start(down)
    minio_cluster.wait_ready(down)
    minio_cluster.wait_finds(down, during)
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
    minio_cluster.wait_finds(4, during)

    def read_all_through_node_1() -> None:  # heal on read, once node 1 sees node 4's drive again
        for key in every:
            pq.read_table(f"{minio_cluster.bucket}/{key}", filesystem=minio_cluster.fs(1))

    wait_until_healed(minio_cluster, 4, during, reread=read_all_through_node_1)
    for node in range(1, NODES + 1):
        assert_all_readable(minio_cluster, node, "partition", every)


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
