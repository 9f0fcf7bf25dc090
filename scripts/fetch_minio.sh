#!/usr/bin/env bash
# Build the pinned MinIO server from source (`go install`, MinIO's documented route) into a cache outside the repo
# and print the binary's path. Idempotent: a binary already in the cache is only printed.
#
#   scripts/fetch_minio.sh                  # host binary:  $CACHE/minio/<version>/minio
#   GOARCH=arm64 scripts/fetch_minio.sh     # cross-built:  $CACHE/minio/<version>/linux_arm64/minio (Raspberry Pis)
#
# CACHE is $SPEEDPROFILE_CACHE (default ~/.cache/speedprofile); the version is MINIO_VERSION in conf/versions.env.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="$(sed -n 's/^MINIO_VERSION=\(.*\)$/\1/p' "$ROOT/conf/versions.env")"
[ -n "$VERSION" ] || { echo "fetch_minio: MINIO_VERSION missing in $ROOT/conf/versions.env" >&2; exit 1; }
CACHE="${SPEEDPROFILE_CACHE:-$HOME/.cache/speedprofile}"
DIR="$CACHE/minio/$VERSION"

command -v go >/dev/null 2>&1 || { echo "fetch_minio: Go is required (https://go.dev/dl/; MinIO needs Go >= 1.24)" >&2; exit 1; }
host_os="$(go env GOHOSTOS)" host_arch="$(go env GOHOSTARCH)"
target_os="${GOOS:-$host_os}" target_arch="${GOARCH:-$host_arch}"
if [ "$target_os/$target_arch" = "$host_os/$host_arch" ]; then
  BIN="$DIR/minio"
else
  BIN="$DIR/${target_os}_${target_arch}/minio"
fi
if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$DIR"
exec 9>"$DIR/.build.lock"
flock 9  # one build at a time (parallel test sessions, several playbook hosts)
if [ ! -x "$BIN" ]; then
  echo "fetch_minio: building github.com/minio/minio@$VERSION for $target_os/$target_arch (first time: minutes)" >&2
  start=$(date +%s)
  export CGO_ENABLED=0 GOOS="$target_os" GOARCH="$target_arch" GOFLAGS="${GOFLAGS:-} -trimpath"
  if [ "$BIN" = "$DIR/minio" ]; then
    GOBIN="$DIR" go install "github.com/minio/minio@$VERSION" >&2
  else
    # go install refuses GOBIN for cross builds; it writes $GOPATH/bin/<os>_<arch>/ instead.
    tmp="$(mktemp -d "$DIR/.gopath.XXXXXX")"
    trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
    GOMODCACHE="$(go env GOMODCACHE)" GOPATH="$tmp" GOBIN="" go install "github.com/minio/minio@$VERSION" >&2
    mkdir -p "$(dirname "$BIN")"
    mv "$tmp/bin/${target_os}_${target_arch}/minio" "$BIN.tmp"
    mv "$BIN.tmp" "$BIN"
  fi
  echo "fetch_minio: built in $(( $(date +%s) - start )) s" >&2
fi
echo "$BIN"
