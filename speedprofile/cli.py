"""`speedprofile` console command: one verb per module; each module declares its own flags.

A verb module exposes `add_arguments(parser)` and `cli(args) -> int`. Errors the user can fix raise
`UserError` and end as one line on stderr with exit code 2; anything else is one line too, exit code 1
(set SPEEDPROFILE_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
from pathlib import Path

from speedprofile.errors import UserError
from speedprofile.warehouse import default_warehouse

# verb (or "group sub") -> module implementing it
VERBS: dict[str, tuple[str, str]] = {
    "network build": ("speedprofile.network.build", "road network (OSM PBF or node/arc lists) -> road_segments"),
    "simulate": ("speedprofile.simulate.fleet", "simulated fleet on the warehouse network -> raw probes + truth"),
    "ingest": ("speedprofile.ingest.job", "raw probe files -> probes; bad rows -> rejected_probes"),
    "run": ("speedprofile.run", "run the stage apps over dates and partitions via spark-submit"),
    "query": ("speedprofile.serve.query", "expected speed of a segment / nearest road at a time of week"),
    "map": ("speedprofile.serve.maps", "choropleth of estimated speeds (PNG or self-contained HTML)"),
    "publish": ("speedprofile.serve.publish", "load estimates + geometry into PostgreSQL/PostGIS"),
    "export": ("speedprofile.serve.exports", "Valhalla / Mapbox / GeoJSON exports"),
    "bench match": ("speedprofile.matching.bench", "map-matching accuracy and throughput on Kubicka 2015"),
    "server start": ("speedprofile.server", "start a long-lived Spark Connect server for the stages (127.0.0.1)"),
    "server stop": ("speedprofile.server", "stop the Spark Connect server"),
    "server status": ("speedprofile.server", "is the Spark Connect server answering"),
    "demo": ("speedprofile.demo", "the whole pipeline on Porto + a simulated fleet"),
    "stages": ("speedprofile.stages", "the stage registry: apps, tables, keys, gates, upstream stages"),
    "status": ("speedprofile.status", "partition x day x stage: done / failed gate / missing, rows, freshness"),
    "table export": ("speedprofile.table_cli", "a table's committed rows as plain hive-partitioned Parquet"),
    "table history": ("speedprofile.table_cli", "a table's commits (snapshots), one line each"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Parser for all verbs; only the verb named in argv imports its module (keeps `--help` and start-up fast)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    words_given = [a for a in argv if not a.startswith("-")][:2]
    parser = argparse.ArgumentParser(prog="speedprofile", description="Road speed profiles from GPS probes.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for verb, (module, help_text) in VERBS.items():
        words = verb.split()
        if len(words) == 2:
            if words[0] not in groups:
                gp = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = gp.add_subparsers(dest="subverb", metavar="SUBVERB", required=True)
            p = groups[words[0]].add_parser(words[1], help=help_text)
        else:
            p = sub.add_parser(verb, help=help_text)
        p.add_argument("--warehouse", default=default_warehouse(), help="warehouse root (default: %(default)s)")
        p.set_defaults(_module=module)
        if words_given[: len(words)] == words:
            importlib.import_module(module).add_arguments(p)
    return parser


LOG4J_FILE_CONF = Path(__file__).resolve().parents[1] / "conf" / "log4j2-file.properties"
NO_IN_PROCESS_SPARK = ("speedprofile.run", "speedprofile.demo", "speedprofile.stages", "speedprofile.status",
                       "speedprofile.table_cli")


@contextlib.contextmanager
def spark_log_to_file(args: argparse.Namespace):
    """A Spark session started in this process by the verb logs to a file (its path printed at the end), not to
    the console. `run` is left alone unless --in-process: its spark-submits write their own stage logs."""
    in_process = args._module not in NO_IN_PROCESS_SPARK or getattr(args, "in_process", False)
    if not in_process or not LOG4J_FILE_CONF.is_file() or os.environ.get("SPEEDPROFILE_SPARK_CONSOLE_LOG"):
        yield
        return
    from speedprofile.run import default_log_dir

    verb = "_".join(filter(None, [getattr(args, "verb", None), getattr(args, "subverb", None)])) or "speedprofile"
    log = Path(default_log_dir(args.warehouse)) / f"{verb}_{time.strftime('%Y%m%dT%H%M%S')}_{os.getpid()}.log"
    before = os.environ.get("SPARK_SUBMIT_OPTS")
    os.environ["SPARK_SUBMIT_OPTS"] = " ".join(filter(None, [
        before, f"-Dlog4j2.configurationFile=file:{LOG4J_FILE_CONF}", f"-Dspeedprofile.log.file={log}"]))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SPARK_SUBMIT_OPTS", None)
        else:
            os.environ["SPARK_SUBMIT_OPTS"] = before
        if log.is_file() and log.stat().st_size:
            print(f"Spark log: {log}", file=sys.stderr)


def error_summary(exc: BaseException) -> str:
    """One line for an unexpected error: its type and first line and, for an error raised in the JVM (whose text
    is a Java stack trace), the Java exception line and the innermost `Caused by:`."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    head = f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
    named = [ln.lstrip(": ")[:300] for ln in lines[1:] if ln.startswith(": ")][:1]
    causes = [ln for ln in lines[1:] if ln.startswith("Caused by:")][-1:]
    return " ".join([head, *named, *causes])[:800]


def main(argv: list[str] | None = None) -> int:
    from speedprofile import procs

    previous = procs.raise_on_sigterm()  # SIGTERM, like SIGINT, ends the verb and every process it started
    try:
        args = build_parser(argv).parse_args(argv)
        with spark_log_to_file(args):
            return int(importlib.import_module(args._module).cli(args) or 0)
    except UserError as exc:
        print(f"speedprofile: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, procs.Terminated) as exc:
        procs.stop_children()
        print(f"speedprofile: {'interrupted' if isinstance(exc, KeyboardInterrupt) else exc}", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 128 + exc.signum
    except Exception as exc:
        if os.environ.get("SPEEDPROFILE_DEBUG"):
            raise
        print(f"speedprofile: error: {error_summary(exc)}", file=sys.stderr)
        return 1
    finally:
        procs.restore_sigterm(previous)


if __name__ == "__main__":
    sys.exit(main())
