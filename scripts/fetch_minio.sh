#!/usr/bin/env bash
# Build the pinned MinIO server (or, with the argument `mc`, the mc client) from source with `go install`, MinIO's
# documented route, into a cache outside the repository, and print the binary's path. Idempotent: a binary
# already in the cache is only printed.
#
#   scripts/fetch_minio.sh                  # host binary:  $CACHE/minio/<MINIO_VERSION>/minio
#   scripts/fetch_minio.sh mc               #               $CACHE/mc/<MC_VERSION>/mc
#   GOARCH=arm64 scripts/fetch_minio.sh     # cross-built:  $CACHE/minio/<MINIO_VERSION>/linux_arm64/minio (Pis)
#
# CACHE is $SPEEDPROFILE_CACHE (default ~/.cache/speedprofile); versions are MINIO_VERSION / MC_VERSION in
# conf/versions.env. Needs Go >= 1.24 on PATH.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOL="${1:-minio}"
case "$TOOL" in
  minio) KEY=MINIO_VERSION ;;
  mc) KEY=MC_VERSION ;;
  *) echo "usage: $0 [minio|mc]" >&2; exit 2 ;;
esac
VERSION="$(sed -n "s/^$KEY=\(.*\)\$/\1/p" "$ROOT/conf/versions.env")"
[ -n "$VERSION" ] || { echo "fetch_minio: $KEY missing in $ROOT/conf/versions.env" >&2; exit 1; }
CACHE="${SPEEDPROFILE_CACHE:-$HOME/.cache/speedprofile}"
DIR="$CACHE/$TOOL/$VERSION"
MODULE="github.com/minio/$TOOL@$VERSION"

# Go's default install folders, for shells that did not put them on PATH.
for d in /usr/local/go/bin "$HOME/go/bin" /usr/lib/go/bin; do
  command -v go >/dev/null 2>&1 || { [ -x "$d/go" ] && PATH="$d:$PATH"; }
done
command -v go >/dev/null 2>&1 || { echo "fetch_minio: Go >= 1.24 is required on PATH (https://go.dev/dl/)" >&2; exit 1; }
host="$(go env GOHOSTOS)_$(go env GOHOSTARCH)"
target="${GOOS:-$(go env GOHOSTOS)}_${GOARCH:-$(go env GOHOSTARCH)}"
if [ "$target" = "$host" ]; then BIN="$DIR/$TOOL"; else BIN="$DIR/$target/$TOOL"; fi
if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$DIR"
exec 9>"$DIR/.build.lock"
flock 9  # one build at a time (parallel test sessions, several playbook hosts)
if [ ! -x "$BIN" ]; then
  echo "fetch_minio: go install $MODULE for $target (the first build takes minutes)" >&2
  start=$(date +%s)
  export CGO_ENABLED=0 GOOS="${target%_*}" GOARCH="${target#*_}" GOFLAGS="${GOFLAGS:-} -trimpath"
  # go install writes into GOBIN only for the host; a cross build lands in $GOPATH/bin/<os>_<arch>/.
  tmp="$(mktemp -d "$DIR/.gopath.XXXXXX")"
  trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
  if [ "$target" = "$host" ]; then
    GOBIN="$tmp/bin" go install "$MODULE" >&2
    built="$tmp/bin/$TOOL"
  else
    GOMODCACHE="$(go env GOMODCACHE)" GOPATH="$tmp" GOBIN="" go install "$MODULE" >&2
    built="$tmp/bin/$target/$TOOL"
  fi
  mkdir -p "$(dirname "$BIN")"
  mv "$built" "$BIN.tmp"
  mv "$BIN.tmp" "$BIN"  # appears whole or not at all
  echo "fetch_minio: built $BIN in $(( $(date +%s) - start )) s" >&2
fi
echo "$BIN"
