#!/usr/bin/env python3
"""Install the jars of conf/jars.lock from Maven Central into a folder, each checked against its pinned sha256.

Used by the Spark and Airflow images (the Ansible spark role does the same with get_url). Standard library only:
    python install_jars.py --lock conf/jars.lock --dest /opt/speedprofile/jars
    python install_jars.py --lock conf/jars.lock --dest /opt/speedprofile/jars --list   # JSON, nothing fetched
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.request
from pathlib import Path

MAVEN_CENTRAL = "https://repo1.maven.org/maven2"


def locked_jars(lock: Path, repo: str, dest: Path) -> list[dict[str, str]]:
    """[{coordinate, sha256, url, path}] of every `group:artifact:version sha256` line of the lock."""
    jars = []
    for line in lock.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        coordinate, sha256 = line.split()
        group, artifact, version = coordinate.split(":")
        name = f"{artifact}-{version}.jar"
        jars.append({"coordinate": coordinate, "sha256": sha256,
                     "url": f"{repo}/{group.replace('.', '/')}/{artifact}/{version}/{name}",
                     "path": str(dest / name)})
    return jars


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def install(jar: dict[str, str]) -> None:
    dest = Path(jar["path"])
    if dest.is_file() and sha256_of(dest) == jar["sha256"]:
        return
    tmp = dest.with_suffix(".jar.part")
    with urllib.request.urlopen(jar["url"], timeout=300) as resp, tmp.open("wb") as out:
        while chunk := resp.read(1 << 20):
            out.write(chunk)
    got = sha256_of(tmp)
    if got != jar["sha256"]:
        tmp.unlink()
        raise SystemExit(f"error: {jar['coordinate']} has sha256 {got}, conf/jars.lock pins {jar['sha256']}")
    os.chmod(tmp, 0o644)
    tmp.replace(dest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lock", type=Path, required=True)
    ap.add_argument("--dest", type=Path, required=True)
    ap.add_argument("--repo", default=MAVEN_CENTRAL, help="Maven repository root (default: Maven Central)")
    ap.add_argument("--list", action="store_true", help="print the jars as JSON and fetch nothing")
    args = ap.parse_args(argv)
    jars = locked_jars(args.lock, args.repo.rstrip("/"), args.dest)
    if args.list:
        json.dump(jars, sys.stdout, indent=1)
        print()
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    for jar in jars:
        print(f"jar: {jar['coordinate']}", flush=True)
        install(jar)
    return 0


if __name__ == "__main__":
    sys.exit(main())
