"""The CLI's child processes (an in-process Spark JVM, its Python workers, a spark-submit) end with the CLI.

`main` turns SIGTERM into `Terminated` (SIGINT already is KeyboardInterrupt) and then stops every descendant of
this process, so a killed `speedprofile ingest` leaves no Spark JVM running (and writing) as an orphan.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path


class Terminated(BaseException):
    """SIGTERM arrived; like KeyboardInterrupt, not an Exception, so no `except Exception` swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum, _frame):
    raise Terminated(signum)


def raise_on_sigterm():
    """Make SIGTERM raise Terminated in the main thread; returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def restore_sigterm(previous) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


def descendants(pid: int) -> list[int]:
    """Live descendants of `pid` (children first), from /proc."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                parent[int(entry.name)] = int(fields[1])
    out: list[int] = []
    frontier = [pid]
    while frontier:
        children = [p for p, pp in parent.items() if pp in frontier and p not in out]
        out += children
        frontier = children
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_children(grace_s: float = 10.0) -> list[int]:
    """SIGTERM every descendant of this process, SIGKILL those still alive after `grace_s`; returns their PIDs."""
    pids = descendants(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        pids_alive = [p for p in pids if _alive(p)]
        if not pids_alive:
            break
    for p in pids:  # reap our own children
        try:
            os.waitpid(p, os.WNOHANG)
        except ChildProcessError:
            pass
    return pids
