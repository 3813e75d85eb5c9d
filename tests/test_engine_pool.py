"""The engine pool without Ray: the work queue, how many engines start, GPU figures."""

from __future__ import annotations

import pytest

from hare.config import ModelConfig, load_config
from hare.engines.engine import CapacityError, check_capacity, engine_count
from hare.engines.gpu_monitor import GpuSample, GpuSampler, summarize, visible_gpu_indices
from hare.engines.pool import EngineQueue
from tests.conftest import write_run_config


class SimulatedEngines:
    """Handles are partition ids; a partition finishes after ``cost`` wait_any calls of its engine."""

    def __init__(self, cost: dict[str, int]) -> None:
        self.cost = cost
        self.started: dict[str, str] = {}
        self.remaining: dict[str, int] = {}

    def submit(self, pid: str, engine: str) -> str:
        self.started[pid] = engine
        self.remaining[pid] = self.cost.get(pid, 1)
        return pid

    def wait_any(self, handles: list[str]) -> str:
        """Advance time tick by tick; each engine works on its oldest handle (served in order)."""
        while True:
            active: dict[str, str] = {}
            for h in handles:
                active.setdefault(self.started[h], h)
            for h in active.values():
                self.remaining[h] -= 1
            finished = [h for h in active.values() if self.remaining[h] <= 0]
            if finished:
                return finished[0]


def test_each_partition_runs_exactly_once_on_more_partitions_than_engines() -> None:
    sim = SimulatedEngines({})
    pids = [f"p{i:05d}" for i in range(11)]
    done = list(EngineQueue(["e0", "e1", "e2"], slots=2).run(pids, sim.submit, sim.wait_any))
    assert sorted(d.partition_id for d in done) == pids
    assert len(sim.started) == 11
    assert set(sim.started.values()) == {"e0", "e1", "e2"}


def test_a_slow_partition_does_not_idle_the_other_engines() -> None:
    """p00000 takes longer than the ten others together: round-robin would have queued half of them behind it."""
    sim = SimulatedEngines({"p00000": 12})
    pids = [f"p{i:05d}" for i in range(11)]
    done = [d.partition_id for d in EngineQueue(["e0", "e1"], slots=1).run(pids, sim.submit, sim.wait_any)]
    assert sim.started["p00000"] == "e0"
    assert [p for p, e in sim.started.items() if e == "e0"] == ["p00000"]
    assert done[-1] == "p00000" and sorted(done) == pids


def test_slots_bound_partitions_in_flight_per_engine() -> None:
    in_flight: list[int] = []
    sim = SimulatedEngines({})
    queue = EngineQueue(["e0", "e1"], slots=2)

    def wait_any(handles: list[str]) -> str:
        in_flight.append(len(handles))
        assert max(queue.load.values()) <= 2
        return sim.wait_any(handles)

    list(queue.run([f"p{i}" for i in range(9)], sim.submit, wait_any))
    assert max(in_flight) == 4


def test_a_retired_engine_leaves_the_pool_and_its_partition_goes_to_another() -> None:
    sim = SimulatedEngines({})
    queue: EngineQueue[str] = EngineQueue(["e0", "e1"], slots=1)
    seen: list[tuple[str, str]] = []
    for done in queue.run(["p0", "p1", "p2", "p3"], sim.submit, sim.wait_any):
        if done.engine == "e1" and queue.retire("e1", done.partition_id):
            continue  # as the flow does for EngineGone
        seen.append((done.partition_id, done.engine))
    assert sorted(p for p, _ in seen) == ["p0", "p1", "p2", "p3"], "every partition served once"
    assert {e for _, e in seen} == {"e0"} and queue.retired == ["e1"]
    assert not queue.retire("e0", "p9"), "the last engine never leaves"


def test_queue_refuses_no_engines() -> None:
    with pytest.raises(ValueError, match="at least one engine"):
        EngineQueue([], slots=1)


@pytest.mark.parametrize(
    ("model", "resources", "expected"),
    [
        ({}, {"CPU": 2}, 1),
        ({"num_gpus": 1}, {"CPU": 16, "GPU": 8}, 8),
        ({"num_gpus": 2, "tensor_parallel_size": 2}, {"CPU": 16, "GPU": 8}, 4),
        ({"num_gpus": 1, "replicas": 3}, {"CPU": 16, "GPU": 8}, 3),
    ],
)
def test_engine_count_defaults_to_every_gpu(model: dict, resources: dict, expected: int) -> None:
    assert engine_count(ModelConfig(**model), resources) == expected


def test_capacity_errors_name_the_fields(tmp_path) -> None:
    cfg = load_config(write_run_config(tmp_path, model={"backend": "deterministic-fake", "num_gpus": 1, "replicas": 2}))
    with pytest.raises(CapacityError, match=r"2 engine\(s\) x model.num_gpus = 2.0 GPUs, the Ray cluster has 1"):
        check_capacity(cfg, {"CPU": 8, "GPU": 1})
    assert check_capacity(cfg, {"CPU": 8, "GPU": 2}) == 2


def test_tensor_parallel_needs_as_many_gpus() -> None:
    with pytest.raises(ValueError, match="num_gpus .* at least tensor_parallel_size"):
        ModelConfig(num_gpus=1, tensor_parallel_size=2)


def test_gpu_summary_figures() -> None:
    samples = [GpuSample(0, 1000.0), GpuSample(90, 2000.0), GpuSample(100, 3000.0), GpuSample(80, 2500.0)]
    s = summarize(samples, 81559.0, "NVIDIA H100 80GB HBM3")
    assert s["gpu_busy_fraction"] == 0.75 and s["gpu_util_mean"] == 67.5
    assert s["gpu_memory_used_max_mb"] == 3000.0 and s["gpu_samples"] == 4
    assert summarize([], 0.0, "") == {}


def test_visible_gpus_follow_cuda_visible_devices() -> None:
    assert visible_gpu_indices({"CUDA_VISIBLE_DEVICES": "2,3"}) == [2, 3]
    assert visible_gpu_indices({}) is None
    assert visible_gpu_indices({"CUDA_VISIBLE_DEVICES": "GPU-1a2b"}) is None


def _nvml_available() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(_nvml_available(), reason="a GPU machine: bench/gen_throughput.py records the figures")
def test_sampler_without_a_gpu_reports_nothing() -> None:
    with GpuSampler(interval_s=0.01) as sampler:
        pass
    assert sampler.summary() == {}
