"""Where the corpus is thin: coverage of the taxonomy by a corpus, and synthesis aimed at the gaps.

HARE combines existing documents (D1, a corpus source) with synthesized text (D2). Spreading D2
evenly over the taxonomy would spend most of it where the corpus already says plenty; these
pure functions (the plan step calls them) aim it at the leaves the corpus covers least:

1. a sample of the corpus is embedded, and each document goes to its nearest taxonomy leaf
   (:func:`assign_leaves`, a leaf being represented by :func:`leaf_text`); a document too far
   from every leaf covers none, so off-topic text does not make a leaf look covered;
2. :func:`coverage_counts` counts documents per leaf, :func:`by_domain` per domain;
3. :func:`coverage_allocation` water-fills the synthesized prompts over the leaves, least
   covered first;
4. :func:`coverage_report` and :func:`card_section` show coverage per domain before (corpus
   only) and after (corpus + synthesized), for the plan report, the card and the notebook.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Mapping, Sequence

import numpy as np

from hare.priors.taxonomy import Leaf

_SEP = " > "  # Leaf.path joins domain, subject and topic with it


def leaf_text(leaf: Leaf) -> str:
    """The text embedded for a leaf: its full path and its description.

    The path alone ("Fractions") is ambiguous and short, which sentence embeddings handle
    poorly; the domain and subject disambiguate it and the description says what the topic
    holds, so a corpus document lands near the leaf a person would file it under.
    """
    return f"{leaf.path}: {leaf.description}" if leaf.description else leaf.path


def assign_leaves(doc_vectors: np.ndarray, leaf_vectors: np.ndarray, min_similarity: float) -> np.ndarray:
    """The index of the nearest leaf of each document, or -1 where no leaf is near enough.

    Both inputs are unit-normalized rows (one per document, one per leaf), so inner product is
    cosine similarity; an exact FAISS inner-product index finds the nearest leaf (the taxonomy
    is a few hundred leaves: exact search is cheap and needs no training). A document whose best
    cosine is below ``min_similarity`` is about nothing in the taxonomy and covers no leaf (-1):
    forcing it onto its nearest leaf would make that leaf look covered and starve it of
    synthesis. Ties go to the lower leaf index.
    """
    docs = np.ascontiguousarray(doc_vectors, dtype=np.float32)
    anchors = np.ascontiguousarray(leaf_vectors, dtype=np.float32)
    if docs.ndim != 2 or anchors.ndim != 2:
        raise ValueError("assign_leaves: document and leaf vectors must be 2-D arrays (one row each)")
    if docs.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    if anchors.shape[0] == 0:
        return np.full(docs.shape[0], -1, dtype=np.int64)  # no leaf: nothing can be covered
    if docs.shape[1] != anchors.shape[1]:
        raise ValueError(f"assign_leaves: documents have dimension {docs.shape[1]}, leaves {anchors.shape[1]}")
    import faiss  # lazily: importing faiss is slow and only the plan step with a corpus needs it

    index = faiss.IndexFlatIP(anchors.shape[1])
    index.add(anchors)
    similarity, nearest = index.search(docs, 1)
    out = nearest[:, 0].astype(np.int64)
    out[similarity[:, 0] < min_similarity] = -1
    return out


def coverage_counts(assigned: np.ndarray | Sequence[int], leaves: Sequence[Leaf]) -> dict[str, int]:
    """Documents per leaf path, in leaf order, every leaf present (zeros included).

    Zeros are kept because the uncovered leaves are the point: the allocation and the report
    need them named, not missing. Unassigned documents (-1) count for no leaf.
    """
    counts = dict.fromkeys((leaf.path for leaf in leaves), 0)
    paths = [leaf.path for leaf in leaves]
    for i in np.asarray(assigned, dtype=np.int64).ravel():
        if i >= len(paths):
            raise ValueError(f"coverage_counts: leaf index {int(i)} out of range for {len(paths)} leaves")
        if i >= 0:
            counts[paths[i]] += 1
    return counts


def domain_of(path: str) -> str:
    """The domain of a leaf path ("Domain > Subject > Topic")."""
    return path.split(_SEP, 1)[0]


def by_domain(counts: Mapping[str, int]) -> dict[str, int]:
    """Per-leaf counts summed per domain, domains in order of first appearance."""
    out: dict[str, int] = {}
    for path, n in counts.items():
        out[domain_of(path)] = out.get(domain_of(path), 0) + int(n)
    return out


def coverage_allocation(leaves: Sequence[Leaf], covered: Mapping[str, int], total: int,
                        corpus_weight: float = 1.0) -> dict[str, int]:
    """Synthesized prompts per leaf path, summing exactly to ``total``, least covered first.

    The rule (water-filling): each leaf has a level, ``covered[leaf] * corpus_weight`` plus the
    prompts given to it so far; prompts are handed out one at a time, each to the leaf with the
    lowest level, ties to the leaf earlier in ``leaves``. So the least covered leaves get the
    most, the levels rise together, and a leaf whose corpus level is above the final water
    level gets none. When ``total`` is smaller than the number of leaves, the uncovered (then
    least covered) leaves get one each, in leaf order. ``corpus_weight`` says what one sampled
    corpus document is worth in prompts (0: ignore the corpus, an even spread; the sample is a
    fraction of the corpus, so a caller may scale by that fraction).

    One prompt at a time would be slow for millions; the same result is computed from the
    continuous water level ``h`` (``sum(max(0, h - level)) == total``): every slot with a level
    at most ``h - 2`` is certainly handed out (a prefix of the one-at-a-time order, whatever the
    ties), and the few left (fewer than two per leaf) go one at a time through a heap.

    ``covered`` may leave leaves out (zero); a path that is not a leaf is an error, since it
    means the counts came from another taxonomy.
    """
    if total < 0:
        raise ValueError(f"coverage_allocation: total must be >= 0, not {total}")
    if not (corpus_weight >= 0 and math.isfinite(corpus_weight)):
        raise ValueError(f"coverage_allocation: corpus_weight must be a finite number >= 0, not {corpus_weight}")
    paths = [leaf.path for leaf in leaves]
    unknown = sorted(set(covered) - set(paths))
    if unknown:
        raise ValueError(f"coverage_allocation: {len(unknown)} covered path(s) are not taxonomy leaves, "
                         f"e.g. {unknown[0]!r}")
    if any(n < 0 for n in covered.values()):
        raise ValueError("coverage_allocation: covered counts must be >= 0")
    if not paths:
        if total:
            raise ValueError(f"coverage_allocation: {total} prompts but no leaves")
        return {}
    levels = [float(covered.get(p, 0)) * corpus_weight for p in paths]
    height = _water_level(levels, total)
    base = [max(0, math.floor(height - level) - 1) for level in levels]
    while sum(base) > total:  # only if rounding put the level too high: lower it (never in practice)
        height -= 1.0
        base = [max(0, math.floor(height - level) - 1) for level in levels]
    heap = [(level + n, i) for i, (level, n) in enumerate(zip(levels, base))]
    heapq.heapify(heap)
    for _ in range(total - sum(base)):
        level, i = heapq.heappop(heap)
        base[i] += 1
        heapq.heappush(heap, (level + 1.0, i))
    return dict(zip(paths, base))


def _water_level(levels: Sequence[float], total: int) -> float:
    """The continuous level h with ``sum(max(0, h - l) for l in levels) == total``."""
    ordered = sorted(levels)
    filled = 0.0
    for m, level in enumerate(ordered, start=1):
        filled += level
        height = (total + filled) / m
        if m == len(ordered) or height <= ordered[m]:
            return height
    raise AssertionError("unreachable: levels is not empty")


def coverage_report(leaves: Sequence[Leaf], covered: Mapping[str, int], planned: Mapping[str, int],
                    *, unmatched: int = 0) -> dict[str, Any]:
    """Coverage per domain before (corpus) and after (corpus + synthesized), as JSON.

    ``covered``: sampled corpus documents per leaf path; ``planned``: synthesized prompts per
    leaf path; ``unmatched``: sampled documents near no leaf (they cover nothing, but the reader
    should know how much of the sample the taxonomy missed). Shape::

        {"domains": {domain: {"corpus": n, "synthesized": n, "after": n}},
         "totals": {"corpus": n, "synthesized": n, "after": n, "unmatched": n, "leaves": n},
         "uncovered_before": [leaf path, ...], "uncovered_after": [leaf path, ...]}

    Before/after are counts of different things (sampled documents, planned prompts) added
    together; that is the point of the plan, which treats one as worth ``corpus_weight`` of the
    other, and the uncovered lists say what synthesis filled and what stays empty.
    """
    paths = [leaf.path for leaf in leaves]
    unknown = sorted((set(covered) | set(planned)) - set(paths))
    if unknown:
        raise ValueError(f"coverage_report: {len(unknown)} path(s) are not taxonomy leaves, e.g. {unknown[0]!r}")
    domains: dict[str, dict[str, int]] = {}
    for leaf in leaves:
        row = domains.setdefault(leaf.domain, {"corpus": 0, "synthesized": 0, "after": 0})
        c, s = int(covered.get(leaf.path, 0)), int(planned.get(leaf.path, 0))
        row["corpus"] += c
        row["synthesized"] += s
        row["after"] += c + s
    corpus, synthesized = sum(int(v) for v in covered.values()), sum(int(v) for v in planned.values())
    return {
        "domains": domains,
        "totals": {"corpus": corpus, "synthesized": synthesized, "after": corpus + synthesized,
                   "unmatched": int(unmatched), "leaves": len(paths)},
        "uncovered_before": [p for p in paths if not covered.get(p, 0)],
        "uncovered_after": [p for p in paths if not covered.get(p, 0) and not planned.get(p, 0)],
    }


def card_section(report: Mapping[str, Any]) -> list[str]:
    """Markdown lines for the dataset card: a table per domain, a total row, then one sentence on
    the leaves with no coverage before and after (the table alone hides an empty leaf inside a
    well-covered domain). No heading: the caller adds its own."""
    lines = ["| domain | corpus (before) | synthesized | after |", "|---|---:|---:|---:|"]
    for domain, row in report["domains"].items():
        lines.append(f"| {domain} | {row['corpus']} | {row['synthesized']} | {row['after']} |")
    totals = report["totals"]
    lines.append(f"| **total** | {totals['corpus']} | {totals['synthesized']} | {totals['after']} |")
    before, after = report["uncovered_before"], report["uncovered_after"]
    sentence = (f"Leaves with no coverage: {len(before)} of {totals['leaves']} before synthesis, "
                f"{len(after)} after")
    sentence += (f" ({', '.join(after[:5])}{', ...' if len(after) > 5 else ''})." if after else ".")
    if totals.get("unmatched"):
        sentence += (f" {totals['unmatched']} sampled corpus documents were near no leaf "
                     f"and cover none.")
    return [*lines, "", sentence]
