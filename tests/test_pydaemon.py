"""The Connect server's Python worker daemon ends itself once it has had no worker for its idle time.

Each check runs in a fresh interpreter: the test process itself has children (a JVM, servers)."""

import subprocess
import sys

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
