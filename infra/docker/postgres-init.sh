#!/bin/bash
# First start of the PostGIS container: a metadata database for Airflow, a PostGIS database for
# `speedprofile publish` and the Iceberg table catalog's database, each with its own role. Passwords come from the
# container environment (.env) and reach the server only as psql variables (\getenv, quoted by psql as :'...'):
# never pasted into SQL text, never on a command line.
set -euo pipefail
: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD is not set}" "${SPEEDPROFILE_DB_PASSWORD:?SPEEDPROFILE_DB_PASSWORD is not set}"
: "${CATALOG_DB_PASSWORD:?CATALOG_DB_PASSWORD is not set}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\getenv airflow_password AIRFLOW_DB_PASSWORD
\getenv publish_password SPEEDPROFILE_DB_PASSWORD
\getenv catalog_password CATALOG_DB_PASSWORD
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE speedprofile LOGIN PASSWORD :'publish_password';
CREATE DATABASE speedprofile OWNER speedprofile;
CREATE ROLE speedprofile_catalog LOGIN PASSWORD :'catalog_password';
CREATE DATABASE speedprofile_catalog OWNER speedprofile_catalog;
\connect speedprofile
CREATE EXTENSION IF NOT EXISTS postgis;
SQL
