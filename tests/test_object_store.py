"""speedprofile.storage against a real S3 server (MinIO built from the pinned source, tests/plugins/objectstore.py):
text and Parquet round trips through s3a:// URIs, and the credentials kept out of logs and error messages; the
pipeline's user as the minio role makes it (secret off every command line, a policy on the warehouse bucket only)
and found by the drivers through the spark role's credentials file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from speedprofile import storage
from tests.plugins.objectstore import (
    REPO,
    WAREHOUSE_BUCKET,
    command_lines_holding,
    free_port,
    new_credentials,
    pinned_minio_version,
    run_minio_user_tasks,
    s3_filesystem,
    server_env,
    stop_process,
)


def test_text_round_trip_exists_list_and_delete(minio_env):
    root = minio_env.uri("warehouse/_metrics/ingest_probes")
    day = f"{root}/dt=2026-01-05"
    assert not storage.exists(day)
    assert storage.list_dir(day) == []
    storage.write_text(f"{day}/all.json", '{"rows_in": 3}')
    storage.write_text(f"{day}/partition=871e9a0ecffffff.json", "é ünïcode ✓")
    assert storage.exists(day) and storage.exists(f"{day}/all.json")
    assert storage.read_text(f"{day}/all.json") == '{"rows_in": 3}'
    assert storage.read_text(f"{day}/partition=871e9a0ecffffff.json") == "é ünïcode ✓"
    assert storage.list_dir(day) == ["all.json", "partition=871e9a0ecffffff.json"]
    assert storage.list_dir(root) == ["dt=2026-01-05"]
    storage.write_text(f"{day}/all.json", '{"rows_in": 4}')  # overwrite: readers see the whole new content
    assert storage.read_text(f"{day}/all.json") == '{"rows_in": 4}'
    storage.delete(f"{day}/all.json")
    assert not storage.exists(f"{day}/all.json")
    assert storage.list_dir(day) == ["partition=871e9a0ecffffff.json"]
    storage.delete(root)
    assert not storage.exists(root) and storage.list_dir(root) == []
    storage.delete(root)  # deleting what is not there is a no-op
    with pytest.raises(FileNotFoundError):
        storage.read_text(f"{day}/all.json")


def test_parquet_written_and_read_back_through_pyarrow(minio_env):
    table = pa.table({
        "segment_id": pa.array([4694506246477951207, -3, 7], pa.int64()),
        "tow_bucket": pa.array([1248, 0, 2015], pa.int32()),
        "speed_kph": pa.array([30.5, None, 88.25], pa.float64()),
        "source": ["observed", "backoff_1", "observed"],
    })
    folder = minio_env.uri("warehouse/speed_estimates/partition=871e9a0ecffffff")
    fs, path = storage.filesystem(f"{folder}/part-0.parquet")
    pq.write_table(table, path, filesystem=fs)
    assert storage.list_dir(folder) == ["part-0.parquet"]
    assert pq.read_table(path, filesystem=fs).equals(table)
    # the same object through a file system opened on its own (not the module's cached one)
    direct = minio_env.filesystem()
    assert pq.read_table(f"{minio_env.bucket}/warehouse/speed_estimates", filesystem=direct,
                         partitioning="hive").num_rows == 3
    storage.delete(minio_env.uri("warehouse/speed_estimates"))


def test_a_subprocess_reaches_the_store_with_env_alone(minio_server, tmp_path):
    """What a spark-submit or an Airflow task gets: the four AWS_* variables, no credentials in argv."""
    code = (
        "import sys\nfrom speedprofile import storage\n"
        "storage.write_text(sys.argv[1], 'from a child')\nprint(storage.read_text(sys.argv[1]))"
    )
    uri = minio_server.uri("child/hello.txt")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **minio_server.env()}
    proc = subprocess.run([sys.executable, "-c", code, uri], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "from a child"


def test_credentials_stay_out_of_the_server_log_and_error_messages(minio_env, monkeypatch):
    storage.write_text(minio_env.uri("secrets-check/x.txt"), "x")
    texts = []
    with pytest.raises(FileNotFoundError) as missing:
        storage.read_text(minio_env.uri("secrets-check/absent.txt"))
    texts.append(str(missing.value))
    bad_secret = s3_filesystem(minio_env.endpoint, minio_env.access_key, minio_env.secret_key[::-1])
    with pytest.raises(OSError) as refused:
        bad_secret.get_file_info(f"{minio_env.bucket}/secrets-check/x.txt")
    texts.append(str(refused.value))
    # the module's own path, with a wrong secret in the environment
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", minio_env.secret_key[:-4] + "0000")
    storage._remote_fs.cache_clear()
    with pytest.raises(OSError) as denied:
        storage.read_text(minio_env.uri("secrets-check/x.txt"))
    texts.append(str(denied.value))
    assert "403" in texts[1] or "denied" in texts[1].lower() or "signature" in texts[1].lower(), texts[1]
    log = minio_env.log()
    assert log.strip(), "the server wrote no log at all"
    for text in [*texts, log]:
        assert minio_env.secret_key not in text
        assert minio_env.secret_key[:-4] not in text
        assert minio_env.access_key not in text
    assert minio_env.secret_key not in repr(minio_env)
    # nor on the server's command line (ps shows argv to every local user)
    argv = open(f"/proc/{minio_env.process.pid}/cmdline", "rb").read().decode()
    assert minio_env.secret_key not in argv and minio_env.access_key not in argv


def test_the_server_is_the_pinned_source_build(minio_server, minio_binary_path):
    version = pinned_minio_version()
    assert minio_binary_path.parent.name == version
    go = shutil.which("go") or next(p for p in ("/usr/local/go/bin/go", os.path.expanduser("~/go/bin/go"),
                                                "/usr/lib/go/bin/go") if os.path.exists(p))
    build = subprocess.run([go, "version", "-m", str(minio_binary_path)], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    assert f"github.com/minio/minio\t{version}\t" in build.split("\n\tmod\t", 1)[1], build[:500]


def test_tls_server_with_the_roles_certificate_is_trusted_through_ssl_cert_file(minio_binary_path, tmp_path):
    """MinIO as deployed (TLS, the CA of roles/minio/files/make_certs.py): pyarrow verifies the server against
    SSL_CERT_FILE (what the Pis' system store and compose's entrypoint provide) and refuses it without."""
    certs = tmp_path / "certs"
    subprocess.run([sys.executable, str(REPO / "infra/rpi-ansible/roles/minio/files/make_certs.py"), "--out",
                    str(certs), "--hosts", "localhost,127.0.0.1"], check=True, capture_output=True, timeout=60)
    ca = certs / "CAs" / "ca.crt"
    (tmp_path / "data").mkdir()
    access_key, secret_key = new_credentials()
    port = free_port()
    with open(tmp_path / "minio.log", "wb") as log:
        proc = subprocess.Popen([str(minio_binary_path), "server", "--address", f"127.0.0.1:{port}", "--anonymous",
                                 "--certs-dir", str(certs), str(tmp_path / "data")], stdout=log,
                                stderr=subprocess.STDOUT, env=server_env(access_key, secret_key, tmp_path),
                                start_new_session=True)
    try:
        ready = tmp_path / "ready.py"
        ready.write_text(
            "import ssl, sys, time, urllib.request\nctx = ssl.create_default_context(cafile=sys.argv[2])\n"
            "for _ in range(300):\n    try:\n        urllib.request.urlopen(sys.argv[1], context=ctx, timeout=2); break\n"
            "    except Exception:\n        time.sleep(0.2)\nelse:\n    sys.exit(1)\n")
        subprocess.run([sys.executable, str(ready), f"https://127.0.0.1:{port}/minio/health/ready", str(ca)],
                       check=True, timeout=120)
        code = (
            "import sys, pyarrow.fs as f\nfrom speedprofile import storage\n"
            "f.S3FileSystem(allow_bucket_creation=True, region='us-east-1', scheme='https', "
            "endpoint_override=sys.argv[2]).create_dir('tls')\n"
            "storage.write_text(sys.argv[1], 'over tls')\nprint(storage.read_text(sys.argv[1]))"
        )
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": access_key,
               "AWS_SECRET_ACCESS_KEY": secret_key, "AWS_ENDPOINT_URL": f"https://127.0.0.1:{port}",
               "AWS_REGION": "us-east-1"}
        argv = [sys.executable, "-c", code, "s3a://tls/x.txt", f"127.0.0.1:{port}"]
        untrusted = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        assert untrusted.returncode != 0 and "curlCode: 60" in untrusted.stderr, untrusted.stderr[-1000:]
        assert secret_key not in untrusted.stderr and access_key not in untrusted.stderr
        trusted = subprocess.run(argv, env={**env, "SSL_CERT_FILE": str(ca)}, capture_output=True, text=True,
                                 timeout=120)
        assert trusted.returncode == 0, trusted.stderr[-1000:]
        assert trusted.stdout.strip() == "over tls"
    finally:
        stop_process(proc)


# ---- the pipeline's user (roles/minio/tasks/buckets.yml) ------------------------------------------------------


def test_role_makes_the_pipeline_user_without_its_secret_on_any_command_line(minio_pipeline_user):
    user = minio_pipeline_user
    assert user.argv_with_secret == []  # watched every 5 ms while the role ran
    assert user.secret_key not in user.run_output
    assert "failed=0" in user.run_output
    # the user logs in with the secret it was given on mc's standard input
    with user.filesystem().open_output_stream(f"{user.bucket}/warehouse/_probe.txt") as out:
        out.write(b"ok")
    # running the role again changes nothing (user, policy and its attachment are there)
    again, seen = run_minio_user_tasks(user.server, user.state, user.access_key, user.secret_key, user.bucket)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "changed=0" in again.stdout and not seen, again.stdout[-3000:]


def test_role_sets_a_rotated_secret(minio_server, tmp_path):
    """The vault gets a new secret for the same access key: the role's next run makes MinIO take it."""
    key, old, new = "rot-" + new_credentials()[0][2:14], "old-" + new_credentials()[1], "new-" + new_credentials()[1]
    for secret in (old, new):
        proc, seen = run_minio_user_tasks(minio_server, tmp_path / "state", key, secret, WAREHOUSE_BUCKET)
        assert proc.returncode == 0 and not seen, (proc.stdout + proc.stderr)[-3000:]
    assert "changed=0" not in proc.stdout
    bucket_info = s3_filesystem(minio_server.endpoint, key, new).get_file_info(WAREHOUSE_BUCKET)
    assert bucket_info.type.name == "Directory"
    with pytest.raises(OSError, match=r"(?i)signature|access[ _]?denied|403"):
        s3_filesystem(minio_server.endpoint, key, old).get_file_info(f"{WAREHOUSE_BUCKET}/x")


def test_pipeline_user_reaches_the_warehouse_bucket_and_nothing_else(minio_pipeline_user):
    import pyarrow.fs as pafs

    user = minio_pipeline_user
    fs = user.filesystem()
    key = f"{user.bucket}/warehouse/probes/dt=2026-01-05/part-0.txt"
    with fs.open_output_stream(key) as out:
        out.write(b"fix")
    with fs.open_input_stream(key) as src:
        assert src.read() == b"fix"
    listed = fs.get_file_info(pafs.FileSelector(f"{user.bucket}/warehouse", recursive=True))
    assert key in {i.path for i in listed}
    fs.move(key, key + ".moved")  # what a commit by rename does on S3: copy, then delete
    fs.delete_dir(f"{user.bucket}/warehouse/probes")
    assert fs.get_file_info(key + ".moved").type == pafs.FileType.NotFound
    denied = {
        "read another bucket": lambda: fs.open_input_stream(f"{user.other_bucket}/private/thing.txt").read(),
        "list another bucket": lambda: fs.get_file_info(pafs.FileSelector(f"{user.other_bucket}/private")),
        "write another bucket": lambda: fs.open_output_stream(f"{user.other_bucket}/x.txt").close(),
        "delete in another bucket": lambda: fs.delete_file(f"{user.other_bucket}/private/thing.txt"),
        "create a bucket": lambda: user.filesystem(allow_bucket_creation=True).create_dir("speedprofile-new"),
    }
    allowed = []
    for label, attempt in denied.items():
        try:
            attempt()
        except OSError as exc:
            assert re.search(r"(?i)access[ _]?denied|forbidden|403", str(exc)), (label, str(exc))
        else:
            allowed.append(label)
    assert allowed == []
    # the bucket list names only the bucket the user may use
    assert [i.path for i in fs.get_file_info(pafs.FileSelector("/"))] == [user.bucket]
    root = user.server.filesystem()
    assert root.get_file_info(f"{user.other_bucket}/private/thing.txt").type == pafs.FileType.File
    assert root.get_file_info("speedprofile-new").type == pafs.FileType.NotFound


def test_drivers_find_the_key_pair_through_the_credentials_file_alone(minio_pipeline_user, tmp_path):
    """A driver's environment as the spark role renders it: s3a.env (endpoint, AWS_SHARED_CREDENTIALS_FILE, no
    key) and the 0600 credentials file. speedprofile.storage (pyarrow) and the table catalog (pyiceberg) work."""
    user = minio_pipeline_user
    creds = user.credentials_file(tmp_path / "s3a-credentials")
    code = (
        "import sys\nfrom speedprofile import storage, tables\n"
        "storage.write_text(sys.argv[1] + '/_metrics/x.json', '{}')\n"
        "print(storage.read_text(sys.argv[1] + '/_metrics/x.json'))\n"
        "tables.py_catalog(sys.argv[1])\n"
        "print(sorted(storage.list_dir(sys.argv[1])))"
    )
    warehouse = f"s3a://{user.bucket}/warehouse-driver"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AWS_SHARED_CREDENTIALS_FILE": str(creds),
           "AWS_PROFILE": "default", "AWS_ENDPOINT_URL": user.server.endpoint, "AWS_REGION": "us-east-1",
           "SPEEDPROFILE_CATALOG": str(tmp_path / "catalog.db")}
    proc = subprocess.run([sys.executable, "-c", code, warehouse], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert out[0] == "{}" and "probes" in out[1] and "_metrics" in out[1], out
    assert user.secret_key not in proc.stdout + proc.stderr
    # without the file: refused, and the message holds no key
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "missing")
    refused = subprocess.run([sys.executable, "-c", code, warehouse + "-2"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode != 0 and user.access_key not in refused.stderr
    assert not command_lines_holding(user.secret_key)
