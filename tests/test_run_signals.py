"""SIGTERM or SIGINT to a real `speedprofile run` or `speedprofile ingest` stops its Spark processes (the
spark-submit with its driver JVM and Python driver; the in-process Spark JVM) and the verb exits with 128 + the
signal number; nothing keeps running as an orphan.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CELL = "871f1a000ffffff"

pytestmark = pytest.mark.slow


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, process group, command line) of every live (non-zombie) process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        out[int(entry.name)] = (int(fields[1]), int(fields[2]), cmdline)
    return out


def descendants(pid: int, procs: dict[int, tuple[int, int, str]]) -> set[int]:
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, (ppid, _, _) in procs.items() if ppid in frontier} - found
        found |= children
        frontier = children
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_spark_submit_group_and_exits_non_zero(tmp_path, signum):
    root = tmp_path / "wh"
    (root / "road_segments").mkdir(parents=True)
    (root / "road_segments" / "_partitions.json").write_text(
        json.dumps({"h3_res": 7, "partitions": [{"cell": CELL}]}))
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    run = subprocess.Popen(
        [sys.executable, "-m", "speedprofile.cli", "run", "--warehouse", str(root), "--date", "2026-11-02",
         "--partition", CELL, "--master", "local[1]", "--conf", "spark.ui.enabled=false"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    try:
        # Wait until the stage's Python driver runs under the spark-submit JVM (a grandchild of `run`).
        deadline, driver, group = time.time() + 300, None, None
        while time.time() < deadline and run.poll() is None and driver is None:
            procs = processes()
            for pid in descendants(run.pid, procs):
                ppid, pgrp, cmd = procs[pid]
                if "spark_apps/match_traces.py" in cmd and ppid != run.pid and "java" not in (cmd.split() or [""])[0]:
                    driver, group = pid, pgrp
            time.sleep(0.05)
        assert driver is not None, f"no stage driver seen (run exited {run.poll()}): {run.communicate()[1][-2000:]}"
        assert group != os.getpgid(run.pid), "spark-submit should run in its own process group"
        below = descendants(run.pid, processes())
        assert len(below) >= 2  # the spark-submit JVM and the Python driver at least

        os.kill(run.pid, signum)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()

    assert run.returncode == 128 + signum, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and f"stopped by {signal.Signals(signum).name}" in lines[0], err
    # Nothing of the stage is left: not the spark-submit's process group, not any process seen below `run`.
    time.sleep(0.5)
    procs = processes()
    left = {p for p, (_, pgrp, _) in procs.items() if pgrp == group} | (below & set(procs))
    assert not left, {p: procs[p][2][:120] for p in left}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_ingest_ends_its_spark_jvm_and_exits_non_zero(tiny_network_warehouse, tmp_path, signum):
    from tests.seed import copy_warehouse

    root = copy_warehouse(tiny_network_warehouse, tmp_path / "wh")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    ingest = subprocess.Popen(
        [sys.executable, "-m", "speedprofile.cli", "ingest", "--warehouse", str(root),
         str(REPO / "fixtures" / "ingest_probes" / "input" / "times.csv")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    try:
        deadline, jvm = time.time() + 300, None
        while time.time() < deadline and ingest.poll() is None and jvm is None:
            procs = processes()
            jvm = next((p for p in descendants(ingest.pid, procs) if "java" in (procs[p][2].split() or [""])[0]), None)
            time.sleep(0.05)
        assert jvm is not None, f"no Spark JVM seen (ingest exited {ingest.poll()}): {ingest.communicate()[1][-2000:]}"
        time.sleep(1.0)  # let the session come up part-way
        below = descendants(ingest.pid, processes())
        os.kill(ingest.pid, signum)
        ingest.communicate(timeout=120)
    finally:
        if ingest.poll() is None:
            ingest.kill()
            ingest.wait()
    assert ingest.returncode == 128 + signum  # 143 for SIGTERM, 130 for SIGINT
    # The JVM (and anything it started) ends with its driver: nothing keeps running or writing.
    deadline = time.time() + 60
    while time.time() < deadline and below & set(processes()):
        time.sleep(0.2)
    procs = processes()
    assert not (below & set(procs)), {p: procs[p][2][:120] for p in below & set(procs)}


def test_a_failed_stage_is_summed_up_by_the_line_that_says_why(tmp_path):
    from speedprofile.run import failure_line

    log = tmp_path / "stage.log"
    log.write_text("INFO starting\nERROR StandaloneSchedulerBackend: Application has been killed. Reason: All "
                   "masters are unresponsive! Giving up.\njava.lang.IllegalStateException: stopped SparkContext\n"
                   "\tat java.base/java.lang.Thread.run(Thread.java:840)\n")
    assert "All masters are unresponsive" in failure_line(log)
    log.write_text("INFO x\nerror: no road network in warehouse /w (run `speedprofile network build` first)\n"
                   "INFO shutdown hook called\n")
    assert failure_line(log).startswith("error: no road network")
    log.write_text("Traceback (most recent call last):\nValueError: bad value\n\tat something\n")
    assert failure_line(log) == "ValueError: bad value"


def test_an_unexpected_jvm_error_is_one_line_with_its_java_cause():
    from speedprofile.cli import error_summary

    text = ("An error occurred while calling o894.collectToPython.\n"
            ": org.apache.spark.SparkException: Job aborted due to stage failure: Task 1 in stage 5.0 failed\n"
            "\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages(DAGScheduler.scala:3100)\n"
            "Caused by: java.io.IOException: write failed\n\tat a.b(C.java:1)\n"
            "Caused by: java.lang.OutOfMemoryError: Java heap space\n\tat d.e(F.java:2)\n")
    line = error_summary(RuntimeError(text))
    assert "\n" not in line
    assert line.startswith("RuntimeError: An error occurred while calling o894.collectToPython.")
    assert "Job aborted due to stage failure" in line and line.endswith("java.lang.OutOfMemoryError: Java heap space")
    assert error_summary(ValueError("bad value")) == "ValueError: bad value"
