#!/usr/bin/env bash
# `make check-infra`: ansible-lint, playbook syntax check, docker-compose validation, version-pin agreement and
# the configuration the roles render. Offline: no Galaxy, no Docker engine, no Raspberry Pi needed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN="$PWD/.venv/bin"
export PATH="$VENV_BIN:$PATH"
export ANSIBLE_CONFIG="$PWD/infra/rpi-ansible/ansible.cfg" ANSIBLE_NOCOLOR=1

echo "check-infra: ansible-lint (offline, production profile)"
(cd infra/rpi-ansible && ansible-lint --offline --nocolor --profile production)

echo "check-infra: ansible-playbook --syntax-check"
(cd infra/rpi-ansible && ansible-playbook --syntax-check site.yml render-config.yml)

echo "check-infra: docker-compose.yml (Compose $("$VENV_BIN/python" -c 'import compose,os;print(os.path.dirname(compose.__file__))')/docker-compose config -q)"
COMPOSE="$("$VENV_BIN/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
"$COMPOSE" -f docker-compose.yml --env-file infra/docker/example.env config -q

# tests/test_infra.py renders every role with render-config.yml and checks what it wrote: Spark RPC authentication
# and encryption, UI filter, MinIO TLS (a real handshake with the role's certificate), file modes, no secret in a
# world-readable file, the S3 key pair only in the per-node credentials file (never in a Spark conf or an
# environment), spark.redaction.regex, the pipeline user's warehouse-only MinIO policy, the roles refusing example
# and default secrets, compose ports on 127.0.0.1 and its preflight, passwords set through psql variables, the jars
# of conf/jars.lock (role, images, spark-defaults) and the table catalog's login (catalog.env on the head node only,
# the Spark Connect server's password file, airflow units, compose; never on a worker or in a Spark conf). No secret variable on a command line: every role task (command/shell argv, cmd, free form), unit
# Exec*= line, compose shell command and infra/docker script is parsed for one passed as a program's argument.
echo "check-infra: versions (pyproject / roles / compose / jars.lock), rendered configuration and its security"
"$VENV_BIN/python" -m pytest -q tests/test_infra.py \
  -k "not ansible_lint and not syntax_check and not compose_file_is_valid"
echo "check-infra: ok"
