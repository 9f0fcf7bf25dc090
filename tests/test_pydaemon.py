"""Our Python worker daemon: a lean import path for the workers, and an end once it has had no worker for its idle
time.

Each idle check runs in a fresh interpreter: the test process itself has children (a JVM, servers)."""

import subprocess
import sys
import zipfile

import pandas as pd

from speedprofile.pydaemon import lean_path

CHILD = 'subprocess.Popen([sys.executable, "-c", "import time; time.sleep({})"])'


def run(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import subprocess, sys\nfrom speedprofile import pydaemon\n" + code],
                          capture_output=True, text=True, timeout=timeout)


def test_has_children_sees_a_live_child_only():
    proc = run(f"c = {CHILD.format(30)}\nalive = pydaemon.has_children()\nc.kill(); c.wait()\n"
               "print(alive, pydaemon.has_children())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]


def test_watch_exits_once_idle_and_not_while_a_worker_lives():
    # the exit hook reports whether the worker was still running when the daemon gave up
    proc = run(f"c = {CHILD.format(1.5)}\nimport threading\nthreading.Thread(target=c.wait).start()\n"
               "def leave(code):\n    print('worker done:', c.poll() is not None, 'children:', pydaemon.has_children())\n"
               "    raise SystemExit(code)\n"
               "pydaemon.watch(idle_s=1.0, poll_s=0.1, exit=leave)\nprint('not reached')")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["worker", "done:", "True", "children:", "False"], proc.stdout


def _zip(path, files: dict[str, str]):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return str(path)


def test_lean_path_drops_jars_and_the_zips_of_packages_installed_at_the_same_version(tmp_path):
    site = tmp_path / "site-packages"
    (site / "pyspark").mkdir(parents=True)
    (site / "pyspark" / "version.py").write_text("__version__: str = '4.1.3'\n")
    (site / "py4j").mkdir()
    (site / "py4j" / "version.py").write_text("__version__ = '0.10.9.9'\n")
    lib = site / "pyspark" / "python" / "lib"
    same = _zip(lib / "pyspark.zip", {"pyspark/version.py": '__version__: str = "4.1.3"\n'})
    py4j_same = _zip(lib / "py4j-0.10.9.9-src.zip", {"py4j/version.py": "__version__ = '0.10.9.9'\n"})
    # a Spark distribution of another version beside the venv: its zips are what its workers must import
    other = _zip(tmp_path / "spark" / "python" / "lib" / "pyspark.zip", {"pyspark/version.py": "__version__ = '4.0.1'\n"})
    py4j_other = _zip(tmp_path / "spark" / "python" / "lib" / "py4j-0.10.9.7-src.zip", {"py4j/version.py": ""})
    unversioned = _zip(tmp_path / "odd" / "pyspark.zip", {"pyspark/__init__.py": ""})
    user = _zip(tmp_path / "deps.zip", {"mylib/__init__.py": ""})
    jar = _zip(tmp_path / "spark-core_2.13-4.1.3.jar", {"org/apache/spark/SparkContext.class": ""})
    path = ["", str(tmp_path / "work"), same, py4j_same, other, py4j_other, unversioned, jar, user, str(site),
            str(tmp_path / "missing.zip")]
    assert lean_path(path) == ["", str(tmp_path / "work"), other, py4j_other, unversioned, user, str(site),
                               str(tmp_path / "missing.zip")]
    # without the installed packages on the path, only the jar goes
    assert lean_path([same, py4j_same, jar]) == [same, py4j_same]


def test_spark_workers_import_pyspark_from_the_installed_package_and_hold_no_zip_importer(spark):
    # the session's workers come from speedprofile.pydaemon (conftest); without it pyspark.zip, the py4j zip and the
    # spark-core jar are on their path and every task re-reads those archives' directories (about 16 importers)
    assert spark.sparkContext.getConf().get("spark.python.daemon.module") == "speedprofile.pydaemon"

    def probe(batches):
        import importlib
        import sys as wsys
        import zipimport

        import pyspark

        for b in batches:
            importlib.invalidate_caches()
            zips = [k for k, v in wsys.path_importer_cache.items() if isinstance(v, zipimport.zipimporter)]
            yield pd.DataFrame({"pyspark": [pyspark.__file__] * len(b), "zips": [len(zips)] * len(b),
                                "on_path": [sum(p.endswith((".zip", ".jar")) and "spark" in p for p in wsys.path)] * len(b)})

    rows = spark.range(4, numPartitions=2).mapInPandas(probe, "pyspark STRING, zips INT, on_path INT").collect()
    assert len(rows) == 4
    for r in rows:
        assert ".zip" not in r["pyspark"] and r["pyspark"].endswith("pyspark/__init__.py"), r
        assert r["zips"] == 0 and r["on_path"] == 0, r
