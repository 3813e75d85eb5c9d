"""The paraphrase judge's pure parts (hare/stages/decontam/judge.py): prompt, guided regex, parser,
requests. No model: the judge's quality is measured by bench/decontam_judge.py."""

import re

import pytest

from hare.stages.decontam.judge import JUDGE_REGEX, MAX_WORDS, judge_prompt, judge_requests, parse_verdict


@pytest.mark.parametrize("output, verdict", [
    ("yes", True), ("Yes", True), ("YES.", True), (" yes\n", True), ("Yes, it is the same question.", True),
    ("no", False), (" no.", False), ("No", False), ("no!", False),
    ("maybe", None), ("", None), ("  ", None), ("nothing", None), ("yesterday", None), ("I think yes", None),
])
def test_parse_verdict(output: str, verdict: bool | None) -> None:
    assert parse_verdict(output) is verdict


def test_parse_verdict_of_none_is_none() -> None:
    assert parse_verdict(None) is None  # type: ignore[arg-type]  # a failed request's text


@pytest.mark.parametrize("text, ok", [
    ("yes", True), ("no", True),
    ("Yes", False), ("yes.", False), (" yes", False), ("yesno", False), ("maybe", False), ("", False), ("n", False),
])
def test_guided_regex_accepts_only_yes_or_no(text: str, ok: bool) -> None:
    # structured outputs match the whole output against the regex
    assert (re.fullmatch(JUDGE_REGEX, text) is not None) is ok


def test_every_output_the_regex_allows_parses() -> None:
    assert parse_verdict("yes") is True and parse_verdict("no") is False


def test_prompt_holds_both_texts_and_asks_for_yes_or_no() -> None:
    system, user = judge_prompt("Janet has sixteen duck eggs a day.", "Janet's ducks lay 16 eggs per day.")
    assert "yes or no" in system.lower() and "yes or no" in user.lower()
    assert "Janet has sixteen duck eggs a day." in user and "Janet's ducks lay 16 eggs per day." in user
    assert user.index("Janet's ducks") < user.index("Janet has sixteen")  # the item first, the question last
    assert user.rstrip().endswith("Answer yes or no.")


def test_prompt_clips_a_long_window() -> None:
    _, user = judge_prompt("word " * 5000, "short item")
    assert len(user.split()) < 2 * MAX_WORDS + 60 and "..." in user


def test_requests_are_batched_greedy_two_tokens_guided() -> None:
    pairs = [("text one", "item one"), ("text two", "item two"), ("text three", "item three")]
    reqs = judge_requests(pairs, seed=7)
    assert [r.prompt_index for r in reqs] == [0, 1, 2]
    for r, (window, item) in zip(reqs, pairs):
        assert (r.system, r.prompt) == judge_prompt(window, item)
        assert r.guided_regex == JUDGE_REGEX and r.seed == 7 and r.prefix == ""
        assert r.sampling is not None
        assert r.sampling.temperature == 0.0 and r.sampling.max_tokens == 2
        assert r.sampling.repetition_penalty == 1.0


def test_requests_of_no_pairs() -> None:
    assert judge_requests([], seed=0) == []
