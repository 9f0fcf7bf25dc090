"""The one registry of pipeline stages: name, how it runs, tables read and written, keys, extra flags, gate, upstream.

Everything that lists stages reads them from here: the Airflow DAGs (tasks and their dependency graph),
`speedprofile run` (the Spark stages of a partition-day, in dependency order), the quality gates, the demo
summary, the docs and the tests. A stage's name is also its app (`spark_apps/<name>.py`), its fixture folder
(`fixtures/<name>/`), its test file (`tests/test_<name>.py`) and its Airflow task id. Standard library only:
the DAG files import this module at parse time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from typing import Literal

Runner = Literal["spark", "cli", "airflow"]
Scope = Literal["partition_day", "day", "network"]


@dataclass(frozen=True)
class Flag:
    """An extra command-line flag of a stage app, filled from a DAG param / `run` option of the same name."""

    flag: str  # e.g. "--window-weeks"
    param: str  # DAG param and `run` option attribute, e.g. "window_weeks"
    default: int | float  # value when nobody says otherwise
    help: str  # one line, with the unit


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline."""

    name: str  # app / task id / fixture folder / test file
    runner: Runner  # "spark": spark_apps/<name>.py; "cli": a speedprofile verb; "airflow": a task in the DAG
    inputs: tuple[str, ...]  # tables read (upstream output first; road_segments as context)
    outputs: tuple[str, ...]  # tables written (a PostGIS target for publish)
    keys: tuple[str, ...]  # partition keys of the (first) output table
    scope: Scope  # what one run covers: a partition-day, a whole day, or the whole network
    upstream: tuple[str, ...] = ()  # stages that must have run (and passed their gate) first
    flags: tuple[Flag, ...] = ()  # extra app flags beyond --warehouse/--date/--partition
    gate: str | None = None  # quality gate run after it (speedprofile.quality.GATES key); None = no gate
    cli_verb: str | None = None  # `speedprofile <verb>` for runner "cli"
    doc: str = ""  # one line: what it does
    grain: str = ""  # one line: row grain of the output
    extra: dict[str, str] = field(default_factory=dict)  # free-form notes (docs only)

    @property
    def app(self) -> str | None:
        """Path of the Spark app relative to the repository root (None for non-Spark stages)."""
        return f"spark_apps/{self.name}.py" if self.runner == "spark" else None

    @property
    def gate_task(self) -> str | None:
        """Task id of the quality gate after this stage."""
        return f"check_{self.name}" if self.gate else None


WINDOW_WEEKS = Flag("--window-weeks", "window_weeks", 4, "rolling histogram window, weeks")

REGISTRY: tuple[Stage, ...] = (
    Stage(
        name="build_network", runner="cli", cli_verb="network build",
        inputs=("osm_pbf",), outputs=("road_segments",), keys=("partition",), scope="network",
        doc="OSM PBF, or node + arc lists -> directed road segments and the partition list",
        grain="one directed segment (OSM node pair / graph arc)",
    ),
    Stage(
        name="ingest_probes", runner="spark", cli_verb="ingest",
        inputs=("raw_probe_files",), outputs=("probes", "rejected_probes", "rejected_files"), keys=("dt", "partition"),
        scope="day",
        upstream=("build_network",), gate="ingest_probes",
        doc="CSV, JSONL, Parquet, GPX, trips-json files -> probes; bad rows -> rejected_probes",
        grain="one GPS fix / one rejected input row + reason",
    ),
    Stage(
        name="match_traces", runner="spark",
        inputs=("probes", "road_segments"), outputs=("segment_traversals",), keys=("dt", "partition"),
        scope="partition_day", upstream=("ingest_probes",), gate="match_traces",
        doc="map-match each trace piece; one row per traversal of a segment with its observed speed",
        grain="one trace piece's traversal of one segment, observed speed",
    ),
    Stage(
        name="bucket_traversals", runner="spark",
        inputs=("segment_traversals", "road_segments"), outputs=("bucketed_traversals",), keys=("dt", "partition"),
        scope="partition_day", upstream=("match_traces",), gate="bucket_traversals",
        doc="tag each complete traversal with its local time-of-week bucket",
        grain="one complete traversal + local time-of-week bucket",
    ),
    Stage(
        name="build_histograms", runner="spark",
        inputs=("bucketed_traversals",), outputs=("speed_histograms",), keys=("partition", "window"),
        scope="partition_day", upstream=("bucket_traversals",), flags=(WINDOW_WEEKS,), gate="build_histograms",
        doc="daily speed histograms per segment x bucket, merged into a rolling N-week window",
        grain="segment x bucket speed histogram (one day, or a rolling N-week window)",
    ),
    Stage(
        name="estimate_speeds", runner="spark",
        inputs=("speed_histograms", "road_segments"), outputs=("speed_estimates",), keys=("partition",),
        scope="partition_day", upstream=("build_histograms",), flags=(WINDOW_WEEKS,), gate="estimate_speeds",
        doc="speed, percentiles, confidence and source per segment x bucket, with back-off",
        grain="segment x bucket: median, p15, p85, mean, harmonic mean, n_traces, confidence, source",
    ),
    Stage(
        name="publish_estimates", runner="airflow", cli_verb="publish",
        inputs=("speed_estimates", "road_segments"), outputs=("postgis.speed_estimates",), keys=("partition",),
        scope="partition_day", upstream=("estimate_speeds",),
        doc="load the partition's estimates + geometry into PostGIS (skipped without a DSN)",
        grain="segment x bucket",
    ),
)

STAGES: dict[str, Stage] = {s.name: s for s in REGISTRY}


def stage(name: str) -> Stage:
    """The registered stage called `name`; KeyError naming the known ones otherwise."""
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(STAGES)}") from None


def in_order(names: list[str] | tuple[str, ...] | None = None) -> list[Stage]:
    """Stages (all, or those named) in a dependency order, ties in registry order."""
    rank = {s.name: i for i, s in enumerate(REGISTRY)}
    ts = TopologicalSorter({s.name: set(s.upstream) for s in REGISTRY})
    ts.prepare()
    order: list[str] = []
    while ts.is_active():
        ready = sorted(ts.get_ready(), key=rank.__getitem__)
        order += ready
        ts.done(*ready)
    wanted = set(STAGES if names is None else names)
    return [STAGES[n] for n in order if n in wanted]


def partition_day_stages(runner: Runner | None = "spark") -> list[Stage]:
    """The stages of one partition-day (what `run` and the per-partition DAG run), dependency order."""
    return [s for s in in_order() if s.scope == "partition_day" and (runner is None or s.runner == runner)]


def spark_stage_names() -> tuple[str, ...]:
    """Names of the partition-day Spark stages, dependency order (`speedprofile run --stages` choices)."""
    return tuple(s.name for s in partition_day_stages("spark"))


def producer(table: str) -> Stage | None:
    """The stage writing `table` (None for external inputs)."""
    return next((s for s in REGISTRY if table in s.outputs), None)


def tables() -> list[str]:
    """Every warehouse table some stage writes, in dependency order."""
    return [t for s in in_order() for t in s.outputs if "." not in t]


def check() -> list[str]:
    """Problems in the registry itself (unknown upstreams, cycles, an input nobody writes that is not external)."""
    problems = []
    for s in REGISTRY:
        problems += [f"{s.name}: unknown upstream {u!r}" for u in s.upstream if u not in STAGES]
        for t in s.inputs:
            p = producer(t)
            if p is not None and p.name != s.name and p.name not in _ancestors(s.name):
                problems.append(f"{s.name} reads {t} written by {p.name}, which is not upstream of it")
    try:
        in_order()
    except Exception as exc:  # graphlib.CycleError
        problems.append(f"dependency cycle: {exc}")
    return problems


def _ancestors(name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(STAGES[name].upstream) if name in STAGES else []
    while todo:
        u = todo.pop()
        if u in seen or u not in STAGES:
            continue
        seen.add(u)
        todo += STAGES[u].upstream
    return seen


def add_arguments(p) -> None:
    """`speedprofile stages`: flags."""
    p.add_argument("--json", action="store_true", help="one JSON object per stage instead of a table")


def cli(args) -> int:
    """Print the registry: one line (or JSON object) per stage, dependency order."""
    import json
    from dataclasses import asdict

    for s in in_order():
        if args.json:
            print(json.dumps({**asdict(s), "app": s.app, "gate_task": s.gate_task}))
        else:
            ups = ",".join(s.upstream) or "-"
            print(f"{s.name:<18} {s.runner:<7} {','.join(s.inputs):<38} -> {','.join(s.outputs):<40} "
                  f"keys {','.join(s.keys) or '-':<15} after {ups:<18} gate {s.gate or '-'}")
    return 0
