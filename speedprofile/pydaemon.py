"""Python worker daemon (`spark.python.daemon.module=speedprofile.pydaemon`): pyspark's own daemon, with a lean
import path, ended once it has been idle.

Lean import path. Every task's worker calls `importlib.invalidate_caches()` (pyspark's `setup_spark_files`), and
since Python 3.10 that makes each zip importer read its archive's directory again. Spark puts pyspark.zip, the py4j
zip and the spark-core jar (5,359 entries, no Python) on the workers' PYTHONPATH ahead of everything else, so a
worker holds about 16 zip importers (one per package imported from pyspark.zip too), and the call took 170-260 ms
per task, 13 % of the per-trace step's Python time in ingest (py-spy). Before it imports pyspark, the daemon drops
the jars, and the zips of a pyspark / py4j that the same interpreter has installed as packages at the same version:
0.1 ms per task after. (Upstream Spark calls it only when a path was added, SPARK-54744, after 4.1.)
SPEEDPROFILE_PY_DAEMON_LEAN_PATH=0 keeps the path as Spark gives it.

Idle exit. Spark 4.1 starts one worker daemon per Connect session on every executor and never stops it while the
application runs (SPARK-54055), so a server that serves thousands of stage runs would keep thousands of idle daemons
(~57 MB each). A daemon that has had no worker process for SPEEDPROFILE_PY_DAEMON_IDLE_S seconds (default 120)
exits; Spark itself ends idle workers after a minute. A session that needs Python again gets a new daemon: Spark
restarts a daemon it cannot reach.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import zipfile
from pathlib import Path

LEAN_PATH = os.environ.get("SPEEDPROFILE_PY_DAEMON_LEAN_PATH", "1") != "0"
IDLE_S = float(os.environ.get("SPEEDPROFILE_PY_DAEMON_IDLE_S", "120"))
POLL_S = min(5.0, max(0.2, IDLE_S / 10))


def lean_path(path: list[str]) -> list[str]:
    """`path` (sys.path) without jars, and without pyspark.zip / py4j-<version>-src.zip when a directory of `path`
    holds the same version of that package installed (pip's pyspark, or a venv beside a Spark distribution). Any
    other entry stays where it is."""
    dirs = [Path(p) for p in path if p and not p.endswith((".zip", ".jar")) and Path(p).is_dir()]

    def version_of(text: str) -> str | None:
        m = re.search(r"""__version__\s*(?::\s*str\s*)?=\s*['"]([^'"]+)['"]""", text)
        return m.group(1) if m else None

    def installed(entry: str) -> bool:
        name = Path(entry).name
        if name == "pyspark.zip":
            package = "pyspark"
            try:
                with zipfile.ZipFile(entry) as z:
                    version = version_of(z.read("pyspark/version.py").decode())
            except (OSError, KeyError, zipfile.BadZipFile):
                return False
        elif name.startswith("py4j-") and name.endswith("-src.zip"):
            package, version = "py4j", name[len("py4j-"):-len("-src.zip")]
        else:
            return False
        for d in dirs:
            vfile = d / package / "version.py"
            if version and vfile.is_file() and version_of(vfile.read_text()) == version:
                return True
        return False

    return [p for p in path if not p.endswith(".jar") and not (p.endswith(".zip") and installed(p))]


def _live(pid: str) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def has_children(pid: int | None = None) -> bool:
    """Whether the process has a live (not zombie) child: its worker processes."""
    pid = os.getpid() if pid is None else pid
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        return any(_live(c) for t in tasks for c in open(f"/proc/{pid}/task/{t}/children").read().split())
    except FileNotFoundError:
        pass
    for entry in os.listdir("/proc"):  # kernels without /proc/<pid>/task/<tid>/children
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                return True
    return False


def watch(idle_s: float = IDLE_S, poll_s: float = POLL_S, exit=os._exit) -> None:
    """Call exit(0) once the process has had no child for idle_s seconds (checked every poll_s seconds)."""
    idle_since = time.monotonic()
    while True:
        time.sleep(poll_s)
        now = time.monotonic()
        if has_children():
            idle_since = now
        elif now - idle_since >= idle_s:
            exit(0)
            return


if __name__ == "__main__":
    kept = lean_path(sys.path) if LEAN_PATH else list(sys.path)
    dropped = tuple(p for p in sys.path if p not in kept)
    sys.path[:] = kept
    for key in [k for k in sys.path_importer_cache if k.startswith(dropped)]:  # finders made while -m found us
        del sys.path_importer_cache[key]
    from pyspark import daemon

    threading.Thread(target=watch, name="idle-exit", daemon=True).start()
    daemon.manager()
