#!/usr/bin/env bash
# Idempotent set-up: Java check, Debian packages (when missing and root), .venv with the project installed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PYTHON=${PYTHON:-python3}
APT_PACKAGES=(postgresql postgresql-15-postgis-3 chromium)
SPARK_VERSION=$(sed -n 's/^ *"pyspark==\([0-9.]*\)".*/\1/p' pyproject.toml)

# 1. Java >= 17 (Spark 4 needs it).
if ! command -v java >/dev/null 2>&1; then
  echo "error: Java 17 or newer is required (Spark ${SPARK_VERSION}); install e.g. 'apt-get install openjdk-17-jre-headless'" >&2
  exit 1
fi
java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then
  echo "error: Java 17 or newer is required (found: $(java -version 2>&1 | head -1)); set JAVA_HOME/PATH to a JDK 17+" >&2
  exit 1
fi

# 2. Debian packages used by the tests (PostGIS, headless Chromium), installed when missing and running as root.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: warning: missing Debian packages ${missing[*]} (not root: install them yourself for the PostGIS and browser tests)" >&2
  fi
fi

# 3. The virtualenv, re-installed only when pyproject.toml changed.
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e '.[dev]'
  # The Spark provider pulls pyspark-client, which writes into the same pyspark/ folder: put pyspark's own
  # files back last so the Python side and the JVM jars are one release (tests/test_versions.py checks).
  "$VENV/bin/pip" install -q --no-deps --force-reinstall "pyspark==${SPARK_VERSION}"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
# 4. JVM libraries (Iceberg, JDBC drivers, s3a) into the cache folder, checked against conf/jars.lock.
scripts/fetch_jars.sh >/dev/null
echo "setup: ok ($("$VENV/bin/python" -c 'import pyspark; print("pyspark", pyspark.__version__)'), java ${java_major})"
