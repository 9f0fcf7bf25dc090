"""The Airflow task of a stage: `spark_apps/<stage>.py` on the `spark_default` connection, whatever its type.

A `spark` connection (local, standalone, a cluster) submits the app with spark-submit, as SparkSubmitOperator
does. A `spark_connect` connection runs the same app as a Spark Connect client of a long-lived server
(`speedprofile server start`, or the head node's service): no JVM and no Python worker pool start per task, so
a partition-day pays seconds of fixed cost per stage, not tens of seconds. The choice is made when the task runs,
so the DAG files stay free of connection look-ups.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator


class StageOperator(SparkSubmitOperator):
    """SparkSubmitOperator that runs the app as a Spark Connect client when its connection is `spark_connect`."""

    def execute(self, context: Any) -> None:
        from airflow.providers.apache.spark.hooks.spark_connect import SparkConnectHook
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(self._conn_id)
        if conn.conn_type != SparkConnectHook.conn_type:
            from speedprofile.tables import spark_jars

            if not self.jars:  # Iceberg's runtime and the catalog's JDBC drivers (the cache of `make setup`)
                self.jars = spark_jars()
            return super().execute(context)
        url = SparkConnectHook(self._conn_id).get_connection_url()
        env = dict(os.environ, SPARK_REMOTE=url)
        env.update({k: str(v) for k, v in (self.env_vars or {}).items()})
        cmd = [sys.executable, self.application, *[str(a) for a in (self.application_args or [])]]
        shown = url.split(";", 1)[0]  # never log a token
        self.log.info("Spark Connect client of %s: %s", shown, " ".join(cmd))
        self._client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                        start_new_session=True)
        assert self._client.stdout is not None
        for line in self._client.stdout:
            self.log.info("%s", line.rstrip())
        rc = self._client.wait()
        if rc != 0:
            from airflow.exceptions import AirflowException

            raise AirflowException(f"stage app {os.path.basename(self.application)} failed (exit {rc})")
        return None

    def on_kill(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None and client.poll() is None:
            os.killpg(client.pid, signal.SIGTERM)
            try:
                client.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(client.pid, signal.SIGKILL)
            return
        super().on_kill()


__all__ = ["StageOperator"]
