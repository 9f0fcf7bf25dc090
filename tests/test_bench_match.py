"""`speedprofile bench match`: the contract's output shape, gzip and plain files, clear errors."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from speedprofile.cli import main as cli_main

TRACKS = "00000000,00000048"


def _run(capsys, argv):
    rc = cli_main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_bench_prints_rows_then_one_json_line(capsys, data_dir, tmp_path):
    out_json = tmp_path / "bench.json"
    rc, out, _ = _run(capsys, ["bench", "match", "--kubicka", str(data_dir / "kubicka2015"), "--tracks", TRACKS,
                               "--out", str(out_json)])
    assert rc == 0
    lines = out.strip().splitlines()
    last = json.loads(lines[-1])
    assert set(last) == {"tracks", "points", "accuracy", "points_per_second", "cores"}
    assert last["tracks"] == 2 and last["cores"] == 1
    assert last["points"] == 2503 + 1240
    assert 0.95 <= last["accuracy"] <= 1.0
    assert last["points_per_second"] > 0
    assert any(line.split()[0] == "00000048" for line in lines[:-1])
    saved = json.loads(out_json.read_text())
    assert saved["accuracy"] == last["accuracy"] and saved["load_s"] >= 0


def test_bench_reads_plain_files_like_gzip(capsys, data_dir, tmp_path):
    src = data_dir / "kubicka2015" / "00000048"
    dst = tmp_path / "plain" / "00000048"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        with gzip.open(f, "rb") as fin, open(dst / f.name.removesuffix(".gz"), "wb") as fout:
            shutil.copyfileobj(fin, fout)
    rc, out, _ = _run(capsys, ["bench", "match", "--kubicka", str(tmp_path / "plain"), "--out", str(tmp_path / "p.json")])
    assert rc == 0
    plain = json.loads(out.strip().splitlines()[-1])
    rc, out, _ = _run(capsys, ["bench", "match", "--kubicka", str(data_dir / "kubicka2015"), "--tracks", "00000048",
                               "--out", str(tmp_path / "g.json")])
    gz = json.loads(out.strip().splitlines()[-1])
    assert plain["points"] == gz["points"] and plain["accuracy"] == pytest.approx(gz["accuracy"])


@pytest.mark.parametrize("argv_tail, message", [
    (["--kubicka", "/nonexistent/kubicka"], "not a folder"),
    (["--kubicka", "{data}", "--tracks", "99999999"], "no track folder 99999999"),
])
def test_bench_bad_arguments_fail_with_one_line(capsys, data_dir, argv_tail, message):
    argv = ["bench", "match", *[a.replace("{data}", str(data_dir / "kubicka2015")) for a in argv_tail]]
    rc, _, err = _run(capsys, argv)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_bench_cross_validation_adds_keys_and_scores_held_out_folds(capsys, data_dir, tmp_path):
    out_json = tmp_path / "cv.json"
    rc, out, _ = _run(capsys, ["bench", "match", "--kubicka", str(data_dir / "kubicka2015"),
                               "--tracks", "00000000,00000006,00000048", "--folds", "3",
                               "--grid", '{"sigma_m": [7, 10], "radius_m": [40]}', "--out", str(out_json)])
    assert rc == 0
    last = json.loads(out.strip().splitlines()[-1])
    assert {"tracks", "points", "accuracy", "points_per_second", "cores"} <= set(last)
    assert last["cv_folds"] == 3
    cv = json.loads(out_json.read_text())["cv"]
    assert cv["grid_size"] == 2 and len(cv["per_fold"]) == 3
    # one track per fold: each fold's test accuracy is that track's accuracy under the parameters chosen without it
    for row in cv["per_fold"]:
        assert len(row["tracks"]) == 1
        assert row["test_accuracy"] == pytest.approx(cv["held_out_per_track"][row["tracks"][0]], abs=1e-5)
        assert row["params"]["sigma_m"] in (7, 10)
    assert last["cv_accuracy_worst_fold"] == min(r["test_accuracy"] for r in cv["per_fold"])
    assert last["cv_accuracy_worst_fold"] <= last["cv_accuracy_mean"] <= 1.0
    assert last["cv_accuracy_min_track"] == pytest.approx(min(cv["held_out_per_track"].values()), abs=1e-5)


@pytest.mark.parametrize("argv_tail, message", [
    (["--folds", "1"], "need 2 <= K"),
    (["--folds", "2", "--grid", "[1, 2]"], "expected a JSON object"),
    (["--folds", "2", "--grid", '{"no_such": [1]}'], "unknown parameter no_such"),
])
def test_bench_cross_validation_bad_arguments(capsys, data_dir, argv_tail, message):
    argv = ["bench", "match", "--kubicka", str(data_dir / "kubicka2015"), "--tracks", "00000000,00000048", *argv_tail]
    rc, _, err = _run(capsys, argv)
    assert rc == 2
    assert message in err and len(err.strip().splitlines()) == 1
