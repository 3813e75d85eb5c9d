"""Generation engines as Ray actors: the model is loaded once per actor, not per partition.

The driver starts ``model.replicas`` named actors (default: one per ``num_gpus`` GPUs of the
cluster), each with ``model.num_cpus`` CPUs and ``model.num_gpus`` GPUs reserved in Ray,
before any partition runs, and partition tasks look
them up by name. Named actors keep Prefect task parameters plain strings (hashable, cacheable)
instead of actor handles.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from hare.backends.base import GenerationBackend, GenerationRequest, GenerationResult
from hare.config import ModelConfig, RunConfig, SamplingConfig
from hare.gpu_monitor import GpuSampler
from hare.models import ResolvedModel, resolve_model

RAY_NAMESPACE = "hare"


def make_backend(model_cfg: ModelConfig, resolved: ResolvedModel | None) -> GenerationBackend:
    if model_cfg.backend == "deterministic-fake":
        from hare.backends.fake import DeterministicFakeBackend

        return DeterministicFakeBackend()
    if model_cfg.backend == "replay":
        from hare.backends.replay import ReplayBackend

        return ReplayBackend(model_cfg)
    from hare.backends.vllm_backend import VLLMBackend

    assert resolved is not None, "the vllm backend needs a resolved model"
    return VLLMBackend(model_cfg, resolved.path, resolved.revision)


class EngineActor:
    """One backend inside one Ray actor process."""

    def __init__(self, model_cfg: ModelConfig, resolved: ResolvedModel | None) -> None:
        import ray
        from ray.util.metrics import Counter, Gauge

        started = time.perf_counter()
        self.backend = make_backend(model_cfg, resolved)
        self.load_seconds = time.perf_counter() - started
        # Ray exports these to its dashboard / Prometheus endpoint: rate() gives tokens/s.
        tags = ("model", "engine")
        self._tokens = Counter("hare_output_tokens", "Output tokens generated", tag_keys=tags)
        self._requests = Counter("hare_requests", "Generation requests served", tag_keys=tags)
        self._gpu_busy = Gauge("hare_gpu_busy_fraction", "GPU busy fraction of the last generate call", tag_keys=tags)
        self._tags = {"model": model_cfg.name, "engine": ray.get_runtime_context().get_actor_name() or ""}

    def describe(self) -> dict[str, Any]:
        b = self.backend
        return {"backend": b.name, "model": b.model, "model_revision": b.model_revision,
                "load_seconds": round(self.load_seconds, 2), "pid": os.getpid(), "node": socket.gethostname()}

    def generate(
        self, requests: list[GenerationRequest], sampling: SamplingConfig
    ) -> tuple[list[GenerationResult], float, dict[str, Any]]:
        """Results, engine seconds, and GPU figures sampled during the call (empty on CPU)."""
        started = time.perf_counter()
        with GpuSampler() as gpu:
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


def engine_name(run_id: str, index: int) -> str:
    return f"hare-engine-{run_id}-{index}"


class CapacityError(RuntimeError):
    """The Ray cluster cannot hold the engines and a partition task at once."""


def engine_count(model: ModelConfig, resources: dict[str, float]) -> int:
    """``model.replicas``, or as many engines as the cluster's GPUs hold (1 on CPUs)."""
    if model.replicas is not None:
        return model.replicas
    if model.num_gpus > 0:
        return max(1, int(resources.get("GPU", 0.0) // model.num_gpus))
    return 1


def check_capacity(cfg: RunConfig, resources: dict[str, float]) -> int:
    """Refuse plans that would wait forever (Ray queues what does not fit, silently);
    return the number of engines to start."""
    replicas = engine_count(cfg.model, resources)
    need_cpu = replicas * cfg.model.num_cpus
    need_gpu = replicas * cfg.model.num_gpus
    have_cpu, have_gpu = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if need_gpu > have_gpu:
        raise CapacityError(f"{replicas} engine(s) x model.num_gpus = {need_gpu} GPUs, the Ray cluster has {have_gpu}")
    if need_cpu + cfg.ray.task_num_cpus > have_cpu:
        raise CapacityError(
            f"{replicas} engine(s) x model.num_cpus = {need_cpu} CPUs plus ray.task_num_cpus = "
            f"{cfg.ray.task_num_cpus} for a partition task exceed the cluster's {have_cpu} CPUs"
        )
    return replicas


def start_engines(cfg: RunConfig, run_id: str) -> dict[str, Any]:
    """Resolve (convert once) the model in the driver, start the actors, wait until loaded.

    Returns name -> handle. Keep the dict alive while partitions run: a non-detached named
    actor dies when its creator drops the last handle, even if others look it up by name.
    """
    import ray

    replicas = check_capacity(cfg, ray.cluster_resources())
    resolved = resolve_model(cfg.model.source) if cfg.model.backend == "vllm" else None
    actor_cls = ray.remote(EngineActor)
    names = [engine_name(run_id, i) for i in range(replicas)]
    actors = [
        actor_cls.options(
            name=name,
            namespace=RAY_NAMESPACE,
            num_cpus=cfg.model.num_cpus,
            num_gpus=cfg.model.num_gpus,
            max_restarts=cfg.model.max_restarts,
            get_if_exists=True,
        ).remote(cfg.model, resolved)
        for name in names
    ]
    ray.get([a.describe.remote() for a in actors])  # fail here, clearly, if an engine cannot load
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
    import ray

    for handle in engines.values():
        ray.kill(handle)
