"""Secrets stay off command lines: the publish task hands `speedprofile publish` its PostGIS DSN (password
included) through the environment, which only the process owner can read, never through argv, which every local
user can read in /proc/<pid>/cmdline.
"""

from __future__ import annotations

import threading
import time

import psycopg2

from tests.plugins.objectstore import command_lines_holding

P1 = "8739220f0ffffff"
MARKER = "Pw-marker-7f3a9c"


def test_publish_task_passes_the_dsn_through_the_environment(serve_warehouse, postgis_dsn, monkeypatch):
    from speedprofile import orchestration

    # the private cluster trusts local connections, so the password only has to be recognisable
    dsn = postgis_dsn.replace("postgres@", f"postgres:{MARKER}@", 1)
    assert MARKER in dsn
    monkeypatch.setenv("SPEEDPROFILE_PG_DSN", dsn)
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.extend(command_lines_holding(MARKER))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = orchestration.publish_partition(str(serve_warehouse), P1)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert result == f"published partition {P1}"
    assert not seen, seen[:1]
    with psycopg2.connect(postgis_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(DISTINCT segment_id) FROM speedprofile.speed_estimates WHERE partition = %s", (P1,))
        assert cur.fetchone()[0] == 5
