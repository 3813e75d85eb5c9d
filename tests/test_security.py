"""Credentials never leak, ids cannot escape their store prefix, and the shipped cluster has no
open doors.

A real `hare run` subprocess writes to S3 (moto) with a recognisable fake access key and secret
in its environment; then every output is searched for them: every object in the bucket (run.json,
manifests, lineage, card, data), the process's stdout and stderr (log lines), the Prefect API's
flow-run parameters, logs and artifacts, and Ray's session logs.

The infra files (docker-compose.yml, infra/kuberay/*.yaml, prefect.yaml) are read as the tools
read them: no published port on all interfaces without auth, Ray's GCS and client ports never
published, token auth on every Ray process, no credential literal anywhere (secrets come from
${VAR} or Kubernetes Secrets), the secrets guard refuses example and weak values, and the workers
get a bucket-scoped MinIO user, not root. Each checker is also shown a bad file, so it can fail.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from hare.cli.main import main
from tests.conftest import new_bucket, write_run_config
from tests.procs import hare_env, hare_process

from tests.test_infra import (COMPOSE_FILE, INFRA, KUBERAY, ROOT, _compose, _configmaps, _driver, _env, _k8s_docs,
                              _raycluster, _ray_containers, env_example, strong_env)


@pytest.mark.slow
def test_fake_secret_appears_in_no_output(tmp_path: Path, moto_endpoint: str, prefect_api: str) -> None:
    from prefect.client.orchestration import get_client

    key_id = f"AKIAHARE{secrets.token_hex(6).upper()}"
    secret = f"hare-fake-secret-{secrets.token_hex(12)}"
    bucket = new_bucket()
    ray_tmp = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    cfg = write_run_config(tmp_path, plan={"partitions": 2, "prompts_per_partition": 3})
    env = hare_env(PREFECT_API_URL=prefect_api, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret,
                   RAY_TMPDIR=str(ray_tmp), PREFECT_LOGGING_LEVEL="DEBUG")
    proc = hare_process("run", str(cfg), "--store", f"s3://{bucket}/sec", env=env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]

    outputs: dict[str, str] = {"stdout": out, "stderr": err}
    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    assert any(k.endswith("run.json") for k in keys) and any(k.endswith(".parquet") for k in keys)
    for k in keys:
        outputs[f"s3://{bucket}/{k}"] = s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode("latin-1")
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(limit=200):
            outputs[f"flow run {run.id} parameters"] = repr(run.parameters)
        outputs["prefect logs"] = "\n".join(log.message for log in client.read_logs(limit=200))
        outputs["prefect artifacts"] = "\n".join(repr(a.data) for a in client.read_artifacts(limit=200))
    ray_files = [p for p in ray_tmp.rglob("*") if p.is_file() and p.suffix in {".log", ".out", ".err", ".json", ""}]
    assert ray_files, "the subprocess's Ray wrote its session under RAY_TMPDIR"
    for p in ray_files:
        try:
            outputs[str(p)] = p.read_text(errors="replace")
        except OSError:
            continue

    leaks = [where for where, text in outputs.items() if secret in text or key_id in text]
    assert not leaks, f"credentials found in: {leaks}"
    assert len(outputs) > 20


@pytest.mark.parametrize("run_id", ["../other", "/etc", "a/b", ".."])
def test_run_ids_cannot_escape_the_store(tmp_path: Path, run_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_run_config(tmp_path)
    assert main(["status", "--store", str(tmp_path / "store"), run_id]) == 2
    assert "unsafe" in capsys.readouterr().err
    assert main(["rerun", run_id, "--store", str(tmp_path / "store")]) == 2
    assert "unsafe" in capsys.readouterr().err
    assert main(["run", str(cfg), "--run-id", run_id]) == 2
    assert "unsafe run id" in capsys.readouterr().err
    assert not (tmp_path / "other").exists() and not (tmp_path / "store").exists()


# --- the shipped cluster: no open doors ---------------------------------------------------------------

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
RAY_INTERNAL_PORTS = {6379, 10001}  # GCS and the Ray client server: containers only, never the host
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|AUTH_STRING|ROOT_USER|API_KEY|CREDENTIAL", re.I)
FROM_ENV = re.compile(r"\$\{[A-Z][A-Z0-9_]*(?::\?[^}]*|:-)?\}")  # ${VAR}, ${VAR:?msg}, ${VAR:-} (empty)
REQUIRED_VAR = re.compile(r"\$\{[A-Z][A-Z0-9_]*:\?[^}]+\}")


def _port(spec: Any) -> tuple[str | None, int]:
    """(host ip or None for all interfaces, container port) of a compose port, short or long syntax."""
    if isinstance(spec, dict):
        return spec.get("host_ip"), int(str(spec["target"]).split("/")[0])
    spec = str(spec)
    host_ip = None
    if spec.startswith("${"):
        end = spec.index("}") + 1
        host_ip, spec = spec[:end], spec[end + 1:]
    parts = spec.split("/")[0].split(":")
    if len(parts) == 3:
        host_ip = parts[0]
    return host_ip, int(parts[-1])


def _authenticated(service: dict) -> bool:
    """The service refuses requests without credentials that the user must set."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    prefect = REQUIRED_VAR.fullmatch(str(env.get("PREFECT_SERVER_API_AUTH_STRING", "")))
    ray = env.get("RAY_AUTH_MODE") == "token" and REQUIRED_VAR.fullmatch(str(env.get("RAY_AUTH_TOKEN", "")))
    return bool(prefect or ray)


def open_doors(compose: dict) -> list[str]:
    """Published ports that anyone on the network could use."""
    doors = []
    for name, svc in compose.get("services", {}).items():
        for spec in svc.get("ports", []):
            host_ip, port = _port(spec)
            if port in RAY_INTERNAL_PORTS:
                doors.append(f"{name}: publishes Ray's internal port {port} ({spec})")
            elif host_ip not in LOCAL_HOSTS and not _authenticated(svc):
                doors.append(f"{name}: {spec} is on {'all interfaces' if host_ip is None else host_ip} without auth")
    return doors


def credential_literals(compose: dict) -> list[str]:
    """Secret-named environment variables set to anything but ${VAR} (required, or an empty default)."""
    found = []
    blocks = [(n, s.get("environment", {})) for n, s in compose.get("services", {}).items()]
    blocks += [(k, v) for k, v in compose.items() if k.startswith("x-") and isinstance(v, dict)]
    for name, env in blocks:
        items = dict(e.split("=", 1) for e in env).items() if isinstance(env, list) else env.items()
        for key, value in items:
            if SECRET_NAME.search(key) and not FROM_ENV.fullmatch(str(value)):
                found.append(f"{name}: {key}")
    return found


def k8s_credential_literals(docs: list[dict]) -> list[str]:
    """Secret-named env vars not read from a Secret; Secret objects with data; secret-named ConfigMap keys."""
    found = []
    for d in docs:
        if d["kind"] == "Secret" and (d.get("data") or d.get("stringData")):
            found.append(f"Secret {d['metadata']['name']} carries values in the manifest")
        if d["kind"] == "ConfigMap":
            found += [f"ConfigMap {d['metadata']['name']}: {k}" for k in d["data"] if SECRET_NAME.search(k)]

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("env"), list):
                for e in node["env"]:
                    if SECRET_NAME.search(e["name"]) and "secretKeyRef" not in e.get("valueFrom", {}):
                        found.append(f"{where}: env {e['name']}")
            for k, v in node.items():
                walk(v, where)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    for d in docs:
        walk(d, f"{d['kind']} {d['metadata']['name']}")
    return found


def test_no_published_port_is_open_without_auth() -> None:
    compose = _compose()
    assert open_doors(compose) == []
    services = compose["services"]
    assert services["ray-head"]["ports"] == ["127.0.0.1:8265:8265"]  # the dashboard, token auth on too
    assert "ports" not in services["gpu-worker"] and "ports" not in services["hare"]
    assert _authenticated(services["prefect-server"]), "the Prefect server may be opened only because it has auth"
    # the checker fails on what the issue found
    bad = {"services": {"ray-head": {"ports": ["8265:8265", "6379:6379"], "environment": {"RAY_AUTH_MODE": "disabled"}},
                        "minio": {"ports": ["0.0.0.0:9000:9000", {"target": 9001, "published": 9001}]},
                        "prefect-server": {"ports": ["4200:4200"]},
                        "ok": {"ports": ["127.0.0.1:9090:9090", "${BIND:-127.0.0.1}:1:1"],
                               "environment": {"PREFECT_SERVER_API_AUTH_STRING": "${A:?set A}"}}}}
    doors = open_doors(bad)
    assert len(doors) == 5 and not any(d.startswith("ok:") for d in doors), doors
    assert any("6379" in d for d in doors)


def test_kubernetes_exposes_nothing_outside_the_cluster() -> None:
    rc = _raycluster()
    head = rc["spec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)
    for d in _k8s_docs():
        if d["kind"] == "Service":
            assert d["spec"].get("type", "ClusterIP") == "ClusterIP", d["metadata"]["name"]
        assert d["kind"] != "Ingress"
    pods = [g["template"]["spec"] for g in [head, *rc["spec"]["workerGroupSpecs"]]]
    pods.append(_driver()["spec"]["template"]["spec"])
    for pod in pods:
        assert not pod.get("hostNetwork")
        assert all("hostPort" not in p for c in pod["containers"] for p in c.get("ports", []))
    (policy,) = [d for d in _k8s_docs() if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": rc["metadata"]["name"]}
    assert "Ingress" in policy["spec"]["policyTypes"]
    open_rules = [r for r in policy["spec"]["ingress"] if "from" not in r]
    assert all({p["port"] for p in r["ports"]} == {8080} for r in open_rules), "only the metrics port is open"


def test_ray_token_auth_is_on_for_every_ray_process() -> None:
    services = _compose()["services"]
    ray_services = [n for n, s in services.items() if s.get("image", "").startswith("hare:")]
    assert {"ray-head", "gpu-worker", "hare"} <= set(ray_services)
    for name in ray_services:
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert REQUIRED_VAR.fullmatch(env["RAY_AUTH_TOKEN"]), f"{name}: RAY_AUTH_TOKEN must come from infra/.env"
    assert re.search(r"^\s*RAY_AUTH_MODE=token", (INFRA / "Dockerfile").read_text(), re.MULTILINE)
    rc = _raycluster()
    containers = [*_ray_containers(rc), *_driver()["spec"]["template"]["spec"]["containers"]]
    env_lists = [_env(c) for c in containers] + [{e["name"]: e for e in rc["spec"]["autoscalerOptions"]["env"]}]
    token_secrets = set()
    for env in env_lists:
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        token_secrets.add((ref["name"], ref["key"]))
    assert len(token_secrets) == 1, f"one token for the whole cluster: {token_secrets}"


def test_no_credential_literals_in_infra() -> None:
    compose = _compose()
    assert credential_literals(compose) == []
    assert k8s_credential_literals(_k8s_docs()) == []
    for d in yaml.safe_load((INFRA / "prefect.yaml").read_text())["deployments"]:
        env = d["work_pool"]["job_variables"].get("env", {})
        assert not [k for k in env if SECRET_NAME.search(k)], f"{d['name']}: a secret as a job variable"
    # no vendor default or example secret, and no URL with a password, in any shipped file
    shipped = [COMPOSE_FILE, INFRA / "Dockerfile", INFRA / "prefect.yaml", INFRA / ".env.example",
               INFRA / "minio" / "init.sh", *KUBERAY.glob("*.yaml"), ROOT / "configs" / "cluster.yaml"]
    for path in shipped:
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"minioadmin|change-?me|password123", text, re.I), path
        assert not re.search(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^@\s/]+@", text), f"{path}: credentials in a URL"
    example = env_example()
    secret_keys = [k for k in example if SECRET_NAME.search(k)]
    assert len(secret_keys) >= 6 and all(example[k] == "" for k in secret_keys), "no value to copy in .env.example"
    assert ".env" in (ROOT / ".gitignore").read_text()
    # the checkers fail on literals
    assert credential_literals({"services": {"m": {"environment": {"MINIO_ROOT_PASSWORD": "hunter2hunter2",
                                                                   "AWS_SECRET_ACCESS_KEY": "${S:-default}"}}}}) == [
        "m: MINIO_ROOT_PASSWORD", "m: AWS_SECRET_ACCESS_KEY"]
    assert credential_literals({"x-env": {"RAY_AUTH_TOKEN": "abc"}}) == ["x-env: RAY_AUTH_TOKEN"]
    bad_k8s = [{"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [
        {"name": "c", "env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}]}}}},
        {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"auth_token": "x"}},
        {"kind": "ConfigMap", "metadata": {"name": "m"}, "data": {"PREFECT_API_AUTH_STRING": "a:b"}}]
    assert len(k8s_credential_literals(bad_k8s)) == 3


def _check_secrets(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(INFRA / "check-secrets.sh")], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, check=False, timeout=30)


def test_secrets_guard_refuses_missing_example_and_weak_values() -> None:
    """compose runs infra/check-secrets.sh first; everything else waits for it to succeed."""
    good = strong_env()
    assert _check_secrets(good).returncode == 0
    example = _check_secrets(env_example())
    assert example.returncode != 0 and "MINIO_ROOT_PASSWORD is not set" in example.stderr
    cases = {
        "MINIO_ROOT_PASSWORD": ["change-me-please", "change-me-please-change-me", "minioadmin", "short"],
        "MINIO_ROOT_USER": ["minioadmin", ""],
        "HARE_S3_SECRET_KEY": [good["MINIO_ROOT_PASSWORD"], "x" * 15, "example-secret-value-123456"],
        "HARE_S3_ACCESS_KEY": [good["MINIO_ROOT_USER"]],
        "RAY_AUTH_TOKEN": ["", "ray", "12345678901234567890"],
        "PREFECT_AUTH_STRING": ["admin:password123", "admin", "hare:short", "hare:changeme-changeme-changeme"],
        "GRAFANA_ADMIN_PASSWORD": ["admin", "password-password-password"],
    }
    for key, values in cases.items():
        for value in values:
            proc = _check_secrets({**good, key: value})
            assert proc.returncode != 0 and key in proc.stderr, f"{key}={value!r} passed the guard"
    # the floor cannot be lowered from the environment
    assert _check_secrets({**good, "RAY_AUTH_TOKEN": "a7f3" * 3, "HARE_MIN_SECRET_LENGTH": "4"}).returncode != 0
    services = _compose()["services"]
    assert services["preflight"]["command"] == ["sh", "/check-secrets.sh"]
    assert "./check-secrets.sh:/check-secrets.sh:ro" in services["preflight"]["volumes"]
    checked = set(services["preflight"]["environment"])
    assert {k for k in env_example() if SECRET_NAME.search(k) or k.endswith("_USER")} <= checked


def test_workers_get_a_bucket_scoped_minio_user_not_root() -> None:
    services = _compose()["services"]
    root_users = {n for n, s in services.items() if "MINIO_ROOT_PASSWORD" in s.get("environment", {})}
    assert root_users == {"preflight", "minio", "minio-init"}, "root credentials reach only MinIO's own containers"
    for name in ("ray-head", "gpu-worker", "hare"):
        env = services[name]["environment"]
        assert env["AWS_ACCESS_KEY_ID"].startswith("${HARE_S3_ACCESS_KEY:?")
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${HARE_S3_SECRET_KEY:?")
    bucket = services["hare"]["environment"]["HARE_STORE"].removeprefix("s3://").split("/")[0]
    assert yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())["store"]["url"].startswith(f"s3://{bucket}/")
    policy = json.loads((INFRA / "minio" / "hare-bucket-policy.json").read_text())
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    assert all(st["Effect"] == "Allow" for st in policy["Statement"])
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= actions
    assert not any("*" in a or a.startswith("admin:") for a in actions), actions
    init = (INFRA / "minio" / "init.sh").read_text()
    for step in (f"mc mb --ignore-existing local/{bucket}", "mc admin policy create local hare-bucket",
                 'mc admin user add local "$HARE_S3_ACCESS_KEY" "$HARE_S3_SECRET_KEY"',
                 'mc admin policy attach local hare-bucket --user "$HARE_S3_ACCESS_KEY"'):
        assert step in init, step
    mounts = services["minio-init"]["volumes"]
    assert "./minio/hare-bucket-policy.json:/init/hare-bucket-policy.json:ro" in mounts
    # MinIO's images come from quay.io: Docker Hub's minio/* repositories are gone (infra/README.md)
    for name in ("minio", "minio-init"):
        image = services[name]["image"]
        assert image.startswith("quay.io/minio/") and re.search(r":RELEASE\.\d{4}-", image), image
