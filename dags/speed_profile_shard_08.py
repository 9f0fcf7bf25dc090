"""Airflow DAGs `speed_profile__<cell>` of the partitions whose cell hashes to shard 8 of 16 (docs/airflow.md)."""

from speedprofile.orchestration import build_shard

build_shard(globals(), 8)
