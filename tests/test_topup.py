"""Top-up: the strata whose records the record stages removed are planned again, in bounded
rounds, committed like any partition and shown in the plan report and on the card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hare.config import load_config
from hare.tasks.plan import build_plan, top_up_rows
from tests.conftest import write_run_config
from tests.test_validate import SCRIPTED

AXES = {"audiences": ["a child"], "styles": ["a worked example"], "kinds": ["math_word_problem"]}


def test_top_up_rows_replan_each_removed_stratum_with_new_indices_and_seeds(tmp_path: Path) -> None:
    cfg = load_config(write_run_config(tmp_path, topics_doc=SCRIPTED, axes=AXES, diversity={"baseline_prompts": 0},
                                       plan={"partitions": 1, "prompts_per_partition": 2, "top_up_rounds": 1},
                                       validation={"enabled": True}))
    plan = build_plan(cfg).to_pylist()
    kept = {plan[0]["prompt_index"]}
    rows = top_up_rows(cfg, plan, kept, first_index=2, first_partition=1)
    removed = [r for r in plan if r["prompt_index"] not in kept]
    assert len(rows) == len(removed) == 1
    new, old = rows[0], removed[0]
    assert (new["topic_path"], new["audience"], new["style"], new["kind"]) == \
        (old["topic_path"], old["audience"], old["style"], old["kind"]), "the same stratum"
    assert new["prompt_index"] == 2 and new["partition_id"] == "p00001"
    assert new["seed"] != old["seed"], "a new sample of the stratum, not the same text again"
    assert new["prompt"] == old["prompt"], "self-consistency kinds get the problem-only prompt again"
    assert top_up_rows(cfg, plan, kept, 2, 1) == rows, "deterministic: a resume plans the same top-up"
    assert top_up_rows(cfg, plan, {r["prompt_index"] for r in plan}, 2, 1) == []


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_top_up_rounds_on_the_flow(tmp_path: Path) -> None:
    """Deterministic-fake backend, scripted answers: the split vote is rejected in every round, so
    each of the two bounded rounds plans exactly that stratum again; the card and plan report say so."""
    from hare.flows.synthesize import run_synthesize
    from hare.store import open_store

    cfg = write_run_config(tmp_path, topics_doc=SCRIPTED, axes=AXES, diversity={"baseline_prompts": 0},
                           plan={"partitions": 1, "prompts_per_partition": 3, "top_up_rounds": 2},
                           cleanup={"enabled": True}, validation={"enabled": True, "k": {"math_word_problem": 3}})
    result = run_synthesize(str(cfg))
    store = open_store(result["store"])
    run_id = result["run_id"]
    report = json.loads(store.get_bytes(f"runs/{run_id}/plan/report.json"))
    rounds = report["top_up"]
    assert [(r["round"], r["partitions"], r["planned"], r["generated"], r["kept"]) for r in rounds] == \
        [(1, ["p00001"], 1, 1, 0), (2, ["p00002"], 1, 1, 0)]
    assert rounds[0]["deficit"]["leaf"] == {"Mathematics > Arithmetic > Split": 1}
    assert result["partitions"] == 3 and result["records"] == 2
    card = store.get_bytes(f"runs/{run_id}/README.md").decode()
    assert "## Top-up rounds" in card and "| 2 | p00002 | 1 | 1 | 0 |" in card
    assert "## Answer validation" in card and "| math_word_problem | 5 | 15 | 2 |" in card
    rejects = store.get_bytes(f"runs/{run_id}/rejects/validate/p00002.parquet")
    assert rejects, "the top-up partition is committed with its own rejects like any partition"
    info = json.loads(store.get_bytes(f"runs/{run_id}/run.json"))
    assert info["partitions"][-2:] == ["p00001", "p00002"]
    generation = info["summary"]["generation"]
    assert [r["engine_starts"] for r in generation["top_up"]] == [1, 1], \
        "the engines loaded for the plan's partitions serve every top-up round: one start in the run"

