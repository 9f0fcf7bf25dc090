#!/usr/bin/env bash
# `make airflow`: Airflow 3 (API server + UI, scheduler, DAG processor) on http://127.0.0.1:8080 with this repo's
# DAGs, a SQLite metadata DB under $AIRFLOW_HOME (default .airflow/), local Spark. Prints how to log in.
# Ctrl-C stops every process it started. Settings you may override: AIRFLOW_HOME, AIRFLOW_PORT,
# SPEEDPROFILE_WAREHOUSE, AIRFLOW_CONN_SPARK_DEFAULT (e.g. '{"conn_type": "spark", "host": "spark://head:7077"}').
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV_BIN="$REPO/.venv/bin"
[ -x "$VENV_BIN/airflow" ] || { echo "error: $VENV_BIN/airflow not found: run 'make setup' first" >&2; exit 1; }

export AIRFLOW_HOME=${AIRFLOW_HOME:-$REPO/.airflow}
PORT=${AIRFLOW_PORT:-8080}
mkdir -p "$AIRFLOW_HOME"
export PATH="$VENV_BIN:$PATH"
export SPEEDPROFILE_WAREHOUSE=${SPEEDPROFILE_WAREHOUSE:-$REPO/warehouse}
export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$VENV_BIN/python}
export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$VENV_BIN/python}
export AIRFLOW_CONN_SPARK_DEFAULT=${AIRFLOW_CONN_SPARK_DEFAULT:-'{"conn_type": "spark", "host": "local[2]"}'}
export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-2}  # 2 cores: at most two task processes
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db?timeout=60}  # wait for SQLite locks
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT=$PORT
export AIRFLOW__API__WORKERS=1
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$PORT"
export AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR=True
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}
# One JWT secret shared by the API server, scheduler and task processes; kept across restarts.
[ -s "$AIRFLOW_HOME/jwt_secret" ] || (umask 077; "$VENV_BIN/python" -c 'import secrets; print(secrets.token_hex(32))' >"$AIRFLOW_HOME/jwt_secret")
export AIRFLOW__API_AUTH__JWT_SECRET=$(cat "$AIRFLOW_HOME/jwt_secret")
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}

# The same settings for `airflow ...` commands in another shell (backfill, dags test): `source $AIRFLOW_HOME/env.sh`.
export -p | grep -E ' (AIRFLOW_HOME|AIRFLOW__[A-Z_]+|AIRFLOW_CONN_SPARK_DEFAULT|SPEEDPROFILE_WAREHOUSE|SPARK_LOCAL_IP|PYSPARK_[A-Z_]+|PATH)=' \
  >"$AIRFLOW_HOME/env.sh"
chmod 600 "$AIRFLOW_HOME/env.sh"

if (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; then
  echo "error: 127.0.0.1:$PORT is already in use (another Airflow?); set AIRFLOW_PORT=NNNN" >&2
  exit 1
fi
[ -f "$SPEEDPROFILE_WAREHOUSE/road_segments/_partitions.json" ] || echo "airflow: note: no partition list at" \
  "$SPEEDPROFILE_WAREHOUSE/road_segments/_partitions.json yet, so no speed_profile__<cell> DAGs (run" \
  "'speedprofile network build --warehouse $SPEEDPROFILE_WAREHOUSE ...' first; the DAGs appear within a minute)"

echo "airflow: migrating the metadata DB in $AIRFLOW_HOME ..."
airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -20 "$AIRFLOW_HOME/db-migrate.log" >&2; exit 1; }

mkdir -p "$AIRFLOW_HOME/logs"
PIDS=()
stop() {
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  sleep 3
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  echo "airflow: stopped"
}
trap stop EXIT
trap 'stop; exit 0' INT TERM
for svc in api-server scheduler dag-processor; do
  setsid airflow "$svc" >"$AIRFLOW_HOME/logs/$svc.out" 2>&1 &
  PIDS+=("$!")
done

echo "airflow: waiting for http://127.0.0.1:$PORT/api/v2/monitor/health ..."
for _ in $(seq 1 120); do
  if "$VENV_BIN/python" - "$PORT" <<'EOF' 2>/dev/null; then break; fi
import json, sys, urllib.request
h = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/v2/monitor/health", timeout=2))
sys.exit(0 if h["metadatabase"]["status"] == "healthy" else 1)
EOF
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "error: an Airflow process exited; see $AIRFLOW_HOME/logs/*.out" >&2; exit 1; }
  done
  sleep 2
done

PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
echo
echo "Airflow UI:  http://127.0.0.1:$PORT"
if [ -f "$PASSWORDS" ]; then
  "$VENV_BIN/python" -c 'import json,sys; [print(f"login:       {u} / {p}") for u, p in json.load(open(sys.argv[1])).items()]' "$PASSWORDS"
else
  echo "login:       see $PASSWORDS once the API server has written it"
fi
echo "DAGs from:   $AIRFLOW__CORE__DAGS_FOLDER (warehouse $SPEEDPROFILE_WAREHOUSE)"
echo "Spark:       spark_default = $AIRFLOW_CONN_SPARK_DEFAULT"
echo "logs:        $AIRFLOW_HOME/logs   (Ctrl-C stops Airflow)"
echo "CLI:         source $AIRFLOW_HOME/env.sh && airflow dags unpause speed_profile__<cell> &&"
echo "             airflow backfill create --dag-id speed_profile__<cell> --from-date D1 --to-date D2"
wait -n "${PIDS[@]}" || true
echo "error: an Airflow process exited; see $AIRFLOW_HOME/logs/*.out" >&2
exit 1
