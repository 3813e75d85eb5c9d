"""A pool of embedding actors: the sentence model loaded once per actor, on a GPU when the
cluster has one (fp16, large batches), on CPUs otherwise.

Why actors: every stage that embeds (the features stage, paraphrase windows in
decontamination, diversity) runs as many small per-partition tasks; loading MiniLM in each
would cost more than the embedding itself, and only an actor can hold a GPU-resident model
between tasks. Stage code asks :func:`pool_embed` for an ``embed(texts)`` function: it calls
the run's actors when they exist (``hare run`` starts them beside the engines) and embeds in
the calling process otherwise (a one-off CLI command, a unit test).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import numpy as np

from hare.config import EmbeddingConfig, RunConfig
from hare.engines import RAY_NAMESPACE

Embed = Callable[[Sequence[str]], np.ndarray]


class EmbedderActor:
    """One sentence-transformers model inside one Ray actor process."""

    def __init__(self, cfg: EmbeddingConfig) -> None:
        import torch

        self.device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.batch_size = cfg.batch_size
        from hare.engines.embed import load_embedder

        load_embedder(self.device)

    def embed(self, texts: list[str]) -> np.ndarray:
        from hare.engines.embed import embed

        return embed(texts, batch_size=self.batch_size, device=self.device)

    def describe(self) -> dict[str, Any]:
        return {"device": self.device, "batch_size": self.batch_size}


def embedder_name(run_id: str, index: int) -> str:
    return f"hare-embedder-{run_id}-{index}"


def start_embedders(cfg: RunConfig, run_id: str) -> dict[str, Any]:
    """Start ``embedding.replicas`` named actors (not waited for: they load while the engines do).
    Keep the returned handles alive for the run, as with the engines."""
    import ray

    actor_cls = ray.remote(EmbedderActor)
    e = cfg.embedding
    return {name: actor_cls.options(name=name, namespace=RAY_NAMESPACE, num_cpus=e.num_cpus, num_gpus=e.num_gpus,
                                    max_restarts=2, get_if_exists=True).remote(e)
            for name in (embedder_name(run_id, i) for i in range(e.replicas))}


def stop_embedders(handles: dict[str, Any]) -> None:
    import ray

    for h in handles.values():
        ray.kill(h)


def _pool(run_id: str) -> list[Any]:
    import ray

    if not ray.is_initialized():
        return []
    handles = []
    for i in itertools.count():
        try:
            handles.append(ray.get_actor(embedder_name(run_id, i), namespace=RAY_NAMESPACE))
        except ValueError:
            return handles


def pool_embed(run_id: str | None) -> Embed:
    """``embed(texts)`` through the run's embedding actors (round robin), or in this process."""
    from hare.engines.embed import embed

    handles = _pool(run_id) if run_id else []
    if not handles:
        return embed
    turn = itertools.cycle(handles)

    def remote_embed(texts: Sequence[str]) -> np.ndarray:
        import ray

        if not texts:
            return embed([])
        return ray.get(next(turn).embed.remote(list(texts)))

    return remote_embed
