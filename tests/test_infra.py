"""infra/ files parse and hold what a cluster needs (docker and kubectl do not run here)."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
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
    for key in ("AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD", "AWS_ACCESS_KEY_ID", "MINIO_ROOT_USER",
                "GF_SECURITY_ADMIN_PASSWORD"):
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


# --- metrics: Prometheus + Grafana on the engines' Ray metrics -----------------------------------

GRAFANA = INFRA / "grafana"
RAY_PREFIX = "ray_"  # Ray's Prometheus namespace for application metrics (ray.util.metrics)
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
                   "and", "or", "unless", "inf", "nan"}


def _engine_metrics() -> dict[str, set[str]]:
    """Prometheus name -> tag keys of every ray.util.metrics metric hare/engine.py creates.

    Ray exports metric ``x`` as ``ray_x``; a Counter as ``ray_x_total`` (Ray >= 2.10 with
    OpenTelemetry also drops the old gauge twin ``ray_x``), a Histogram as its _bucket/_sum/_count.
    """
    tree = ast.parse((ROOT / "hare" / "engine.py").read_text())
    tuples = {  # tags = ("model", "engine")
        t.id: {e.value for e in node.value.elts}
        for node in ast.walk(tree) if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple)
        for t in node.targets if isinstance(t, ast.Name)
    }
    suffixes = {"Counter": ["_total"], "Gauge": [""], "Histogram": ["_bucket", "_sum", "_count"]}
    metrics: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in suffixes):
            continue
        name = node.args[0].value
        tag_arg = next((k.value for k in node.keywords if k.arg == "tag_keys"), None)
        if isinstance(tag_arg, ast.Name):
            tags = tuples[tag_arg.id]
        else:
            tags = {e.value for e in tag_arg.elts} if tag_arg is not None else set()
        for suffix in suffixes[node.func.id]:
            metrics[f"{RAY_PREFIX}{name}{suffix}"] = tags
    return metrics


def _promql_metrics_and_labels(expr: str) -> tuple[set[str], set[str]]:
    """Metric names and the labels an expression groups or matches on (enough PromQL for ours)."""
    labels = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = {
        m.group(1) for m in re.finditer(r"(?<![\w$:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", bare)
        if m.group(1).lower() not in PROMQL_KEYWORDS
    }
    return names, labels


def _dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "hare.json").read_text())


def test_engine_metric_names_parsed_from_source() -> None:
    metrics = _engine_metrics()
    assert {"ray_hare_output_tokens_total", "ray_hare_requests_total", "ray_hare_gpu_busy_fraction"} <= set(metrics)
    assert all({"model", "engine"} <= tags for tags in metrics.values())
    names, labels = _promql_metrics_and_labels(
        'sum by (engine) (rate(ray_x_total{model=~"$model"}[$__rate_interval])) / on(model) max(ray_y)')
    assert names == {"ray_x_total", "ray_y"} and labels == {"engine", "model"}


def test_grafana_dashboard_queries_only_metrics_the_engines_export() -> None:
    dash = _dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 39
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = {p["title"] for p in panels}
    assert {"Output tokens/s per engine", "Total output tokens/s", "Requests/s", "GPU busy fraction per engine"} <= titles
    exported = _engine_metrics()
    queries = [t["expr"] for p in panels for t in p["targets"]]
    queries += [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]
    used = set()
    for expr in queries:
        variable = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", expr)  # Grafana's, not PromQL
        names, labels = _promql_metrics_and_labels(variable.group(1) if variable else expr)
        labels |= {variable.group(2)} if variable else set()
        assert names, f"no metric in {expr!r}"
        for name in names:
            assert name in exported, f"{expr!r}: {name} is not exported by hare/engine.py ({sorted(exported)})"
            assert labels <= exported[name], f"{expr!r}: labels {labels - exported[name]} not tags of {name}"
        used |= names
    assert {"ray_hare_output_tokens_total", "ray_hare_requests_total", "ray_hare_gpu_busy_fraction"} <= used
    by_title = {p["title"]: p["targets"][0]["expr"] for p in panels}
    assert re.search(r"rate\(ray_hare_output_tokens_total", by_title["Output tokens/s per engine"])
    assert "by (engine)" in by_title["Output tokens/s per engine"] and "by (engine)" in by_title["GPU busy fraction per engine"]
    assert "rate(ray_hare_requests_total" in by_title["Requests/s"]


def test_grafana_provisioning_matches_compose_mounts_and_the_dashboard() -> None:
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    dash = _dashboard()
    refs = [p["datasource"] for p in dash["panels"]] + [t["datasource"] for p in dash["panels"] for t in p["targets"]]
    assert refs and all(r == {"type": "prometheus", "uid": datasource["uid"]} for r in refs)

    grafana = _yaml("docker-compose.yml")["services"]["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            assert (INFRA / source).exists(), f"compose mounts {source}, which does not exist"
            mounts[target] = INFRA / source
    provisioning = [t for t in mounts if t.startswith("/etc/grafana/provisioning")]
    assert {"/etc/grafana/provisioning/datasources", "/etc/grafana/provisioning/dashboards"} <= {
        t.rstrip("/") for t in provisioning} or "/etc/grafana/provisioning" in provisioning
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "hare.yaml").read_text())["providers"]
    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"  # the provider reads the mounted folder
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home is None or home == f"{provider['options']['path']}/hare.json"


def test_compose_prometheus_and_grafana_bind_to_localhost_only() -> None:
    services = _yaml("docker-compose.yml")["services"]
    for name in ("prometheus", "grafana"):
        svc = services[name]
        image, _, tag = svc["image"].rpartition(":")
        assert image and tag and tag != "latest", f"{name}: pin the image tag"
        assert svc["ports"] and all(str(p).startswith("127.0.0.1:") for p in svc["ports"]), f"{name}: {svc['ports']}"
    env = services["grafana"]["environment"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", env["GF_SECURITY_ADMIN_PASSWORD"])
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GRAFANA_ADMIN_PASSWORD" in (INFRA / ".env.example").read_text()
    prometheus = services["prometheus"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_prometheus_scrapes_the_metrics_export_port_of_every_ray_node() -> None:
    services = _yaml("docker-compose.yml")["services"]
    ports = {}
    for name in ("ray-head", "gpu-worker"):
        m = re.search(r"ray start [^&]*--metrics-export-port[= ](\d+)", services[name]["command"])
        assert m, f"{name}: set --metrics-export-port on ray start (Ray picks a random port otherwise)"
        ports[name] = int(m.group(1))
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ray"]
    static = {t for c in job.get("static_configs", []) for t in c["targets"]}
    assert f"ray-head:{ports['ray-head']}" in static
    workers = [c for c in job.get("dns_sd_configs", []) if "gpu-worker" in c["names"]]
    assert workers and workers[0]["type"] == "A" and workers[0]["port"] == ports["gpu-worker"]
