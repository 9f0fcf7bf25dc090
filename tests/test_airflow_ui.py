"""The Airflow UI in a real browser: Chromium driven by Playwright against a real API server, scheduler and DAG
processor. Log in, see one DAG per partition, trigger one partition-day, see it succeed, open a quality gate's log.

The warehouse holds the tiny Porto grid and a simulated fleet for yesterday (UTC), because the trigger dialog's
default logical date is now: its inferred data interval is yesterday. A screenshot of the gate log is kept in
docs/airflow_ui_gate_log.png when SPEEDPROFILE_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.plugins.orchestration import (
    E2E_CELL,
    airflow_services,
    clone_airflow_home,
    run_airflow,
    spark_connect_conn,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
DAG_ID = f"speed_profile__{E2E_CELL}"


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium not found (Debian package 'chromium'; `make setup` as root installs it)")
    raise AssertionError


@pytest.fixture
def yesterday_warehouse(tmp_path) -> tuple[Path, str]:
    """Tiny grid network + 4 simulated vehicles driving yesterday (UTC), ingested."""
    from speedprofile.cli import main as sp

    day = str((datetime.now(UTC) - timedelta(days=1)).date())
    wh, sim = tmp_path / "warehouse", tmp_path / "sim"
    nodes = REPO / "fixtures" / "build_network" / "input"
    assert sp(["network", "build", "--warehouse", str(wh), "--nodes", str(nodes / "tiny.nodes"),
               "--arcs", str(nodes / "tiny.arcs.gz")]) == 0
    assert sp(["simulate", "--warehouse", str(wh), "--days", "1", "--vehicles", "4", "--seed", "3",
               "--start-date", day, "--out", str(sim)]) == 0
    assert sp(["ingest", "--warehouse", str(wh), str(sim / "probes")]) == 0
    return wh, day


def test_airflow_ui_login_trigger_partition_day_and_read_a_gate_log(airflow_home_template, tmp_path,
                                                                     yesterday_warehouse, connect_url):
    from playwright.sync_api import expect, sync_playwright

    wh, day = yesterday_warehouse
    cells = [p["cell"] for p in json.loads((wh / "road_segments" / "_partitions.json").read_text())["partitions"]]
    assert E2E_CELL in cells and len(cells) > 1
    home = clone_airflow_home(airflow_home_template, tmp_path / "airflow_home")
    # no scheduled runs on unpause (the trigger dialog unpauses the DAG): only the run the test triggers
    env = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "operator:admin", "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
           "AIRFLOW_CONN_SPARK_DEFAULT": spark_connect_conn(connect_url)}  # stages on the shared Connect server
    with airflow_services(home, wh, env) as svc, sync_playwright() as pw:
        base = f"http://127.0.0.1:{svc['port']}"
        passwords = home / "simple_auth_manager_passwords.json.generated"
        password = wait_for("the generated login", lambda: passwords.exists() and json.loads(
            passwords.read_text()).get("operator"), 60)
        browser = pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium-", dir=tmp_path), executable_path=chromium(), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 900})
        page = browser.new_page()
        page.set_default_timeout(120_000)
        try:
            # log in
            page.goto(f"{base}/")
            page.fill("input[name=username]", "operator")
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            expect(page.locator("a[href='/dags']").first).to_be_visible(timeout=120_000)
            assert "/login" not in page.url

            # one DAG per partition (the DAG processor registers them from the shard files)
            def listed():
                page.goto(f"{base}/dags?tags=speedprofile")
                try:
                    page.wait_for_selector(f"text=speed_profile__{cells[0]}", timeout=15_000)
                except Exception:
                    return None
                text = page.inner_text("body")
                return set(re.findall(r"speed_profile__[0-9a-f]{15}", text)) or None

            shown = wait_for("every partition DAG in the DAG list", listed, 300, every_s=5)
            assert shown == {f"speed_profile__{c}" for c in cells}
            assert "ingest_probes" in page.inner_text("body")

            # trigger one partition-day: the dialog's default logical date is now, so the run covers yesterday. The
            # DAG is unpaused first: the dialog's own unpause request races the trigger for SQLite's write lock, and
            # a lost unpause would leave the run queued behind a paused DAG.
            run_airflow(home, ["dags", "unpause", DAG_ID], wh, port=svc["port"])
            page.goto(f"{base}/dags/{DAG_ID}")
            page.click("[data-testid=trigger-dag-button]")
            dialog = page.locator("[role=dialog][data-scope=dialog][data-state=open]")
            expect(dialog.locator("[data-testid=trigger-dag-submit]")).to_be_visible(timeout=60_000)
            dialog.locator("[data-testid=trigger-dag-submit]").click()
            page.wait_for_url(re.compile(rf"/dags/{DAG_ID}/runs/[^/]+$"))
            run_url = page.url
            run_id = run_url.rsplit("/runs/", 1)[1]

            # see it succeed: the run's details tab shows its state, reloaded until final
            def final_state():
                page.goto(f"{run_url}/details")
                try:
                    page.wait_for_selector("text=Run Type", timeout=20_000)
                except Exception:
                    return None
                text = page.inner_text("main") if page.locator("main").count() else page.inner_text("body")
                m = re.search(r"State\s*\n\s*(\w+)", text)
                state = m.group(1).lower() if m else None
                return state if state in ("success", "failed") else None

            state = wait_for(f"run {run_id} to finish", final_state, 2400, every_s=10,
                             on_timeout=lambda: (home / "logs" / "scheduler.out").read_text()[-3000:])
            assert state == "success"

            # open a quality gate's log: it names the partition-day it checked and what it found
            page.goto(f"{run_url}/tasks/check_match_traces")
            log = page.locator("text=/check_match_traces dt=|match_traces dt=/").first
            expect(log).to_be_visible(timeout=120_000)
            text = page.inner_text("body")
            assert f"match_traces dt={day} partition={E2E_CELL}" in text
            assert "rows_in=" in text and "match_rate=" in text
            shot = tmp_path / "gate_log.png"
            page.screenshot(path=str(shot))
            if os.environ.get("SPEEDPROFILE_UPDATE_SCREENSHOTS"):
                shutil.copy(shot, REPO / "docs" / "airflow_ui_gate_log.png")
        finally:
            browser.close()
