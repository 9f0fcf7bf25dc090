#!/usr/bin/env bash
# Fetch the jars of conf/jars.lock from Maven Central (through `mvn dependency:get`) into the cache folder, each
# checked against its pinned sha256. Idempotent: a jar already in the cache with the right digest is not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${SPEEDPROFILE_CACHE:-$HOME/.cache/speedprofile}/jars
mkdir -p "$CACHE"
M2=${MAVEN_REPO:-$HOME/.m2/repository}
while read -r coord sha; do
  [[ -z "$coord" || "$coord" == \#* ]] && continue
  IFS=: read -r group artifact version <<<"$coord"
  dest="$CACHE/$artifact-$version.jar"
  if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -c1-64)" = "$sha" ]; then
    continue
  fi
  src="$M2/${group//.//}/$artifact/$version/$artifact-$version.jar"
  if [ ! -f "$src" ]; then
    command -v mvn >/dev/null || { echo "error: Maven (mvn) is needed to fetch $coord" >&2; exit 1; }
    echo "setup: fetching $coord from Maven Central"
    mvn -q -B dependency:get -Dartifact="$coord" -Dtransitive=false -Dmaven.repo.local="$M2" >/dev/null
  fi
  got=$(sha256sum "$src" | cut -c1-64)
  if [ "$got" != "$sha" ]; then
    echo "error: $coord has sha256 $got, conf/jars.lock pins $sha; refusing it" >&2
    exit 1
  fi
  cp "$src" "$dest.tmp" && mv "$dest.tmp" "$dest"
done < conf/jars.lock
echo "$CACHE"
