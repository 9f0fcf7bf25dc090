#!/usr/bin/env bash
# `make bench`: install the benchmark-only extras (Valhalla, fastmm), then run every benchmark under benchmarks/
# and `speedprofile bench match` on Kubicka 2015. Figures are printed; each writes JSON to benchmarks/results/.
# A failing benchmark does not stop the others; the exit code is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PY="$VENV/bin/python"
DATA=${SPEEDPROFILE_DATA:-../shared/data}
RESULTS=benchmarks/results
export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$PWD/$PY}
export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$PWD/$PY}
export PATH="$PWD/$VENV/bin:$PATH"

# 1. Bench extras, re-installed only when pyproject.toml changed (they are not runtime dependencies).
stamp="$VENV/.bench-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bench: installing the bench extras (pip install -e '.[bench]')"
  if ! "$VENV/bin/pip" install -q -e '.[bench]'; then
    echo "bench: error: could not install the bench extras (pyvalhalla-weekly, fastmm) from PyPI" >&2
    exit 1
  fi
  rm -f "$VENV"/.bench-installed-*
  touch "$stamp"
fi
mkdir -p "$RESULTS"

failed=()
run() {  # run NAME CMD...: print a header, run, remember failures
  local name=$1
  shift
  echo
  echo "=== bench: $name ($(date -u +%H:%M:%S))"
  local t0=$SECONDS
  if "$@"; then
    echo "=== bench: $name ok in $((SECONDS - t0)) s"
  else
    echo "=== bench: $name FAILED (exit $?) after $((SECONDS - t0)) s" >&2
    failed+=("$name")
  fi
}

# 2. Every benchmark script (benchmarks/<name>.py; helpers live in _-prefixed packages).
shopt -s nullglob
for script in benchmarks/[!_]*.py; do
  run "$(basename "$script" .py)" "$PY" "$script"
done

# 3. The CLI's own matching benchmark on Kubicka 2015: its last stdout line is one JSON object.
kubicka_match() {
  local out
  if [ ! -d "$DATA/kubicka2015" ]; then
    echo "bench: error: Kubicka 2015 data not found at $DATA/kubicka2015 (set SPEEDPROFILE_DATA)" >&2
    return 1
  fi
  out=$("$VENV/bin/speedprofile" bench match --kubicka "$DATA/kubicka2015" --out "$RESULTS/bench_match.json") || return 1
  printf '%s\n' "$out"
  printf '%s\n' "$out" | tail -n 1 | "$PY" -c 'import json, sys; json.dump(json.loads(sys.stdin.read()), sys.stdout, indent=2)' \
    > "$RESULTS/bench_match_kubicka_cli.json" || return 1
  echo "wrote $RESULTS/bench_match_kubicka_cli.json"
}
run "speedprofile bench match --kubicka" kubicka_match

echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "bench: ${#failed[@]} failed: ${failed[*]}" >&2
  exit 1
fi
echo "bench: all benchmarks done; JSON in $RESULTS/"
