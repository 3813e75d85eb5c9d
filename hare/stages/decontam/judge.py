"""An LLM judge for paraphrase candidates between two similarity thresholds (issue 28).

The anchor is LMSYS's llm-decontaminator (Yang et al. 2023, "Rethinking Benchmark and
Contamination for Language Models with Rephrased Samples"): retrieve the top benchmark items of
a text by embeddings, then ask an LLM whether the text is a rephrase of the item. Here the judge
would only see the uncertain band: a window whose MiniLM cosine to an item is above a low
threshold (below it, nothing is a leak) and below a high one (above it, the cosine alone decides).

No engine here: the prompt, the structured-output regex, the parser, the requests the run's own
engines serve (hare.backends.base.GenerationRequest) and :class:`Judge`, which sends a batch of
pairs through any ``generate`` callable and counts what it cost. The run binds it to its engines
(tasks/decontam.py); bench/decontam_judge.py to an engine of its own. Whether the judge is worth
its tokens is measured, not assumed: bench/decontam_judge.py.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Iterable, Sequence

from hare.backends.base import GenerationRequest, GenerationResult
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


Generate = Callable[[list[GenerationRequest]], list[GenerationResult]]


class Judge:
    """Verdicts on (text window, benchmark item) pairs from one batched ``generate`` call, and
    what they cost (pairs, yes, no, unanswered, prompt and output tokens, seconds) since the last
    :meth:`take_figures`: the stage reports them per partition, the card and the estimate count them.
    A request the engine could not serve (an error result, or output that is neither yes nor
    no) is unanswered (None): the caller falls back to the similarity, never fails the batch."""

    FIGURES = ("pairs", "yes", "no", "unanswered", "prompt_tokens", "output_tokens")

    def __init__(self, generate: Generate, seed: int = 0) -> None:
        self.generate, self.seed = generate, seed
        self._figures: dict[str, float] = dict.fromkeys(self.FIGURES, 0)
        self._figures["seconds"] = 0.0

    def verdicts(self, pairs: Sequence[tuple[str, str]]) -> list[bool | None]:
        if not pairs:
            return []
        started = time.perf_counter()
        results = self.generate(judge_requests(pairs, self.seed))
        by_index = {r.prompt_index: r for r in results}
        answered = [by_index.get(i) for i in range(len(pairs))]  # a missing result is unanswered
        out = [None if r is None or r.error else parse_verdict(r.text) for r in answered]
        f = self._figures
        f["seconds"] += time.perf_counter() - started
        f["pairs"] += len(pairs)
        f["yes"] += sum(v is True for v in out)
        f["no"] += sum(v is False for v in out)
        f["unanswered"] += sum(v is None for v in out)
        f["prompt_tokens"] += sum(r.prompt_tokens for r in results)
        f["output_tokens"] += sum(r.output_tokens for r in results)
        return out

    def take_figures(self) -> dict[str, Any]:
        """The figures since the last call (ints, seconds rounded), and start counting again."""
        out = {k: int(v) for k, v in self._figures.items() if k != "seconds"}
        out["seconds"] = round(self._figures["seconds"], 3)
        self._figures = dict.fromkeys(self.FIGURES, 0)
        self._figures["seconds"] = 0.0
        return out
