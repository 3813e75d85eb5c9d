"""Coverage of the taxonomy by a corpus, and synthesis aimed at its gaps (hare/stages/coverage.py).

Fast and model-free: the vectors are built by hand (unit vectors along axes, or between two), so
which leaf is nearest, and by how much, is known exactly.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from hare.priors.taxonomy import Leaf
from hare.stages.coverage import (assign_leaves, by_domain, card_section, coverage_allocation, coverage_counts,
                                  coverage_report, leaf_text)

LEAVES = [
    Leaf("Mathematics", "Arithmetic", "Fractions", "adding and comparing fractions"),
    Leaf("Mathematics", "Arithmetic", "Percentages", ""),
    Leaf("Mathematics", "Geometry", "Triangles", "angles and areas"),
    Leaf("Biology", "Cells", "Mitosis", "how a cell divides"),
    Leaf("Biology", "Ecology", "Food webs", "who eats whom"),
    Leaf("History", "Ancient", "Rome", "the republic and the empire"),
]
PATHS = [leaf.path for leaf in LEAVES]


def unit(*weights: float) -> np.ndarray:
    v = np.zeros(len(LEAVES), dtype=np.float32)
    v[: len(weights)] = weights
    return v / np.linalg.norm(v)


def greedy(levels: list[float], total: int) -> list[int]:
    """The allocation rule as the docstring states it: one prompt at a time to the lowest level."""
    given = [0] * len(levels)
    for _ in range(total):
        i = min(range(len(levels)), key=lambda j: (levels[j] + given[j], j))
        given[i] += 1
    return given


def test_leaf_text_names_the_path_and_what_the_topic_holds() -> None:
    assert leaf_text(LEAVES[0]) == "Mathematics > Arithmetic > Fractions: adding and comparing fractions"
    assert leaf_text(LEAVES[1]) == "Mathematics > Arithmetic > Percentages"  # no description: the path alone


def test_each_document_goes_to_its_nearest_leaf_by_cosine() -> None:
    leaf_vectors = np.eye(len(LEAVES), dtype=np.float32)
    docs = np.stack([unit(1), unit(0, 0, 0, 1), unit(0.2, 0.9), unit(0, 0, 0, 0, 0, 1)])
    assert assign_leaves(docs, leaf_vectors, min_similarity=0.5).tolist() == [0, 3, 1, 5]


def test_a_document_near_no_leaf_covers_none() -> None:
    """Cosine 1/sqrt(2) ~ 0.707 to its best leaf: kept at threshold 0.7, dropped at 0.75; a vector
    orthogonal to every leaf (an extra dimension) is dropped at any positive threshold."""
    leaf_vectors = np.eye(len(LEAVES), 7, dtype=np.float32)
    between = np.zeros(7, dtype=np.float32)
    between[[2, 4]] = 1 / np.sqrt(2)
    off_topic = np.zeros(7, dtype=np.float32)
    off_topic[6] = 1.0
    docs = np.stack([between, off_topic])
    assert assign_leaves(docs, leaf_vectors, min_similarity=0.7).tolist() == [2, -1]  # tie: lower index
    assert assign_leaves(docs, leaf_vectors, min_similarity=0.75).tolist() == [-1, -1]


def test_assign_edge_cases() -> None:
    assert assign_leaves(np.empty((0, 4)), np.eye(4), 0.3).tolist() == []
    assert assign_leaves(np.eye(2), np.empty((0, 2)), 0.3).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="dimension"):
        assign_leaves(np.eye(3), np.eye(4), 0.3)


def test_counts_keep_every_leaf_and_sum_per_domain() -> None:
    counts = coverage_counts(np.array([0, 0, 3, -1, 5, 0]), LEAVES)
    assert list(counts) == PATHS  # every leaf, in leaf order
    assert counts == dict(zip(PATHS, [3, 0, 0, 1, 0, 1]))
    assert by_domain(counts) == {"Mathematics": 3, "Biology": 1, "History": 1}
    with pytest.raises(ValueError, match="out of range"):
        coverage_counts([6], LEAVES)


def test_allocation_sums_to_total_and_favours_the_uncovered() -> None:
    covered = dict(zip(PATHS, [10, 0, 3, 0, 1, 50]))
    plan = coverage_allocation(LEAVES, covered, 20)
    assert sum(plan.values()) == 20 and list(plan) == PATHS
    # levels 10, 0, 3, 0, 1, 50: the water rises to 6 (0->6, 0->6, 1->6, 3->6 takes 5+6+6+3 = 20)
    assert plan == dict(zip(PATHS, [0, 6, 3, 6, 5, 0]))
    assert plan[PATHS[5]] == 0 and plan[PATHS[0]] == 0  # covered above the level: nothing
    assert plan[PATHS[1]] == plan[PATHS[3]] == max(plan.values())  # the uncovered get the most


def test_a_heavily_covered_leaf_gets_nothing_even_from_a_large_plan() -> None:
    covered = {PATHS[2]: 10_000}
    plan = coverage_allocation(LEAVES, covered, 5_000)
    assert plan[PATHS[2]] == 0 and sum(plan.values()) == 5_000
    assert sorted(plan[p] for p in PATHS if p != PATHS[2]) == [1000] * 5
    assert coverage_allocation(LEAVES, covered, 5_000, corpus_weight=0.0)[PATHS[2]] == 5_000 // 6  # weight 0: even


def test_fewer_prompts_than_leaves_go_to_the_least_covered_in_leaf_order() -> None:
    covered = dict(zip(PATHS, [2, 0, 1, 0, 0, 1]))
    assert coverage_allocation(LEAVES, covered, 3) == dict(zip(PATHS, [0, 1, 0, 1, 1, 0]))  # the uncovered
    assert coverage_allocation(LEAVES, covered, 2) == dict(zip(PATHS, [0, 1, 0, 1, 0, 0]))  # tie: leaf order
    # the fourth: every leaf but the first is now at level 1, and the earliest of them wins
    assert coverage_allocation(LEAVES, covered, 4) == dict(zip(PATHS, [0, 2, 0, 1, 1, 0]))
    assert coverage_allocation(LEAVES, covered, 0) == dict.fromkeys(PATHS, 0)


@pytest.mark.parametrize("weight", [1.0, 0.5, 0.25, 3.0])
def test_allocation_is_the_one_at_a_time_rule_and_deterministic(weight: float) -> None:
    """The fast water level agrees with the rule as stated, for random coverage, weights and totals."""
    rng = random.Random(7)
    for _ in range(60):
        covered = {p: rng.choice([0, 0, 1, 2, 5, 40]) for p in PATHS}
        total = rng.randrange(0, 90)
        plan = coverage_allocation(LEAVES, covered, total, corpus_weight=weight)
        assert list(plan.values()) == greedy([covered[p] * weight for p in PATHS], total), (covered, total)
        assert plan == coverage_allocation(LEAVES, dict(covered), total, corpus_weight=weight)


def test_allocation_guards() -> None:
    with pytest.raises(ValueError, match="not taxonomy leaves"):
        coverage_allocation(LEAVES, {"Nowhere > At > All": 3}, 10)
    with pytest.raises(ValueError, match="total"):
        coverage_allocation(LEAVES, {}, -1)
    with pytest.raises(ValueError, match="corpus_weight"):
        coverage_allocation(LEAVES, {}, 5, corpus_weight=-1.0)
    with pytest.raises(ValueError, match="no leaves"):
        coverage_allocation([], {}, 5)
    assert coverage_allocation([], {}, 0) == {}


def test_report_before_and_after_per_domain_and_the_card() -> None:
    covered = dict(zip(PATHS, [4, 0, 0, 2, 0, 0]))
    planned = dict(zip(PATHS, [0, 3, 0, 1, 2, 0]))
    report = coverage_report(LEAVES, covered, planned, unmatched=5)
    assert report["domains"] == {
        "Mathematics": {"corpus": 4, "synthesized": 3, "after": 7},
        "Biology": {"corpus": 2, "synthesized": 3, "after": 5},
        "History": {"corpus": 0, "synthesized": 0, "after": 0},
    }
    assert report["totals"] == {"corpus": 6, "synthesized": 6, "after": 12, "unmatched": 5, "leaves": 6}
    assert report["uncovered_before"] == [PATHS[1], PATHS[2], PATHS[4], PATHS[5]]
    assert report["uncovered_after"] == [PATHS[2], PATHS[5]]
    card = card_section(report)
    assert card[:2] == ["| domain | corpus (before) | synthesized | after |", "|---|---:|---:|---:|"]
    assert "| Biology | 2 | 3 | 5 |" in card and "| **total** | 6 | 6 | 12 |" in card
    assert "4 of 6 before synthesis, 2 after" in card[-1] and PATHS[5] in card[-1] and "5 sampled" in card[-1]


def test_the_plan_fills_the_gaps_end_to_end() -> None:
    """Assign, count, allocate, report: after synthesis no leaf is empty when there are prompts
    for all, and the leaves the corpus covered above the water level get none."""
    leaf_vectors = np.eye(len(LEAVES), dtype=np.float32)
    docs = np.stack([unit(1)] * 8 + [unit(0, 0, 1)] * 4 + [unit(0, 0, 0, 1)])
    covered = coverage_counts(assign_leaves(docs, leaf_vectors, 0.5), LEAVES)
    planned = coverage_allocation(LEAVES, covered, 12)
    report = coverage_report(LEAVES, covered, planned)
    assert report["uncovered_before"] == [PATHS[1], PATHS[4], PATHS[5]] and report["uncovered_after"] == []
    # levels 8, 0, 4, 1, 0, 0 and 12 prompts: the water stops near 3.25
    assert planned == dict(zip(PATHS, [0, 4, 0, 2, 3, 3]))
