"""Session-wide test set-up: one local Spark session, the shared data folder, per-area fixture plugins."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SPEEDPROFILE_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("TZ", "UTC")
# spark-submit / airflow must resolve to the venv's copies.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

pytest_plugins = [
    "tests.plugins.network",
    "tests.plugins.ingest",
    "tests.plugins.simulate",
    "tests.plugins.matching",
    "tests.plugins.aggregation",
    "tests.plugins.serve",
    "tests.plugins.orchestration",
    "tests.plugins.infra",
    "tests.plugins.objectstore",
    "tests.plugins.netns",
]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder (../shared/data); its absence is an error, never a skip."""
    if not DATA.is_dir():
        pytest.fail(f"shared data folder not found at {DATA} (set SPEEDPROFILE_DATA)")
    return DATA


@pytest.fixture(scope="session")
def spark():
    """One local[2] SparkSession for the whole test run (UTC, UI off, few shuffle partitions)."""
    from pyspark.sql import SparkSession

    from speedprofile.spark import START_CONF
    from speedprofile.tables import spark_jars

    session = (
        SparkSession.builder.master("local[2]")
        .appName("speedprofile-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.jars", spark_jars())
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", "2g")
        .config(map=START_CONF)  # the apps' Python worker daemon
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .getOrCreate()
    )
    yield session
    session.stop()
