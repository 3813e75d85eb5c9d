"""An LLM judge for paraphrase candidates between two similarity thresholds (issue 28).

The anchor is LMSYS's llm-decontaminator (Yang et al. 2023, "Rethinking Benchmark and
Contamination for Language Models with Rephrased Samples"): retrieve the top benchmark items of
a text by embeddings, then ask an LLM whether the text is a rephrase of the item. Here the judge
would only see the uncertain band: a window whose MiniLM cosine to an item is above a low
threshold (below it, nothing is a leak) and below a high one (above it, the cosine alone decides).

Pure functions, no engine: the prompt, the structured-output regex, the parser and the requests
the run's own engines serve (hare.backends.base.GenerationRequest), so the judge's tokens are
ordinary generation tokens, counted where every other request is counted. Whether the judge is
worth its tokens is measured, not assumed: bench/decontam_judge.py.
"""

from __future__ import annotations

import re
from typing import Iterable

from hare.backends.base import GenerationRequest
from hare.config import SamplingConfig

# vLLM structured outputs: the whole output must be one of the two words, so a small model cannot
# answer "Sure! The text..." and every output parses. Lower case: the prompt asks for it, and a
# grammar with both cases would let the model's capitalisation habit split its probability mass.
JUDGE_REGEX = r"(yes|no)"

# Words of the text window and of the item shown to the judge: a window is item-sized (a few
# sentences), and a cap keeps one pathological window (a list, code) from costing a long prompt.
MAX_WORDS = 160

SYSTEM = "You check whether a text copies a test question. Answer with one word: yes or no."

_VERDICT = re.compile(r"\s*(yes|no)\b", re.IGNORECASE)


def _clip(text: str, words: int = MAX_WORDS) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def judge_prompt(text_window: str, item: str) -> tuple[str, str]:
    """(system, user) turns asking whether ``text_window`` restates ``item``.

    Short on purpose: the judge runs on every candidate in the band, so its prompt is most of its
    cost (the output is one token), and a 135M model follows a short plain instruction better
    than a long rubric. The question names what counts (the same question or the same fact, in
    other words or with other names) and what does not (the same topic), since the hard
    negatives the judge must reject share the item's topic. The item comes first and the
    question last, nearest the answer."""
    user = (f"Test question:\n{_clip(item)}\n\n"
            f"Text:\n{_clip(text_window)}\n\n"
            "Does the text ask the same question or state the same fact as the test question, "
            "even if reworded? Only the same topic is not enough. Answer yes or no.")
    return SYSTEM, user


def parse_verdict(output: str) -> bool | None:
    """True for "yes", False for "no" (any case, surrounding spaces and punctuation allowed, as
    an unguided endpoint may write "Yes." or " no"); None for anything else ("maybe", "",
    "nothing"): an unparsable verdict is not a "no", and the caller decides what it means."""
    m = _VERDICT.match(output or "")
    if m is None:
        return None
    return m.group(1).lower() == "yes"


def judge_requests(pairs: Iterable[tuple[str, str]], seed: int) -> list[GenerationRequest]:
    """One request per (text window, benchmark item) pair, numbered in order, for one batched
    engine call. Greedy (temperature 0): a verdict is a decision, not a sample, so the same pair
    gets the same verdict on every run; ``max_tokens`` 2 is room for the one word (the guided
    regex ends it) and nothing else; no repetition penalty (nothing to repeat)."""
    sampling = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=2, repetition_penalty=1.0)
    out = []
    for i, (window, item) in enumerate(pairs):
        system, user = judge_prompt(window, item)
        out.append(GenerationRequest(i, system, user, seed, sampling=sampling, guided_regex=JUDGE_REGEX))
    return out
