"""The Connect server's Python worker daemon ends itself once it has had no worker for its idle time."""

import subprocess
import sys
import threading
import time

from speedprofile import pydaemon


def test_has_children_sees_a_live_child_only():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pydaemon.has_children()
    finally:
        child.kill()
        child.wait()
    assert not pydaemon.has_children()


def test_watch_exits_after_the_idle_time_and_not_while_a_worker_lives():
    exits: list[float] = []
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    t0 = time.monotonic()
    watcher = threading.Thread(target=pydaemon.watch, kwargs={"idle_s": 1.0, "poll_s": 0.1,
                                                             "exit": lambda code: exits.append(time.monotonic())})
    watcher.start()
    child.wait()
    watcher.join(timeout=10)
    assert exits, "the idle daemon did not exit"
    assert exits[0] - t0 >= 2.4  # 1.5 s with a worker, then 1 s idle
