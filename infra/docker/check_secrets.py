#!/usr/bin/env python3
"""Preflight of docker-compose.yml: refuse missing, short, default and placeholder secrets in the environment,
by the rules the Ansible roles apply (common_forbidden_secrets / _patterns in roles/common/defaults/main.yml).

    check_secrets.py --rules roles/common/defaults/main.yml NAME:MIN_LENGTH ...

Prints one line per refused variable (its name, never its value) and exits 1; exits 0 when all pass.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import yaml


def refusal(value: str, minimum: int, known: set[str], patterns: list[str]) -> str | None:
    """Why `value` is not a usable secret, or None."""
    if len(value) < minimum:
        return f"shorter than {minimum} characters"
    if len(set(value)) < 2:
        return "one repeated character"
    if value.lower() in known:
        return "a known default"
    for p in patterns:
        if re.search(p, value, re.IGNORECASE):
            return "a placeholder (see infra/docker/example.env)"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rules", required=True, help="YAML with common_forbidden_secrets and _patterns")
    p.add_argument("checks", nargs="+", metavar="NAME:MIN", help="environment variable and its minimum length")
    args = p.parse_args(argv)
    rules = yaml.safe_load(Path(args.rules).read_text())
    known = {str(k).lower() for k in rules["common_forbidden_secrets"]}
    patterns = [str(x) for x in rules["common_forbidden_secret_patterns"]]
    bad = 0
    for check in args.checks:
        name, _, minimum = check.partition(":")
        why = refusal(os.environ.get(name, ""), int(minimum or 12), known, patterns)
        if why:
            print(f"refused: {name} is {why}; set a real value in .env (e.g. openssl rand -hex 32)", file=sys.stderr)
            bad += 1
    if bad:
        return 1
    print(f"secrets ok: {', '.join(c.partition(':')[0] for c in args.checks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
