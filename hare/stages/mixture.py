"""One mixture from several sources (HARE: D1 corpus + D2 synthesized + D3 rewritten): each
source's target share of the published words, and the seeded rule that down-samples to it.

Rule: with ``w_s`` words available from source ``s`` (after every stage and the dedup) and
target shares ``t_s`` (adding up to 1), the largest mixture that meets every share has
``T = min_s w_s / t_s`` words, so source ``s`` publishes ``t_s * T`` of its words (all of them
for the scarcest source). Which records: each record's rank is ``sha256(seed:id)``; a source keeps
its records in rank order until their words reach its target, i.e. every record whose rank is at
most the source's threshold rank. The thresholds come from a first pass that holds two numbers
per record (rank, words), never a record; the second pass keeps a record by comparing its rank,
so every attempt keeps the same records at any partitioning. Words are whitespace-separated words
of ``text``: one measure for every source (a corpus document has no model tokens).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RULE = ("T = min over sources of words_s / share_s; each source keeps its records in order of "
        "sha256(seed:id) until their words reach share_s * T")
KEEP_ALL = np.iinfo(np.uint64).max


def words(texts: list[str | None]) -> int:
    return sum(len((t or "").split()) for t in texts)


def rank(record_id: str, seed: int) -> int:
    """A record's place in its source's seeded order (the first 8 bytes of sha256(seed:id))."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{record_id}".encode()).digest()[:8], "big")


class WordLedger:
    """The first pass: (rank, words) of every record of each source, as numpy arrays."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def add(self, source: str, ids: list[str], texts: list[str | None]) -> None:
        ranks = np.fromiter((rank(i, self.seed) for i in ids), np.uint64, len(ids))
        counts = np.fromiter((len((t or "").split()) for t in texts), np.int64, len(texts))
        self.parts.setdefault(source, []).append((ranks, counts))

    def available(self) -> dict[str, int]:
        return {s: int(sum(c.sum() for _, c in parts)) for s, parts in self.parts.items()}

    def thresholds(self, shares: dict[str, float]) -> dict[str, int]:
        """Each source's largest kept rank (KEEP_ALL: all its records) meeting the shares."""
        available = self.available()
        wanted = {s: t for s, t in shares.items() if t > 0 and available.get(s, 0) > 0}
        if len(wanted) < 2:  # one source (or one with words): nothing to balance against
            return {s: int(KEEP_ALL) for s in shares}
        total = min(available[s] / t for s, t in wanted.items())
        out = {}
        for s in shares:
            if s not in wanted or shares[s] * total >= available[s]:
                out[s] = int(KEEP_ALL)
                continue
            ranks = np.concatenate([r for r, _ in self.parts[s]])
            counts = np.concatenate([c for _, c in self.parts[s]])
            order = np.argsort(ranks, kind="stable")
            reached = np.searchsorted(np.cumsum(counts[order]), shares[s] * total)  # first index at the target
            out[s] = int(ranks[order][min(int(reached), len(order) - 1)])
        return out


def down_sample(records: pa.Table, thresholds: dict[str, int], seed: int) -> tuple[pa.Table, pa.Table]:
    """(kept, dropped) of one partition's records: a record stays when its rank is at most its
    source's threshold."""
    mask = pa.array([rank(i, seed) <= thresholds.get(src or "", int(KEEP_ALL)) for i, src in
                     zip(records.column("id").to_pylist(), records.column("source").to_pylist())], pa.bool_())
    return records.filter(mask), records.filter(pc.invert(mask))


def mixture_report(shares: dict[str, float], available: dict[str, int], published: dict[str, int],
                   records: dict[str, int], dropped: dict[str, int], seed: int) -> dict[str, Any]:
    """The mixture's run report: per source its target share beside the actual one."""
    total = sum(published.values()) or 1
    return {"rule": RULE, "seed": seed, "measure": "words", "sources": [
        {"source": s, "target_share": shares[s], "actual_share": round(published.get(s, 0) / total, 4),
         "words_available": available.get(s, 0), "words_published": published.get(s, 0),
         "records_published": records.get(s, 0), "records_down_sampled": dropped.get(s, 0)} for s in shares]}


def card_section(report: dict[str, Any]) -> list[str]:
    """The card's mixture table: target beside actual share, per source."""
    lines = ["## Mixture by source", "",
             f"Shares of the published words (whitespace words of `text`). Down-sampling rule: {report['rule']} "
             f"(seed {report['seed']}).", "",
             "| source | target share | actual share | words available | words published | records | down-sampled |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {s['source']} | {s['target_share']:.2f} | {s['actual_share']:.2f} | {s['words_available']} | "
              f"{s['words_published']} | {s['records_published']} | {s['records_down_sampled']} |"
              for s in report["sources"]]
    return [*lines, ""]
