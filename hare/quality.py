"""Quality rules: cheap, named, each with a score that is kept for every record.

Every rule reads a text (and its kind and finish reason) and gives scores; a record is rejected
by the first rule whose score crosses its threshold, and that rule's name is the reject reason.
Thresholds live in ``QualityConfig``; defaults follow Gopher's repetition filters (Rae et al.
2021) where they apply. Scores of kept records make the quality-consistency report.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from hare.config import QualityConfig
from hare.prompts import template_for

_WORD = re.compile(r"\S+")
_ALPHA = re.compile(r"[^\W\d_]", re.UNICODE)

SCORE_NAMES = (
    "words", "dup_line_frac", "dup_para_frac", "top_2gram_frac", "top_3gram_frac", "top_4gram_frac",
    "dup_5gram_frac", "dup_10gram_frac", "symbol_ratio", "non_alpha_frac", "english_prob",
)


@lru_cache(maxsize=1)
def _langid() -> Any:
    from langid.langid import LanguageIdentifier, model

    return LanguageIdentifier.from_modelstring(model, norm_probs=True)


def english_probability(text: str) -> float:
    lang, prob = _langid().classify(text)
    return float(prob) if lang == "en" else 1.0 - float(prob)


def _dup_frac(chunks: list[str]) -> float:
    """Characters in chunks that repeat an earlier chunk, over all characters (Gopher)."""
    chunks = [c.strip() for c in chunks if c.strip()]
    total = sum(len(c) for c in chunks)
    seen, dup = set(), 0
    for c in chunks:
        if c in seen:
            dup += len(c)
        seen.add(c)
    return dup / total if total else 0.0


def _top_ngram_frac(words: list[str], n: int) -> float:
    """Characters covered by the most frequent n-gram, over all word characters (Gopher)."""
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    if not grams:
        return 0.0
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    return count * sum(len(w) for w in gram) / max(1, sum(len(w) for w in words))


def _dup_ngram_frac(words: list[str], n: int) -> float:
    """Characters inside n-grams that occur more than once, over all word characters (Gopher)."""
    if len(words) < n:
        return 0.0
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        if grams[tuple(words[i:i + n])] > 1:
            for j in range(i, i + n):
                covered[j] = True
    total = sum(len(w) for w in words)
    return sum(len(w) for w, c in zip(words, covered) if c) / total if total else 0.0


def scores(text: str) -> dict[str, float]:
    words = _WORD.findall(text.lower())
    n = len(words)
    return {
        "words": float(n),
        "dup_line_frac": _dup_frac(text.split("\n")),
        "dup_para_frac": _dup_frac(re.split(r"\n\s*\n", text)),
        "top_2gram_frac": _top_ngram_frac(words, 2),
        "top_3gram_frac": _top_ngram_frac(words, 3),
        "top_4gram_frac": _top_ngram_frac(words, 4),
        "dup_5gram_frac": _dup_ngram_frac(words, 5),
        "dup_10gram_frac": _dup_ngram_frac(words, 10),
        "symbol_ratio": (text.count("#") + text.count("...") + text.count("\u2026")) / max(1, n),
        "non_alpha_frac": sum(1 for w in words if not _ALPHA.search(w)) / max(1, n),
        "english_prob": english_probability(text) if n else 0.0,
    }


@dataclass(frozen=True)
class Verdict:
    scores: dict[str, float]
    reason: str | None  # None: kept


def judge(text: str, kind: str, finish_reason: str, cfg: QualityConfig) -> Verdict:
    """Score a text and name the first rule it fails (None when it passes them all)."""
    s = scores(text)
    lower = text.lower()
    min_w = cfg.min_words.get(kind, cfg.min_words["default"])
    max_w = cfg.max_words.get(kind, cfg.max_words["default"])
    code_kind = kind == "code"
    checks: list[tuple[str, bool]] = [
        ("too_short", s["words"] < min_w),
        ("too_long", s["words"] > max_w),
        ("truncated", cfg.drop_truncated and finish_reason == "length"),
        ("refusal_or_boilerplate", any(p in lower for p in cfg.refusal_phrases)),
        ("not_english", s["english_prob"] < cfg.min_english_prob),
        ("duplicate_lines", s["dup_line_frac"] > cfg.max_dup_line_frac),
        ("duplicate_paragraphs", s["dup_para_frac"] > cfg.max_dup_para_frac),
        ("repeated_2gram", s["top_2gram_frac"] > cfg.max_top_2gram_frac),
        ("repeated_3gram", s["top_3gram_frac"] > cfg.max_top_3gram_frac),
        ("repeated_4gram", s["top_4gram_frac"] > cfg.max_top_4gram_frac),
        ("duplicate_5grams", s["dup_5gram_frac"] > cfg.max_dup_5gram_frac),
        ("duplicate_10grams", s["dup_10gram_frac"] > cfg.max_dup_10gram_frac),
        ("symbols", s["symbol_ratio"] > cfg.max_symbol_ratio and not code_kind),
        ("non_alphabetic", s["non_alpha_frac"] > cfg.max_non_alpha_frac and not code_kind),
        ("broken_formatting", text.count("```") % 2 == 1 or "\ufffd" in text),
    ]
    for name, failed in checks:
        if failed:
            return Verdict(s, name)
    tpl = _template(kind)
    if cfg.require_answer and tpl is not None and tpl.answer is not None and tpl.extract_answer(text) is None:
        return Verdict(s, "no_extractable_answer")
    return Verdict(s, None)


def _template(kind: str):
    try:
        return template_for(kind)
    except KeyError:
        return None
