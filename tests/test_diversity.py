"""Diversity figures order hand-made sets correctly (real all-MiniLM-L6-v2 embeddings)."""

import pyarrow as pa
import pytest

from hare.stages import diversity as div
from hare.config import load_config
from hare.engines.embed import embed
from hare.store.schema import RECORD_SCHEMA
from hare.tasks.diversity import diversity_report, domain_anchors
from hare.tasks.plan import build_plan, plan_report
from hare.priors.taxonomy import DEFAULT_TAXONOMY, load_taxonomy
from tests.conftest import write_run_config

NEAR_COPIES = [
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugars.",
    "Photosynthesis allows plants to turn sunlight, water and carbon dioxide into sugar.",
    "Through photosynthesis plants turn sunlight, water and carbon dioxide into sugar.",
    "Photosynthesis lets green plants turn sunlight, water and carbon dioxide into sugar.",
    "Photosynthesis lets plants change sunlight, water and carbon dioxide into sugar.",
]
VARIED = [
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "To add two fractions, rewrite them over a common denominator and add the numerators.",
    "A contract needs an offer, an acceptance and something of value exchanged.",
    "The Roman Republic became an empire when Augustus took power in 27 BC.",
    "Binary search halves a sorted list at every step to find an item quickly.",
    "Knead the dough for ten minutes, then let it rise until it doubles in size.",
]


@pytest.fixture(scope="module")
def anchors():
    _, texts = domain_anchors(load_taxonomy(DEFAULT_TAXONOMY))
    return embed(texts)


def test_near_copies_score_lower_than_varied_text(anchors) -> None:
    copies = div.figures(NEAR_COPIES, embed(NEAR_COPIES), anchors)
    varied = div.figures(VARIED, embed(VARIED), anchors)
    for name in ("distinct_1", "distinct_2", "distinct_3", "mean_pairwise_cosine_distance", "anchor_entropy"):
        assert copies[name] < varied[name], name
    assert copies["anchor_entropy"] == 0.0  # every copy sits at the same domain anchor


def test_metric_edges() -> None:
    assert div.distinct_n(["a b c", "a b c"], 1) == 0.5
    assert div.distinct_n([], 2) == 0.0
    same = embed(["x", "x"])
    assert div.mean_pairwise_cosine_distance(same) == pytest.approx(0.0, abs=1e-5)
    assert div.shares({"a": 3, "b": 1}, {"a": 1}) == {
        "a": {"planned": 3, "achieved": 1, "planned_share": 0.75, "achieved_share": 1.0},
        "b": {"planned": 1, "achieved": 0, "planned_share": 0.25, "achieved_share": 0.0},
    }


def test_report_compares_dataset_with_baseline(tmp_path) -> None:
    cfg = load_config(write_run_config(tmp_path, plan={"partitions": 1, "prompts_per_partition": 6}))
    plan = build_plan(cfg)
    rows = [r for r in plan.to_pylist() if r["kind"] != "baseline"]
    base = {f: "" for f in RECORD_SCHEMA.names}

    def table(texts, plan_rows):
        return pa.Table.from_pylist(
            [{**base, "created_at": None, "prompt_tokens": 0, "output_tokens": 0, "template_version": 1,
              "prompt_index": i, "text": t, "topic_path": r.get("topic_path", ""), "audience": r.get("audience", ""),
              "style": r.get("style", ""), "kind": r.get("kind", "")} for i, (t, r) in enumerate(zip(texts, plan_rows))],
            schema=RECORD_SCHEMA)

    report = diversity_report(cfg, table(VARIED, rows), table(NEAR_COPIES, [{}] * 6), plan_report(cfg, plan), embed)
    figs = report["figures"]
    assert figs["dataset_at_baseline_size"]["texts"] == figs["baseline"]["texts"] == 6
    assert figs["dataset_at_baseline_size"]["mean_pairwise_cosine_distance"] > figs["baseline"]["mean_pairwise_cosine_distance"]
    kinds = report["coverage"]["kinds"]
    assert sum(v["achieved"] for v in kinds.values()) == 6
    assert all(v["achieved"] == v["planned"] for v in kinds.values())
