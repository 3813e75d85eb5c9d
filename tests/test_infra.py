"""infra/ files parse and hold what a cluster needs (docker and kubectl do not run here)."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import yaml

from hare.config import load_config

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"


def _yaml(name: str) -> dict:
    return yaml.safe_load((INFRA / name).read_text())


def test_compose_has_store_api_ray_head_and_a_gpu_worker_serving() -> None:
    compose = _yaml("docker-compose.yml")
    services = compose["services"]
    assert {"minio", "prefect-server", "ray-head", "gpu-worker"} <= set(services)
    worker = services["gpu-worker"]
    assert "hare serve configs/cluster.yaml" in worker["command"]
    assert "ray start --address=ray-head:6379" in worker["command"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    env = worker["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["RAY_ADDRESS"] == "ray-head:6379" and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "--head" in services["ray-head"]["command"]
    assert "prefect server start" in services["prefect-server"]["command"]


def test_no_credential_literals_in_infra() -> None:
    """Credentials come from the environment (${VAR} or a Kubernetes secret), never a literal."""
    compose = (INFRA / "docker-compose.yml").read_text()
    for key in ("AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD", "AWS_ACCESS_KEY_ID", "MINIO_ROOT_USER"):
        for m in re.finditer(rf"^\s*{key}:\s*(.+)$", compose, re.MULTILINE):
            assert m.group(1).startswith("${"), f"{key} set to a literal in docker-compose.yml"
    ray_cluster = (INFRA / "kuberay" / "raycluster.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in ray_cluster.split("kubectl apply")[1]  # only in the how-to comment
    assert ".env" in (ROOT / ".gitignore").read_text()


def test_kuberay_cluster_has_a_gpu_worker_group() -> None:
    spec = _yaml("kuberay/raycluster.yaml")
    assert spec["apiVersion"] == "ray.io/v1" and spec["kind"] == "RayCluster"
    head = spec["spec"]["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    (gpu,) = [g for g in spec["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    assert spec["spec"]["rayVersion"] == "2.60.0"


def test_prefect_yaml_deployments_point_at_real_flows() -> None:
    doc = _yaml("prefect.yaml")
    deployments = doc["deployments"]
    assert {d["entrypoint"] for d in deployments} == {"hare.flows.synthesize:synthesize",
                                                      "hare.flows.synthesize:rerun_failed"}
    for d in deployments:
        module, name = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module), name)
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(d["parameters"]) <= accepted, f"{d['entrypoint']}: unknown parameters"
        assert d["work_pool"]["name"] == "hare-ray"
    schedules = [s for d in deployments for s in d.get("schedules", [])]
    assert schedules and all(len(s["cron"].split()) == 5 for s in schedules)


def test_cluster_config_validates_and_uses_every_gpu() -> None:
    cfg = load_config(ROOT / "configs" / "cluster.yaml")
    assert cfg.model.num_gpus >= cfg.model.tensor_parallel_size and cfg.model.replicas is None
    assert cfg.store.url.startswith("s3://") and cfg.schedule.cron
    assert cfg.plan.prompts_per_partition >= cfg.model.max_num_seqs
