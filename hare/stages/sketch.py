"""A mergeable quantile sketch for non-negative scores (DDSketch-style log buckets).

Why: a run's quality report must come from per-partition aggregates, not from every record
in one process. Each partition's manifest keeps one small sketch per score; the run report
adds the bucket counts and reads percentiles off the merged sketch, within ``ACCURACY``
relative error, whatever the number of records. The size is bounded by the value range
(about 700 buckets for 1e-6..1, a few hundred more for word counts), not by the records.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

ACCURACY = 0.01                      # relative error of a quantile
_GAMMA = (1 + ACCURACY) / (1 - ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
_ZERO = 1e-9                         # values at or below this land in the zero bucket "z"

Sketch = dict[str, int]              # bucket key -> count; JSON-friendly (string keys)


def sketch(values: Iterable[float]) -> Sketch:
    """The sketch of some values (negative values count as zero)."""
    out: Sketch = {}
    for v in values:
        key = "z" if v <= _ZERO else str(math.ceil(math.log(v) / _LOG_GAMMA))
        out[key] = out.get(key, 0) + 1
    return out


def merge(sketches: Iterable[Sketch]) -> Sketch:
    out: Sketch = {}
    for s in sketches:
        for k, n in s.items():
            out[k] = out.get(k, 0) + n
    return out


def count(s: Sketch) -> int:
    return sum(s.values())


def quantile(s: Sketch, q: float) -> float:
    """The value at quantile ``q`` (0..1), within ACCURACY; nan for an empty sketch."""
    total = count(s)
    if not total:
        return float("nan")
    rank = q * (total - 1)
    keys = sorted(s, key=lambda k: -math.inf if k == "z" else int(k))
    seen = 0
    for k in keys:
        seen += s[k]
        if seen > rank:
            return 0.0 if k == "z" else 2 * _GAMMA ** int(k) / (_GAMMA + 1)
    k = keys[-1]
    return 0.0 if k == "z" else 2 * _GAMMA ** int(k) / (_GAMMA + 1)


def spread(s: Sketch) -> dict[str, float]:
    """p5, p25, median, p75, p95 and IQR of a sketch: the quality report's consistency figures."""
    if not count(s):
        return {}
    p = {name: round(quantile(s, q), 4) for name, q in
         (("p5", 0.05), ("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("p95", 0.95))}
    return {**p, "iqr": round(p["p75"] - p["p25"], 4), "n": count(s)}
