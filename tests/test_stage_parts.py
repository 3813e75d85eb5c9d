"""Small parts of the streamed stages: the mergeable score sketch, batch splitting, stage order."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hare import sketch
from hare.backends.base import GenerationRequest, GenerationResult
from hare.backends.vllm_backend import split_on_failure


def test_merged_sketches_give_the_percentiles_of_all_values_within_the_accuracy() -> None:
    rng = random.Random(0)
    values = [rng.lognormvariate(0, 1) for _ in range(20_000)] + [0.0] * 500
    parts = [values[i:i + 997] for i in range(0, len(values), 997)]  # partitions of uneven size
    merged = sketch.merge(sketch.sketch(p) for p in parts)
    assert sketch.count(merged) == len(values)
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        exact = float(np.quantile(values, q, method="lower"))
        assert abs(sketch.quantile(merged, q) - exact) <= sketch.ACCURACY * exact + 1e-12
    assert sketch.quantile(merged, 0.01) == 0.0, "zeros land in their own bucket"
    assert len(merged) < 1000, "bounded by the value range, not by the number of values"
    assert sketch.spread({}) == {} and np.isnan(sketch.quantile({}, 0.5))


def test_a_failed_batch_is_split_in_halves_until_the_bad_request_is_isolated() -> None:
    items = [(GenerationRequest(i, "", f"prompt {i}", i), [1, 2, 3]) for i in range(16)]
    calls: list[int] = []

    def run(batch):  # noqa: ANN001, ANN202 - vLLM fails the whole batch when one request is bad
        calls.append(len(batch))
        if any(r.prompt_index == 11 for r, _ in batch):
            raise RuntimeError("bad request in the batch")
        return [f"out {r.prompt_index}" for r, _ in batch]

    rejects: dict[int, GenerationResult] = {}
    pairs = split_on_failure(items, run, rejects)
    assert [r.prompt_index for (r, _), _ in pairs] == [i for i in range(16) if i != 11]
    assert list(rejects) == [11] and rejects[11].error.startswith("engine_error: bad request")
    assert len(calls) <= 1 + 2 * 4, "about log2(n) extra calls, not one per request"
    assert calls[0] == 16 and max(calls[1:]) == 8


@pytest.mark.parametrize("quality,benchmarks,dedup,expected", [
    (True, True, True, ["generate", "quality", "decontam", "features", "dedup"]),
    (False, False, True, ["generate", "features", "dedup"]),
    (True, False, False, ["generate", "quality"]),
])
def test_one_ordered_list_of_stages(quality: bool, benchmarks: bool, dedup: bool, expected: list[str]) -> None:
    from hare.config import RunConfig
    from hare.tasks.stages import records_source, stage_names

    cfg = RunConfig.model_validate({
        "name": "t", "plan": {"partitions": 1, "prompts_per_partition": 1}, "quality": {"enabled": quality},
        "dedup": {"enabled": dedup},
        "decontamination": {"benchmarks": [{"name": "g", "source": "data/benchmarks/gsm8k_test.jsonl"}]
                            if benchmarks else []}})
    assert stage_names(cfg) == expected
    if dedup:  # features produces no records: dedup reads what the stage before features kept
        assert records_source(cfg, "dedup") == expected[-3]
        assert records_source(cfg, "publish") == "dedup"
    else:
        assert records_source(cfg, "publish") == expected[-1]
