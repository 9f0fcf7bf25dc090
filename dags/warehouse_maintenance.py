"""Airflow DAG `warehouse_maintenance`: daily expiry of old table snapshots and removal of unreferenced files.

Wiring only; the task comes from speedprofile.orchestration (docs/airflow.md).
"""

from __future__ import annotations

from speedprofile.orchestration import build_maintenance_dag, warehouse_root

warehouse_maintenance = build_maintenance_dag(warehouse_root())
