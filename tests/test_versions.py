"""The Python side of Spark and the JVM it drives must be one release (pyspark-client shares pyspark/)."""

import re
from pathlib import Path

import pyspark


def test_python_and_jvm_spark_versions_match(spark):
    assert spark.version == pyspark.__version__


def test_pyspark_is_the_pinned_release():
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    pinned = re.search(r'"pyspark==([0-9.]+)"', pyproject).group(1)
    assert pyspark.__version__ == pinned


def test_pandas_below_3():
    import pandas

    assert int(pandas.__version__.split(".")[0]) < 3
