"""Benchmark decontamination: n-gram overlap (HARE, GPT-3's N rule) plus paraphrase search.

n-grams: texts are normalized (NFKC, lowercase, thousands separators and GSM8K-style ``<<calc>>``
annotations removed, alphanumeric words). N follows each benchmark's items, not the record:
GPT-3's rule, the 5th-percentile item length in words clamped to 8..13, so a short-answer QA
benchmark gets a short N and a math benchmark 13 (``ngram_long``/``ngram_short``/``n_by_kind``
override it per kind). The whole item (its fields in order, as one text) gives N-grams, or one
gram when it is shorter than N; each field counts alone too, a field shorter than N as one
whole gram (from ``field_min_words`` words: a three-word question alone is no evidence). A
record is contaminated when it holds more than ``overlap_threshold`` of one item's grams,
counting the item whole or any single field of it (a leaked question alone must count).

Why an anchored index: grams of several lengths (N per benchmark, whole short fields) would
need one scan of the record per length. Every gram is filed under its first ``a`` words (``a``
the shortest gram length), the record is scanned once for ``a``-grams as a set of tuples (the
cost of the plain set-of-tuples reference), and only the rare anchor hits are checked at full
length.

Near-verbatim (:class:`EditIndex`): a short item with one word changed, added or dropped keeps
none of its N-grams when the change falls in its middle (an 18-word item has 8 grams of 11
words, and each covers the middle). So every item sequence of ``edit_min_words`` or more (the
whole item, and each field that long) is also matched with at most one word edit: by the
pigeonhole principle one of its two halves then occurs verbatim, so the halves are indexed
(under their first words, as the grams are) and each hit is aligned and compared word by word.

Paraphrases: :mod:`hare.stages.decontam.paraphrase` (sentence windows sized to the items, a rare-word candidate
filter, then embeddings of the candidate windows only).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from hare.stages.decontam.benchmarks import BenchmarkItem
from hare.config import DecontamConfig
from hare.stages.decontam.judge import Judge
from hare.stages.decontam.text import Gram, ngrams, tokens
from hare.priors.prompts import template_for

Embed = Callable[[Sequence[str]], np.ndarray]

def percentile_n(lengths: Sequence[int], cfg: DecontamConfig) -> int:
    """GPT-3's rule: N is a low percentile of the items' lengths in words, clamped."""
    if not lengths:
        return cfg.ngram_max
    ordered = sorted(lengths)
    rank = max(0, math.ceil(cfg.ngram_percentile / 100 * len(ordered)) - 1)  # nearest rank
    return min(cfg.ngram_max, max(cfg.ngram_min, ordered[rank]))


def item_length(item: BenchmarkItem) -> int:
    return sum(len(tokens(t)) for t in item.texts)


# The match method of a paraphrase, by the route that proposed its window (paraphrase.py): the
# card and the rejects tell the routes apart ("paraphrase" alone is the rare-word filter's, as before).
PARAPHRASE_METHODS = {"rare_words": "paraphrase", "synonym": "paraphrase_synonym",
                      "every_window": "paraphrase_every_window", "judge": "paraphrase_judge"}


@dataclass(frozen=True)
class Match:
    benchmark: str
    item_id: str
    method: str  # "ngram" | "near_verbatim" | one of PARAPHRASE_METHODS' values (judge: the model said yes)
    score: float


class NgramIndex:
    """Item grams (each item with its own N) filed under their first words.

    ``sizes[i]`` is ``[whole, field 0, field 1, ...]``: how many grams item i has whole and per
    field (0 for a field too short to count alone)."""

    def __init__(self, items: Sequence[BenchmarkItem], n: int | Sequence[int], field_min_words: int = 8) -> None:
        ns = [n] * len(items) if isinstance(n, int) else list(n)
        self.postings: dict[Gram, list[tuple[int, int]]] = {}
        self.sizes: list[list[int]] = []
        for i, (item, n_i) in enumerate(zip(items, ns)):
            field_toks = [tokens(t) for t in item.texts]
            fields = [_field_grams(toks, n_i, field_min_words) for toks in field_toks]
            whole = _field_grams([t for toks in field_toks for t in toks], n_i, 1)  # fields in order, as one text
            self.sizes.append([len(whole), *(len(f) for f in fields)])
            for gram in whole:
                self.postings.setdefault(gram, []).append((i, -1))
            for f, grams in enumerate(fields):
                for gram in grams:
                    self.postings.setdefault(gram, []).append((i, f))
        lengths = {len(g) for g in self.postings}
        self.anchor = min(lengths, default=1)
        self.uniform = len(lengths) <= 1  # one gram length: the anchor is the gram
        self.anchors: dict[Gram, tuple[int, ...]] = {}
        if not self.uniform:
            by_anchor: dict[Gram, set[int]] = {}
            for gram in self.postings:
                by_anchor.setdefault(gram[:self.anchor], set()).add(len(gram))
            self.anchors = {a: tuple(sorted(ls)) for a, ls in by_anchor.items()}
        self.keys = frozenset(self.anchors if not self.uniform else self.postings)

    def grams_in(self, toks: Sequence[str]) -> set[Gram]:
        """The index's grams that occur in a token list: one set of tuples, then the rare hits."""
        a = self.anchor
        if self.keys.isdisjoint(zip(*[toks[i:] for i in range(a)])):  # clean text: no set is built
            return set()
        hits = set(zip(*[toks[i:] for i in range(a)])) & self.keys
        if self.uniform:
            return hits
        found = set()
        n_toks = len(toks)
        for i in range(n_toks - a + 1):
            anchor = tuple(toks[i:i + a])
            if anchor in hits:
                for length in self.anchors[anchor]:
                    if i + length <= n_toks:
                        gram = anchor if length == a else tuple(toks[i:i + length])
                        if gram in self.postings:
                            found.add(gram)
        return found

    def best(self, toks: Sequence[str]) -> tuple[int, float]:
        """(item index, overlap) of the item whose grams the text covers most; (-1, 0) if none."""
        found = self.grams_in(toks)
        if not found:
            return -1, 0.0
        hits: Counter = Counter()
        for gram in found:
            hits.update(self.postings[gram])
        best_item, best = -1, (0.0, 0)
        for (item, field), count in hits.items():
            size = self.sizes[item][0 if field < 0 else field + 1]
            if size and (count / size, count) > best:  # ties: the item with more grams found
                best_item, best = item, (count / size, count)
        return best_item, best[0]


def starts_within_one_edit(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether ``b`` begins with ``a`` changed by at most one word: replaced, dropped, or one
    word added."""
    n, i = len(a), 0
    while i < n and i < len(b) and a[i] == b[i]:
        i += 1
    if i == n:
        return True
    rest = list(a[i + 1:])
    return (rest == list(b[i + 1:n])                   # replaced (or cut at the record's end)
            or rest == list(b[i:n - 1])                # dropped
            or list(a[i:]) == list(b[i + 1:n + 1]))    # one word added


class EditIndex:
    """Item sequences (whole items, and fields of ``min_words`` or more) found in a text with at
    most one word replaced, dropped or added. One half of such a sequence occurs verbatim
    (pigeonhole), so halves are filed under their first ``ANCHOR`` words, a text is scanned once
    for its ``ANCHOR``-grams (``frozenset.isdisjoint``: no set is built for a clean text), and
    each hit is aligned on the sequence and compared word by word."""

    ANCHOR = 5

    def __init__(self, items: Sequence[BenchmarkItem], min_words: int) -> None:
        self.min_words = max(min_words, 2 * self.ANCHOR)
        self.seqs: list[list[str]] = []
        self.seq_item: list[int] = []
        self.postings: dict[Gram, list[tuple[int, int]]] = {}  # anchor -> (sequence, offset of its half)
        for i, item in enumerate(items):
            fields = [tokens(t) for t in item.texts]
            candidates = [[t for f in fields for t in f], *fields] if len(fields) > 1 else fields
            seen: set[Gram] = set()
            for seq in candidates:
                if len(seq) < self.min_words or tuple(seq) in seen:
                    continue
                seen.add(tuple(seq))
                s = len(self.seqs)
                self.seqs.append(seq)
                self.seq_item.append(i)
                half = len(seq) // 2
                for offset in (0, half):
                    self.postings.setdefault(tuple(seq[offset:offset + self.ANCHOR]), []).append((s, offset))
        self.keys = frozenset(self.postings)

    def find(self, toks: Sequence[str]) -> tuple[int, float]:
        """(item index, 1 - edits / length) of the first item sequence the tokens hold within one
        word edit; (-1, 0) if none."""
        a = self.ANCHOR
        if self.keys.isdisjoint(zip(*[toks[i:] for i in range(a)])):
            return -1, 0.0
        toks = list(toks)
        for pos in range(len(toks) - a + 1):
            hits = self.postings.get(tuple(toks[pos:pos + a]))
            if not hits:
                continue
            for s, offset in hits:
                seq = self.seqs[s]
                half = len(seq) // 2
                if offset == 0:  # the first half verbatim here: the rest follows within one edit
                    if toks[pos:pos + half] == seq[:half] and starts_within_one_edit(seq[half:], toks[pos + half:]):
                        return self.seq_item[s], self._score(seq, toks[pos:pos + len(seq) + 1])
                elif toks[pos:pos + len(seq) - half] == seq[half:]:  # the second half: the rest precedes it
                    before = toks[max(0, pos - half - 1):pos][::-1]
                    if starts_within_one_edit(seq[:half][::-1], before):
                        return self.seq_item[s], self._score(seq, toks[max(0, pos - half - 1):pos + len(seq) - half])
        return -1, 0.0

    @staticmethod
    def _score(seq: Sequence[str], window: Sequence[str]) -> float:
        return 1.0 if " ".join(seq) in " ".join(window) else round(1 - 1 / len(seq), 4)


def _field_grams(toks: Sequence[str], n: int, min_words: int) -> set[Gram]:
    if len(toks) >= n:
        return ngrams(toks, n)
    return {tuple(toks)} if toks and len(toks) >= min_words else set()


class Decontaminator:
    """Finds the benchmark item a record leaks, by n-grams, then by paraphrase search."""

    def __init__(self, cfg: DecontamConfig, items: Sequence[BenchmarkItem], embed: Embed | None,
                 every_window: bool = False, judge: Judge | None = None) -> None:
        from hare.stages.decontam.paraphrase import ParaphraseSearch

        self.cfg = cfg
        self.items = list(items)
        self.embed = embed if cfg.paraphrase else None
        self._indexes: dict[int | None, NgramIndex] = {}
        lengths: dict[str, list[int]] = {}
        self._lengths = [item_length(it) for it in self.items]
        for it, length in zip(self.items, self._lengths):
            lengths.setdefault(it.benchmark, []).append(length)
        self.n_by_benchmark = {name: percentile_n(ls, cfg) for name, ls in lengths.items()}
        self.edits = EditIndex(self.items, cfg.edit_min_words) if cfg.near_verbatim else None
        self.judge = judge if self.embed is not None else None  # it only sees paraphrase candidates
        self.paraphrases = (ParaphraseSearch(cfg, self.items, self.embed, every_window, self.judge)
                            if self.embed is not None else None)

    def n_for(self, kind: str) -> int | None:
        """The N a kind overrides with, or None: each benchmark's own N."""
        if kind in self.cfg.n_by_kind:
            return self.cfg.n_by_kind[kind]
        if self.cfg.ngram_long is None and self.cfg.ngram_short is None:
            return None
        try:
            long_text = template_for(kind).long_text
        except KeyError:
            long_text = False
        return self.cfg.ngram_long if long_text else self.cfg.ngram_short

    def _index(self, n: int | None) -> NgramIndex:
        if n not in self._indexes:
            ns = [self.n_by_benchmark[it.benchmark] for it in self.items] if n is None else n
            self._indexes[n] = NgramIndex(self.items, ns, self.cfg.field_min_words)
        return self._indexes[n]

    def check_ngrams(self, text: str, kind: str, toks: Sequence[str] | None = None) -> Match | None:
        """The item whose grams the text holds above ``overlap_threshold``, or None."""
        item, overlap = self._index(self.n_for(kind)).best(tokens(text) if toks is None else toks)
        if item >= 0 and overlap > self.cfg.overlap_threshold:
            return Match(self.items[item].benchmark, self.items[item].item_id, "ngram", round(overlap, 4))
        return None

    def check_near_verbatim(self, toks: Sequence[str]) -> Match | None:
        """An item sequence held with at most one word edit (:class:`EditIndex`), or None."""
        if self.edits is None:
            return None
        item, score = self.edits.find(toks)
        return Match(self.items[item].benchmark, self.items[item].item_id, "near_verbatim", score) if item >= 0 else None

    def check_paraphrases(self, texts: Sequence[str], toks: Sequence[Sequence[str]] | None = None) -> list[Match | None]:
        """A confirmed paraphrase per text, or None (hare/stages/decontam/paraphrase.py)."""
        if self.paraphrases is None or not texts or not self.items:
            return [None] * len(texts)
        found = self.paraphrases.search(texts, toks)
        return [None if f is None else Match(self.items[f[0]].benchmark, self.items[f[0]].item_id,
                                             PARAPHRASE_METHODS[f[2]], round(f[1], 4)) for f in found]

    def check(self, texts: Sequence[str], kinds: Sequence[str]) -> list[Match | None]:
        """One verdict per text: the n-gram match if any, else a near-verbatim one, else a confirmed
        paraphrase, else None."""
        toks = [tokens(t) for t in texts]
        found = [self.check_ngrams(t, k, tk) or self.check_near_verbatim(tk) for t, k, tk in zip(texts, kinds, toks)]
        rest = [i for i, m in enumerate(found) if m is None]
        for i, m in zip(rest, self.check_paraphrases([texts[i] for i in rest], [toks[i] for i in rest])):
            found[i] = m
        return found
