"""`speedprofile status`: partition x day x stage from the stages' accounting and quality gates, and freshness."""

from __future__ import annotations

import json
from pathlib import Path

from speedprofile.cli import main
from speedprofile.stages import spark_stage_names
from speedprofile.warehouse import metrics_path
from tests.plugins.orchestration import write_partitions
from tests.seed import committed_ago, put_rows

P1, P2 = "87392c8a1ffffff", "87392c8a3ffffff"
D1, D2 = "2024-03-05", "2024-03-06"


def put_metrics(root: Path, stage: str, dt: str, cell: str, counts: dict) -> None:
    path = Path(metrics_path(str(root), stage, dt, cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(counts))


def match(rows_out: int, matched: int, fixes: int = 8) -> dict:
    return {"rows_in": rows_out + 1, "rows_out": rows_out, "rejected": {"speed_implausible": 1},
            "fixes_in": fixes, "fixes_matched": matched, "fixes_unmatched": {"no_candidate": fixes - matched},
            "match_rate": matched / fixes}


def warehouse(tmp_path: Path) -> Path:
    """P1: D1 matched and bucketed, D2 matched below the match-rate threshold; P2: nothing; P1 has estimates."""
    wh = tmp_path / "wh"
    write_partitions(wh, [P1, P2])
    for d, (n, matched) in ((D1, (3, 6)), (D2, (2, 2))):
        put_rows(wh, "probes", {"dt": d, "partition": P1}, {"trace_id": ["a"] * 8})
        put_rows(wh, "segment_traversals", {"dt": d, "partition": P1},
                 {"segment_id": list(range(n)), "speed_kph": [30.0] * n})
        put_metrics(wh, "match_traces", d, P1, match(n, matched))
    put_rows(wh, "bucketed_traversals", {"dt": D1, "partition": P1},
             {"segment_id": [1, 2], "speed_kph": [30.0, 31.0], "tow_bucket": [5, 6]})
    put_metrics(wh, "bucket_traversals", D1, P1, {"rows_in": 3, "rows_out": 2, "rejected": {"partial": 1}})
    with committed_ago(7200):  # the estimates were written two hours ago
        put_rows(wh, "speed_estimates", {"partition": P1}, {"segment_id": [1] * 4, "window": [f"w4-{D2}"] * 4})
    return wh


def test_status_table_shows_done_failed_missing_and_freshness(tmp_path, capsys):
    wh = warehouse(tmp_path)
    assert main(["status", "--warehouse", str(wh)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["partition", "day"] and lines[0].split()[2:] == list(spark_stage_names())
    row = next(ln for ln in lines if ln.split()[:2] == [P1, D1])
    assert row.split()[2:6] == ["done", "3", "done", "2"] and row.split()[6:] == ["missing", "missing"]
    row = next(ln for ln in lines if ln.split()[:2] == [P1, D2])
    assert row.split()[2:4] == ["FAILED", "2"]
    assert f"{P1} {D2} check_match_traces: match rate 25.0% is below the threshold 50%" in out
    assert next(ln for ln in lines if ln.split()[:2] == [P2, D1]).split()[2:] == ["missing"] * 4
    assert f"{P1}  window w4-{D2} (data to {D2}), 4 rows" in out and "(2.0 h ago)" in out
    assert f"{P2}  none" in out


def test_status_json_and_filters(tmp_path, capsys):
    wh = warehouse(tmp_path)
    assert main(["status", "--warehouse", str(wh), "--partition", P1, "--from", D2, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["days"] == [D2] and doc["partitions"] == [P1]
    states = {c["stage"]: (c["state"], c["rows"]) for c in doc["cells"]}
    assert states == {"match_traces": ("failed", 2), "bucket_traversals": ("missing", None),
                      "build_histograms": ("missing", None), "estimate_speeds": ("missing", None)}
    (fresh,) = doc["estimates"]
    assert fresh["window"] == f"w4-{D2}" and fresh["rows"] == 4 and 7000 < fresh["age_s"] < 7400
    assert main(["status", "--warehouse", str(wh), "--to", D2]) == 2
    assert main(["status", "--warehouse", str(tmp_path / "none")]) == 2
    assert "network build" in capsys.readouterr().err
