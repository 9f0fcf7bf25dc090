"""Python worker daemon for a long-lived Spark Connect server: pyspark's own daemon, ended once it has been idle.

Spark 4.1 starts one worker daemon per Connect session on every executor and never stops it while the application
runs (SPARK-54055), so a server that serves thousands of stage runs would keep thousands of idle daemons (~57 MB
each). With `spark.python.daemon.module=speedprofile.pydaemon` a daemon that has had no worker process for
SPEEDPROFILE_PY_DAEMON_IDLE_S seconds (default 120) exits; Spark itself ends idle workers after a minute. A session
that needs Python again gets a new daemon: Spark restarts a daemon it cannot reach.
"""

from __future__ import annotations

import os
import threading
import time

IDLE_S = float(os.environ.get("SPEEDPROFILE_PY_DAEMON_IDLE_S", "120"))
POLL_S = min(5.0, max(0.2, IDLE_S / 10))


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
    from pyspark import daemon

    threading.Thread(target=watch, name="idle-exit", daemon=True).start()
    daemon.manager()
