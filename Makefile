# Two commands for users: `make demo` and `make test`. Every target bootstraps itself (scripts/bootstrap.sh).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON ?= $(CURDIR)/$(VENV)/bin/python
export PYSPARK_DRIVER_PYTHON ?= $(CURDIR)/$(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test lint airflow check-infra cluster-test bench clean

setup:
	@scripts/bootstrap.sh

demo: setup
	$(VENV)/bin/speedprofile demo $(if $(OSM),--osm $(OSM),)

test: setup
	$(PY) -m pytest -q --durations=25 tests

lint: setup
	$(VENV)/bin/ruff check speedprofile schemas spark_apps dags tests benchmarks
	$(VENV)/bin/mypy

airflow: setup
	scripts/airflow_ui.sh

check-infra: setup
	scripts/check_infra.sh

cluster-test: setup
	$(PY) -m pytest -q tests/test_cluster.py tests/test_object_store_cluster.py tests/test_cluster_hosts.py

bench: setup
	scripts/bench.sh

clean:
	rm -rf warehouse demo_out spark-warehouse metastore_db derby.log
