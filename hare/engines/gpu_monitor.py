"""GPU utilization and memory sampled with NVML while an engine generates a partition.

Why sample instead of reading once: utilization is a moving figure, and the question users ask
("was the GPU busy the whole time?") needs the fraction of the generation window in which the
GPU was working. A background thread reads NVML every ``interval_s`` for the GPUs this process
was given (``CUDA_VISIBLE_DEVICES``, which Ray sets for an actor with ``num_gpus``), and the
summary lands in the partition manifest. Without a GPU or without NVML the summary is empty:
the same code runs on a laptop.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

BUSY_UTILIZATION = 5  # percent: NVML reports >0 when any kernel ran in the sample period


@dataclass(frozen=True)
class GpuSample:
    utilization: int  # percent of the sample period a kernel was running (NVML)
    memory_used_mb: float


def summarize(samples: list[GpuSample], memory_total_mb: float, name: str) -> dict[str, Any]:
    """Manifest figures from samples of one GPU (or several, pooled)."""
    if not samples:
        return {}
    utils = [s.utilization for s in samples]
    return {
        "gpu_name": name,
        "gpu_samples": len(samples),
        "gpu_util_mean": round(sum(utils) / len(utils), 1),
        "gpu_busy_fraction": round(sum(u >= BUSY_UTILIZATION for u in utils) / len(utils), 3),
        "gpu_memory_used_max_mb": round(max(s.memory_used_mb for s in samples), 1),
        "gpu_memory_total_mb": round(memory_total_mb, 1),
    }


def visible_gpu_indices(env: dict[str, str] | None = None) -> list[int] | None:
    """NVML indices of the GPUs this process may use; None means all of them."""
    value = (env if env is not None else os.environ).get("CUDA_VISIBLE_DEVICES")
    if value is None or value.strip() == "":
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:  # UUIDs (MIG): fall back to every device NVML sees
        return None


@dataclass
class GpuSampler:
    """Context manager: ``with GpuSampler() as s: generate()``, then ``s.summary()``.

    ``enabled=False`` samples nothing (an empty summary): for an engine that holds no GPU, such
    as an OpenAI-compatible client on a node where a GPU serves someone else (``vllm serve`` on
    the same box). NVML would report that GPU's figures, which are not this engine's, and Ray
    (by default) leaves ``CUDA_VISIBLE_DEVICES`` unset for an actor without GPUs, so every GPU
    of the node would count."""

    interval_s: float = 0.2
    enabled: bool = True
    _samples: list[GpuSample] = field(default_factory=list)
    _handles: list[Any] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _name: str = ""
    _total_mb: float = 0.0

    def __enter__(self) -> "GpuSampler":
        if not self.enabled:
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            indices = visible_gpu_indices()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in (indices or range(count)) if i < count]
        except Exception:  # noqa: BLE001 - no driver, no GPU, no NVML: nothing to sample
            self._handles = []
        if self._handles:
            import pynvml

            name = pynvml.nvmlDeviceGetName(self._handles[0])
            self._name = name.decode() if isinstance(name, bytes) else str(name)
            self._total_mb = sum(pynvml.nvmlDeviceGetMemoryInfo(h).total for h in self._handles) / 2**20
            self._thread = threading.Thread(target=self._sample_loop, name="hare-gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def _sample_loop(self) -> None:
        import pynvml

        while not self._stop.is_set():
            utils = [pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles]
            used = sum(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in self._handles) / 2**20
            self._samples.append(GpuSample(round(sum(utils) / len(utils)), used))
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        return summarize(self._samples, self._total_mb, self._name)
