"""Diversity figures of a set of texts (pure functions; the stage is tasks/diversity.py).

- distinct-n: unique word n-grams / all word n-grams (lexical variety; falls with set size,
  so compare sets of equal size);
- mean pairwise cosine distance of normalized sentence embeddings (semantic spread);
- anchor entropy: each text goes to its nearest *anchor* (one embedding per taxonomy domain);
  the entropy of that distribution, divided by log(#anchors), is 0 when every text sits in one
  region of knowledge and 1 when the set covers all regions evenly. Fixed anchors make the
  figure comparable between the dataset and the baseline, unlike k-means on each set.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams: Counter = Counter()
    for t in texts:
        w = words(t)
        grams.update(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def mean_pairwise_cosine_distance(emb: np.ndarray) -> float:
    n = emb.shape[0]
    if n < 2:
        return 0.0
    s = emb.sum(axis=0)
    off_diagonal = float(s @ s) - float((emb * emb).sum())
    return 1.0 - off_diagonal / (n * (n - 1))


def anchor_entropy(emb: np.ndarray, anchors: np.ndarray) -> tuple[float, dict[int, int]]:
    """Normalized entropy of nearest-anchor assignments, and the counts per anchor."""
    if emb.shape[0] == 0 or anchors.shape[0] < 2:
        return 0.0, {}
    nearest = np.argmax(emb @ anchors.T, axis=1)
    counts = Counter(int(i) for i in nearest)
    n = emb.shape[0]
    h = -sum((c / n) * math.log(c / n) for c in counts.values())
    return h / math.log(anchors.shape[0]), dict(counts)


def figures(texts: Sequence[str], emb: np.ndarray, anchors: np.ndarray) -> dict[str, Any]:
    """All figures of one set of texts (``emb`` row i embeds ``texts[i]``)."""
    entropy, _ = anchor_entropy(emb, anchors)
    return {
        "texts": len(texts),
        "distinct_1": round(distinct_n(texts, 1), 4),
        "distinct_2": round(distinct_n(texts, 2), 4),
        "distinct_3": round(distinct_n(texts, 3), 4),
        "mean_pairwise_cosine_distance": round(mean_pairwise_cosine_distance(emb), 4),
        "anchor_entropy": round(entropy, 4),
    }


def shares(planned: Mapping[str, int], achieved: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """Planned vs achieved count and share for every value of one axis."""
    p_total = sum(planned.values()) or 1
    a_total = sum(achieved.values()) or 1
    return {
        v: {"planned": planned.get(v, 0), "achieved": achieved.get(v, 0),
            "planned_share": round(planned.get(v, 0) / p_total, 4),
            "achieved_share": round(achieved.get(v, 0) / a_total, 4)}
        for v in dict.fromkeys([*planned, *achieved])
    }
