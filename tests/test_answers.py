"""Final answers normalised so agreeing samples count as one answer; the vote's rules."""

from __future__ import annotations

import pytest

from hare.stages.validate.answers import normalize_answer, problem_text, vote


@pytest.mark.parametrize(("raw", "kind", "normal"), [
    ("1,200", "number", "1200"), ("1200.0", "number", "1200"), ("$18.50", "number", "18.5"),
    ("-0.0", "number", "0"), ("twelve", "number", None), (None, "number", None),
    ("Cal.", "text", "cal"), ("**Cal**", "text", "cal"), ("The answer is Cal", "text", "cal"),
    ("the red house", "text", "red house"), ("...", "text", None),
])
def test_normalize_answer(raw: str | None, kind: str, normal: str | None) -> None:
    assert normalize_answer(raw, kind) == normal


def test_vote_keeps_a_majority_that_holds_its_share() -> None:
    v = vote(["4", "4", "5"], min_share=0.6)
    assert v.reason is None and v.majority == "4" and v.counts == {"4": 2, "5": 1}
    assert v.as_json() == {"answers": ["4", "4", "5"], "counts": {"4": 2, "5": 1}, "majority": "4",
                           "share": 0.6667, "samples": 3}


def test_vote_rejects_splits_ties_and_no_answers() -> None:
    assert vote(["4", "5", "6"], 0.6).reason == "no_majority"            # three different answers: a tie
    assert vote(["4", "4", "5", "5", "6"], 0.6).reason == "no_majority"  # two answers tie for the most votes
    assert vote(["4", "4", "5", "6", "7"], 0.6).reason == "answer_disagreement"  # 2 of 5 < 0.6
    assert vote(["4", None, None], 0.6).reason == "answer_disagreement"  # samples without an answer count against
    assert vote([None, None, None], 0.6).reason == "no_answer"
    assert vote(["4", "4", None], 0.6).reason is None


def test_problem_text_drops_a_solution_written_anyway() -> None:
    assert problem_text("Tom has 3 bags of 4 apples. How many apples?\n\nSolution: 3 x 4 = 12\nFinal answer: 12") == \
        "Tom has 3 bags of 4 apples. How many apples?"
    assert problem_text("Ann, Ben and Cal each own a pet. Who owns the cat?") == \
        "Ann, Ben and Cal each own a pet. Who owns the cat?"


def test_answers_are_size_checked_before_they_are_parsed() -> None:
    """A number with a huge exponent would print a billion digits; a long answer is no answer."""
    assert normalize_answer("1e999999999", "number") is None
    assert normalize_answer("1e5", "number") == "100000"
    assert normalize_answer("7" * 201, "number") is None
    assert normalize_answer("a " * 150, "text") is None
