"""Final answers made comparable, and the self-consistency vote over them.

Why a module of its own: the vote is only as good as the normal form it counts. "1,200",
"1200.0" and "$1200" are one number; "Cal.", "cal" and "The answer is Cal" are one name; a
vote that told them apart would reject agreeing samples as a split. The extractor itself lives
beside each prompt template (hare/priors/prompts.py); this module normalises what it extracted and
decides the vote (Wang et al. 2022, self-consistency: the most common final answer wins).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

# Bounds checked before an answer is parsed: a final answer is a number or a few words; a longer
# one (or a number with a huge exponent) is no answer, never a parse that eats the worker.
MAX_ANSWER_CHARS = 200
MAX_EXPONENT = 100
_ARTICLES = re.compile(r"^(?:the answer is|answer|it is|it's|the|a|an)\s+", re.I)
_PUNCT = re.compile(r"[^\w\s.-]+")
_WS = re.compile(r"\s+")
# Where a "write only the problem" output starts solving anyway: everything from here is cut.
_SOLUTION_START = re.compile(r"(?im)^\W*(?:solution|answer|final answer|step 1|let'?s solve|to solve|we can solve)\b")


def normalize_answer(value: str | None, kind: str) -> str | None:
    """The comparable form of an extracted answer (``kind``: the template's answer type), or None
    when nothing usable is left. Numbers: commas, currency and trailing zeros dropped, so
    ``1,200.0`` == ``1200``. Text: lowercase, punctuation and leading articles dropped."""
    if value is None or len(value) > MAX_ANSWER_CHARS:
        return None
    text = value.strip()
    if kind == "number":
        text = text.replace(",", "").replace("$", "").strip()
        try:
            number = Decimal(text)
        except InvalidOperation:
            return None
        if not number.is_finite() or abs(number.adjusted()) > MAX_EXPONENT:
            return None  # "1e999999999" would print a billion digits
        out = format(number.normalize(), "f")
        return "0" if out in ("-0", "") else out
    text = _PUNCT.sub(" ", text.lower())
    text = _WS.sub(" ", text).strip(" .-")
    while True:
        stripped = _ARTICLES.sub("", text)
        if stripped == text:
            break
        text = stripped
    return text or None


@dataclass(frozen=True)
class Vote:
    """The outcome of one prompt's vote: what each sample answered and what won."""

    answers: list[str | None]      # per sample, normalised (None: no extractable answer)
    counts: dict[str, int]         # answer -> votes, most common first
    majority: str | None           # the most common answer (None: no sample had one)
    share: float                   # the majority's votes / all samples
    reason: str | None             # None: kept; else the reject reason

    def as_json(self) -> dict[str, Any]:
        return {"answers": self.answers, "counts": self.counts, "majority": self.majority,
                "share": round(self.share, 4), "samples": len(self.answers)}


def vote(answers: list[str | None], min_share: float) -> Vote:
    """Decide a prompt's vote over its samples' normalised answers.

    Kept when the most common answer holds at least ``min_share`` of ALL samples (a sample
    without an answer counts against the majority: it is a sample that did not agree). Reject
    reasons: ``no_answer`` (no sample had an extractable answer), ``no_majority`` (two answers
    tie for the most votes), ``answer_disagreement`` (a majority, but below ``min_share``)."""
    if not answers:
        raise ValueError("vote: no samples")
    counts = Counter(a for a in answers if a is not None)
    ranked = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if not counts:
        return Vote(answers, {}, None, 0.0, "no_answer")
    top = list(ranked.items())
    majority, votes = top[0]
    share = votes / len(answers)
    if len(top) > 1 and top[1][1] == votes:
        return Vote(answers, ranked, None, share, "no_majority")
    return Vote(answers, ranked, majority, share, None if share >= min_share - 1e-9 else "answer_disagreement")


def problem_text(raw: str) -> str:
    """A written problem without the solution a model may have added anyway (the solve step
    must see only the problem, or every sample would copy that solution's answer)."""
    match = _SOLUTION_START.search(raw)
    text = raw[:match.start()] if match else raw
    return text.strip()
