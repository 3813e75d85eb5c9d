"""The generate stage's plain functions: results -> records and recorded rejects."""

from pathlib import Path

import pytest

from hare.backends.base import GenerationResult, output_problem
from hare.backends.fake import DeterministicFakeBackend
from hare.config import SamplingConfig, load_config
from hare.store.schema import RECORD_SCHEMA, REJECT_SCHEMA, record_id
from hare.tasks.generate import RecordContext, generation_stats, records_from_results, requests_from_plan
from hare.tasks.plan import build_plan
from tests.conftest import write_run_config

CTX = RecordContext("r", "p00000", "deterministic-fake", "m", "rev", {"temperature": 0.7})


def _plan(tmp_path: Path):
    return build_plan(load_config(write_run_config(tmp_path, plan={"partitions": 1, "prompts_per_partition": 3},
                                                  diversity={"baseline_prompts": 0})))


def test_bad_rows_become_rejects_with_reasons(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    idx = plan.column("prompt_index").to_pylist()
    results = [
        GenerationResult(idx[0], "A good text.", 10, 4, "stop"),
        GenerationResult(idx[1], "", 10, 0, "stop", error="empty_output"),
        # idx[2] has no result at all
    ]
    kept, rejects = records_from_results(plan, results, CTX)
    assert kept.schema == RECORD_SCHEMA and rejects.schema == REJECT_SCHEMA
    assert kept.column("text").to_pylist() == ["A good text."]
    assert kept.column("id").to_pylist() == [record_id("a  GOOD text.")]
    assert sorted(rejects.column("reject_reason").to_pylist()) == ["empty_output", "missing_result"]
    assert set(rejects.column("reject_stage").to_pylist()) == {"generate"}


def test_records_carry_lineage(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    results = DeterministicFakeBackend().generate(requests_from_plan(plan), SamplingConfig(max_tokens=4))
    kept, _ = records_from_results(plan, results, CTX)
    row = kept.to_pylist()[0]
    assert row["backend"] == "deterministic-fake" and row["model_revision"] == "rev"
    assert row["run_id"] == "r" and row["partition_id"] == "p00000"
    assert row["template_id"] == row["kind"]
    assert '"seed": %d' % plan.column("seed")[0].as_py() in row["sampling"]


def test_stats() -> None:
    res = [GenerationResult(0, "a", 5, 10, "stop"), GenerationResult(1, "b", 5, 30, "length")]
    s = generation_stats(res, 2.0)
    assert s["output_tokens"] == 40 and s["output_tokens_per_s"] == 20.0 and s["requests"] == 2


@pytest.mark.parametrize(("text", "problem"), [
    ("", "empty_output"), ("  \n ", "empty_output"), ("caf\ufffd au lait", "non_utf8_output"), ("A fine answer.", None)])
def test_output_problems_are_reject_reasons(text: str, problem: str | None) -> None:
    assert output_problem(text) == problem


def test_engine_restarts_of_every_call_of_a_partition_add_up() -> None:
    """A restart waited for in the problem call is not lost when the solve call follows."""
    from hare.tasks.generate import merged_call_figures

    merged = merged_call_figures({"engine_restarts": 1, "gpu_busy": 0.5}, {"gpu_busy": 0.7})
    assert merged == {"engine_restarts": 1, "gpu_busy": 0.7}
    assert merged_call_figures({"engine_restarts": 1}, {"engine_restarts": 2})["engine_restarts"] == 3
    assert "engine_restarts" not in merged_call_figures({}, {})
