#!/bin/bash
# First start of the PostGIS container: a metadata database for Airflow and a PostGIS database for
# `speedprofile publish`, each with its own role. Passwords come from the container environment (.env).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE airflow LOGIN PASSWORD '${AIRFLOW_DB_PASSWORD}';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE speedprofile LOGIN PASSWORD '${SPEEDPROFILE_DB_PASSWORD}';
CREATE DATABASE speedprofile OWNER speedprofile;
\connect speedprofile
CREATE EXTENSION IF NOT EXISTS postgis;
SQL
