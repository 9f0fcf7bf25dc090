"""Console progress: a tqdm bar on a terminal, plain throttled lines elsewhere (counts, rows/s, ETA)."""

from __future__ import annotations

import io
import re

from speedprofile.progress import Progress, track


def test_plain_lines_off_a_terminal_count_rate_and_eta():
    out = io.StringIO()
    with Progress(4, unit="partition-day", desc="run", stream=out, tty=False, every_s=0) as bar:
        bar.update(1, rows=1000, note="match_traces")
        bar.update(3, rows=3000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert re.match(r"run: 1/4 partition-days \(25%\), [\d,]+ rows/s, ETA \d\d:\d\d, elapsed \d\d:\d\d "
                    r"\[match_traces\]$", lines[0]), lines[0]
    assert lines[1].startswith("run: 4/4 partition-days (100%)") and "ETA" not in lines[1]


def test_plain_lines_are_throttled_but_the_last_one_is_always_printed():
    out = io.StringIO()
    with Progress(100, unit="file", stream=out, tty=False, every_s=3600) as bar:
        for _ in range(100):
            bar.update(1)
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]
    assert out.getvalue().startswith("100/100 files (100%)")


def test_terminal_bar_is_tqdm():
    out = io.StringIO()
    assert list(track(range(3), unit="file", desc="ingest", stream=out, tty=True)) == [0, 1, 2]
    text = out.getvalue()
    assert "ingest" in text and "3/3" in text and "file/s" in text
