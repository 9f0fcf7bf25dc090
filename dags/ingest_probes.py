"""Airflow DAG `ingest_probes`: the raw probe files landed for one UTC day -> probes / rejected_probes.

Wiring only; the tasks come from the stage registry through speedprofile.orchestration (docs/airflow.md).
"""

from __future__ import annotations

from speedprofile.orchestration import build_ingest_dag, warehouse_root

ingest_probes = build_ingest_dag(warehouse_root())
