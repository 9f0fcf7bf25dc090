"""`speedprofile run`: the stage apps in order over dates and partitions, one spark-submit per stage.

Many partition-days go through one submit per stage (each app takes a date range and a cell list), so the JVM
start-up is paid once per stage, not once per partition-day. Master: `--master`, else $SPEEDPROFILE_SPARK_MASTER,
else whatever spark-defaults says (local[*] when nothing is configured). With `--remote sc://HOST:PORT` (or
$SPEEDPROFILE_SPARK_REMOTE) each stage app is a Spark Connect client of a long-lived server (`speedprofile server
start`): no JVM or Python worker pool is started per stage.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from speedprofile import validate
from speedprofile.errors import UserError
from speedprofile.stages import spark_stage_names
from speedprofile.stages import stage as registered
from speedprofile.warehouse import date_range, is_remote, partition_cells, partitions_file

# The stage apps `run` drives, in dependency order, from the stage registry (network build and ingest produce
# its inputs).
STAGES = spark_stage_names()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--date", required=True, help="first UTC date (dt), YYYY-MM-DD")
    p.add_argument("--to-date", default=None, help="last UTC date, inclusive (default: --date)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--partition", help="H3 cell(s), comma-separated")
    where.add_argument("--all", action="store_true", help="every partition in road_segments/_partitions.json")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of: " + ", ".join(STAGES))
    p.add_argument("--master", default=os.environ.get("SPEEDPROFILE_SPARK_MASTER"), help="Spark master URL")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra spark-submit --conf")
    p.add_argument("--in-process", action="store_true",
                   help="run every stage in this process on one local Spark session (one JVM for all stages; "
                        "for a single machine, e.g. the demo)")
    p.add_argument("--remote", default=os.environ.get("SPEEDPROFILE_SPARK_REMOTE"),
                   help="Spark Connect server URL sc://HOST:PORT (default $SPEEDPROFILE_SPARK_REMOTE; none: spark-submit)")
    for f in {f.param: f for s in STAGES for f in registered(s).flags}.values():
        p.add_argument(f.flag, type=type(f.default), default=f.default, help=f"{f.help} (default {f.default})")
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
    master: str | None = None, confs: list[str] | None = None, window_weeks: int = 4, remote: str | None = None,
) -> list[str]:
    """The spark-submit command line for one stage over a date range and a list of cells (with `remote`: the app
    run by this interpreter as a Spark Connect client; the server's own configuration applies)."""
    if remote:
        if master or confs:
            raise UserError("--master/--conf do not apply with --remote: configure the Spark Connect server instead")
        cmd = [sys.executable]
    else:
        from speedprofile.tables import spark_jars

        cmd = [spark_submit(), "--jars", spark_jars()]
    if master:
        cmd += ["--master", master]
    for kv in confs or []:
        if "=" not in kv:
            raise UserError(f"--conf {kv!r} is not KEY=VALUE")
        cmd += ["--conf", kv]
    cmd += [app_path(stage), "--warehouse", warehouse, "--date", date, "--to-date", to_date,
            "--partition", ",".join(partitions)]
    values = {"window_weeks": window_weeks}
    for f in registered(stage).flags:
        cmd += [f.flag, str(values.get(f.param, f.default))]
    return cmd


LOCAL_CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def submit_env(remote: str | None = None) -> dict[str, str]:
    """Environment of a spark-submit: this interpreter for Python workers; the repo's conf/ (quiet logging,
    small shuffle counts) unless the operator set SPARK_CONF_DIR (a cluster's rendered spark-defaults). With
    `remote`, SPARK_REMOTE makes the app a Spark Connect client of that server."""
    env = dict(os.environ)
    if remote:
        env["SPARK_REMOTE"] = remote
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
    log_dir: str | None = None, echo=print, progress: bool = False, remote: str | None = None,
    in_process: bool = False,
) -> dict[str, float]:
    """Run the stages in order; returns seconds per stage. Raises UserError naming the log on failure.
    With `progress`, a bar (or plain lines off a terminal) counts stage x partition-days done, rows/s and ETA."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
    partitions = validate.cells(partitions, network_cells(warehouse))
    days = date_range(date, to_date)
    d0, d1 = str(days[0]), str(days[-1])
    logs = Path(log_dir or default_log_dir(warehouse))
    logs.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    todo = [s for s in STAGES if s in stages]
    bar = _StageProgress(warehouse, todo, [str(d) for d in days], partitions, echo) if progress else None
    for stage in todo:
        cmd = stage_command(stage, warehouse, d0, d1, partitions, master, confs, window_weeks, remote)
        log = logs / f"{stage}_{d0}_{d1}.log"
        t0 = time.monotonic()
        if bar:
            bar.start(stage, log)
        if in_process:
            if master or confs or remote:
                raise UserError("--in-process runs on a local session: it takes no --master, --conf or --remote")
            rc = run_in_process(stage, cmd[cmd.index(app_path(stage)) + 1:], log)
        else:
            with open(log, "w") as fh:
                rc = run_child(cmd, fh, submit_env(remote), stage)
        timings[stage] = time.monotonic() - t0
        if bar:
            bar.finish(stage, ok=rc == 0)
        if rc != 0:
            if bar:
                bar.close()
            raise UserError(f"stage {stage} failed (exit {rc}): {failure_line(log)} [log: {log}]")
        line = f"{stage:<18} ok  {timings[stage]:6.1f} s  {d0}..{d1}  {len(partitions)} partition(s)  log: {log}"
        bar.write(line) if bar else echo(line)
    if bar:
        bar.close()
    return timings


def run_in_process(stage: str, argv: list[str], log: Path) -> int:
    """Run a stage app's main() in this process on the active (or a new local) Spark session; its own output and
    a one-line error go to `log`. Returns the app's exit code (2 for a user error, 1 for any other failure)."""
    import contextlib
    import traceback

    if "SPARK_CONF_DIR" not in os.environ and LOCAL_CONF_DIR.is_dir():
        os.environ["SPARK_CONF_DIR"] = str(LOCAL_CONF_DIR)  # read when the first session starts
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    app = importlib.import_module(f"spark_apps.{stage}")
    with open(log, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        try:
            return int(app.main(argv) or 0)
        except UserError as exc:
            print(f"error: {exc}")
            return 2
        except Exception:
            traceback.print_exc()
            return 1


class _StageProgress:
    """Progress of a `run`: units are stage x partition-day; a partition-day counts as done when the stage has
    written its metrics file (polled every 2 s, local warehouses), the rest when the stage exits."""

    def __init__(self, warehouse: str, stages: list[str], days: list[str], partitions: list[str], echo):
        import threading

        from speedprofile.progress import Progress

        self.warehouse, self.days, self.partitions = warehouse, days, partitions
        self.per_stage = len(days) * len(partitions)
        self.bar = Progress(len(stages) * self.per_stage, unit="partition-day", desc="run")
        self.lock = threading.Lock()
        self.stop: threading.Event | None = None
        self.counted = 0

    def _done_files(self, stage: str, since: float) -> tuple[int, int]:
        from speedprofile.quality import read_json
        from speedprofile.warehouse import metrics_path

        n = rows = 0
        if is_remote(self.warehouse):
            return 0, 0
        for d in self.days:
            for p in self.partitions:
                path = metrics_path(self.warehouse, stage, d, p)
                try:
                    if os.path.getmtime(path) < since:
                        continue
                except OSError:
                    continue
                n += 1
                m = read_json(path) or {}
                rows += int(m.get("fixes_in") or m.get("rows_in") or m.get("histogram_rows_in") or 0)
        return n, rows

    def start(self, stage: str, log: Path) -> None:
        import threading

        self.stage, self.since, self.counted, self.rows = stage, time.time(), 0, 0
        self.stop = threading.Event()
        stop = self.stop

        def poll() -> None:
            while not stop.wait(2.0):
                try:
                    self._sync(final=False)
                except (OSError, ValueError):  # a metrics file being written: count it at the next poll
                    continue

        threading.Thread(target=poll, daemon=True).start()

    def _sync(self, final: bool) -> None:
        n, rows = self._done_files(self.stage, self.since - 1)
        with self.lock:
            n = self.per_stage if final else min(n, self.per_stage - 1)
            if n > self.counted or (final and rows > self.rows):
                self.bar.update(n - self.counted, rows=max(0, rows - self.rows), note=self.stage)
                self.counted, self.rows = n, max(rows, self.rows)

    def finish(self, stage: str, ok: bool) -> None:
        if self.stop:
            self.stop.set()
        if ok:
            self._sync(final=True)

    def write(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


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


_CAUSE = re.compile(r"(speedprofile: error:|Reason:|Exception:|Error:)")


def failure_line(log: Path) -> str:
    """The line of a failed stage's log that says why: the app's own `speedprofile: error:` line, else Spark's
    last `Reason:` line, else the last line naming an exception (not a stack frame), else the last line."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    own = [ln for ln in lines if ln.startswith("speedprofile: error:") or ln.startswith("error:")]
    if own:
        return own[-1]
    reasons = [ln for ln in lines if "Reason:" in ln]  # Spark's scheduler says why it gave up
    causes = reasons or [ln for ln in lines if _CAUSE.search(ln) and not ln.startswith("at ")]
    line = causes[-1] if causes else (lines[-1] if lines else "")
    return line[:400]


def network_cells(warehouse: str) -> list[str]:
    """Cells of the warehouse's partition list (validated), local or on an object store."""
    try:
        return partition_cells(warehouse)
    except FileNotFoundError as exc:
        raise UserError(f"no partition list at {partitions_file(warehouse)}: run `speedprofile network build` "
                        "first") from exc


def resolve_partitions(warehouse: str, partition: str | None, all_: bool) -> list[str]:
    """--all: every cell of the partition list; else the --partition cells, each an H3 cell of the network."""
    if all_:
        return network_cells(warehouse)
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
                                         args.master, args.conf, args.window_weeks, args.remote)))
        return 0
    timings = run_stages(args.warehouse, args.date, args.to_date, partitions, stages, args.master, args.conf,
                         args.window_weeks, args.log_dir, progress=True, remote=args.remote,
                         in_process=args.in_process)
    print(f"run: {len(timings)} stage(s) in {sum(timings.values()):.1f} s")
    return 0
