"""`speedprofile run`: the stage apps in order over dates and partitions, one spark-submit per stage.

Many partition-days go through one submit per stage (each app takes a date range and a cell list), so the JVM
start-up is paid once per stage, not once per partition-day. Master: `--master`, else $SPEEDPROFILE_SPARK_MASTER,
else whatever spark-defaults says (local[*] when nothing is configured).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from speedprofile import validate
from speedprofile.errors import UserError
from speedprofile.warehouse import date_range, is_remote, partition_cells, partitions_file

# The stage apps `run` drives, in order (network build and ingest produce its inputs).
STAGES = ("match_traces", "bucket_traversals", "build_histograms", "estimate_speeds")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--date", required=True, help="first UTC date (dt), YYYY-MM-DD")
    p.add_argument("--to-date", default=None, help="last UTC date, inclusive (default: --date)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--partition", help="H3 cell(s), comma-separated")
    where.add_argument("--all", action="store_true", help="every partition in road_segments/_partitions.json")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of: " + ", ".join(STAGES))
    p.add_argument("--master", default=os.environ.get("SPEEDPROFILE_SPARK_MASTER"), help="Spark master URL")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra spark-submit --conf")
    p.add_argument("--window-weeks", type=int, default=4, help="rolling histogram window, weeks (default 4)")
    p.add_argument("--log-dir", default=None, help="where stage logs go (default <warehouse>/_logs; ./speedprofile-logs for s3a:// warehouses)")
    p.add_argument("--dry-run", action="store_true", help="print the spark-submit commands only")


def app_path(stage: str) -> str:
    """File of the stage app (spark_apps/<stage>.py) as installed with the project."""
    spec = importlib.util.find_spec(f"spark_apps.{stage}")
    if spec is None or spec.origin is None:
        raise UserError(f"stage app spark_apps/{stage}.py not found")
    return spec.origin


def spark_submit() -> str:
    local = Path(sys.executable).with_name("spark-submit")
    found = str(local) if local.exists() else shutil.which("spark-submit")
    if not found:
        raise UserError("spark-submit not found (install the project into a venv: make setup)")
    return found


def stage_command(
    stage: str, warehouse: str, date: str, to_date: str, partitions: list[str],
    master: str | None = None, confs: list[str] | None = None, window_weeks: int = 4,
) -> list[str]:
    """The spark-submit command line for one stage over a date range and a list of cells."""
    cmd = [spark_submit()]
    if master:
        cmd += ["--master", master]
    for kv in confs or []:
        if "=" not in kv:
            raise UserError(f"--conf {kv!r} is not KEY=VALUE")
        cmd += ["--conf", kv]
    cmd += [app_path(stage), "--warehouse", warehouse, "--date", date, "--to-date", to_date,
            "--partition", ",".join(partitions)]
    if stage in ("build_histograms", "estimate_speeds"):
        cmd += ["--window-weeks", str(window_weeks)]
    return cmd


LOCAL_CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def submit_env() -> dict[str, str]:
    """Environment of a spark-submit: this interpreter for Python workers; the repo's conf/ (quiet logging,
    small shuffle counts) unless the operator set SPARK_CONF_DIR (a cluster's rendered spark-defaults)."""
    env = dict(os.environ)
    if "SPARK_CONF_DIR" not in env and LOCAL_CONF_DIR.is_dir():
        env["SPARK_CONF_DIR"] = str(LOCAL_CONF_DIR)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_stages(
    warehouse: str, date: str, to_date: str | None, partitions: list[str], stages: list[str] | tuple[str, ...] = STAGES,
    master: str | None = None, confs: list[str] | None = None, window_weeks: int = 4,
    log_dir: str | None = None, echo=print,
) -> dict[str, float]:
    """Run the stages in order; returns seconds per stage. Raises UserError naming the log on failure."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
    partitions = validate.cells(partitions, network_cells(warehouse))
    days = date_range(date, to_date)
    d0, d1 = str(days[0]), str(days[-1])
    logs = Path(log_dir or default_log_dir(warehouse))
    logs.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    for stage in [s for s in STAGES if s in stages]:
        cmd = stage_command(stage, warehouse, d0, d1, partitions, master, confs, window_weeks)
        log = logs / f"{stage}_{d0}_{d1}.log"
        t0 = time.monotonic()
        with open(log, "w") as fh:
            rc = run_child(cmd, fh, submit_env(), stage)
        timings[stage] = time.monotonic() - t0
        if rc != 0:
            tail = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
            raise UserError(f"stage {stage} failed (exit {rc}): {tail[0] if tail else ''} [log: {log}]")
        echo(f"{stage:<18} ok  {timings[stage]:6.1f} s  {d0}..{d1}  {len(partitions)} partition(s)")
    return timings


class StageInterrupted(UserError):
    """`run` got SIGTERM/SIGINT: the running spark-submit's process group was stopped; exit code 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


STOP_GRACE_S = 20.0  # after forwarding the signal, SIGKILL the spark-submit's process group if still running


def run_child(cmd: list[str], out, env: dict[str, str], stage: str, grace_s: float = STOP_GRACE_S) -> int:
    """Run one spark-submit in its own process group; on SIGTERM/SIGINT to this process the whole group (driver
    JVM, Python driver, local executors' workers) gets SIGTERM (a SIGINT may be ignored by a background JVM), then
    `grace_s` seconds before SIGKILL; then StageInterrupted is raised. Returns the exit code otherwise."""
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    handled = (signal.SIGTERM, signal.SIGINT)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in handled} if main_thread else {}
    deadline: float | None = None
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if received and deadline is None:
                    deadline = time.monotonic() + grace_s
                elif deadline is not None and time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if received:
        # whatever the group leader left behind (Python workers, a daemonized child) goes too
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        name = signal.Signals(received[0]).name
        raise StageInterrupted(f"stage {stage} stopped by {name}: spark-submit (pid {proc.pid}) and its "
                               "children were ended", received[0])
    return rc


def default_log_dir(warehouse: str) -> str:
    """Stage logs beside a local warehouse; for an object-store warehouse, a local folder (logs are local files)."""
    if is_remote(warehouse):
        return os.path.join(os.getcwd(), "speedprofile-logs")
    return os.path.join(warehouse, "_logs")


def network_cells(warehouse: str) -> list[str] | None:
    """Cells of the local partition list (validated); None for an object-store warehouse (checked by the apps)."""
    if is_remote(warehouse):
        return None
    try:
        return partition_cells(warehouse)
    except FileNotFoundError as exc:
        raise UserError(f"no partition list at {partitions_file(warehouse)}: run `speedprofile network build` "
                        "first") from exc


def resolve_partitions(warehouse: str, partition: str | None, all_: bool) -> list[str]:
    """--all: every cell of the partition list; else the --partition cells, each an H3 cell of the network."""
    if all_:
        cells = network_cells(warehouse)
        if cells is None:
            raise UserError("--all needs a local partition list; name the cells with --partition")
        return cells
    return validate.cells(partition or "", network_cells(warehouse))


def cli(args: argparse.Namespace) -> int:
    try:
        return _cli(args)
    except StageInterrupted as exc:
        print(f"speedprofile: error: {exc}", file=sys.stderr)
        return exc.exit_code


def _cli(args: argparse.Namespace) -> int:
    partitions = resolve_partitions(args.warehouse, args.partition, args.all)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.dry_run:
        days = date_range(args.date, args.to_date)
        for stage in [s for s in STAGES if s in stages]:
            print(" ".join(stage_command(stage, args.warehouse, str(days[0]), str(days[-1]), partitions,
                                         args.master, args.conf, args.window_weeks)))
        return 0
    timings = run_stages(args.warehouse, args.date, args.to_date, partitions, stages, args.master, args.conf,
                         args.window_weeks, args.log_dir)
    print(f"run: {len(timings)} stage(s) in {sum(timings.values()):.1f} s")
    return 0
