"""Benchmark decontamination: n-gram overlap (HARE) plus embedding search for paraphrases.

n-grams: texts are normalized (NFKC, lowercase, thousands separators and GSM8K-style ``<<calc>>``
annotations removed, alphanumeric words). Every benchmark item's word n-grams go into one index.
A record is contaminated when it holds more than ``overlap_threshold`` of one item's n-grams,
counting the item whole (question + answer) or any single field of it (a leaked question alone
must count). N is 13 for long-text kinds and 8 for task kinds (HARE), configurable per kind.

Paraphrases: records are embedded in word windows (all-MiniLM-L6-v2, unit vectors) and searched
against the items' questions with FAISS (inner product = cosine). A hit above
``paraphrase_threshold`` is confirmed only if the record also holds at least
``confirm_threshold`` of the item's numbers and content words, which a reworded leak keeps and
an unrelated text on a similar theme does not: that keeps false positives low. For items with
two or more numbers, ``confirm_numbers`` of those numbers must appear as well, unless the
similarity is at least ``paraphrase_sure`` (an edited copy that lost a number).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from hare.benchmarks import BenchmarkItem
from hare.config import DecontamConfig
from hare.paths import cache_dir
from hare.prompts import template_for

Embed = Callable[[Sequence[str]], np.ndarray]

_CALC = re.compile(r"<<[^>]*>>")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")
_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "the a an and or of to in on at for with from by is are was were be been it its this that these "
    "those he she they them his her their we you i me my our your as if then than so but not no how "
    "what which who whom when where why many much each every per all some any more most other into "
    "out up down over under about after before there here has have had do does did will would can "
    "could should may might must also just only very one".split()
)


def tokens(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).lower()
    return _TOKEN.findall(_THOUSANDS.sub("", _CALC.sub(" ", text)))


def ngrams(toks: Sequence[str], n: int) -> set[str]:
    return {" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def key_terms(toks: Sequence[str]) -> set[str]:
    """Numbers and content words: what a rewording of a problem keeps."""
    return {t for t in toks if t.isdigit() or (len(t) > 2 and t not in _STOP)}


@dataclass(frozen=True)
class Match:
    benchmark: str
    item_id: str
    method: str  # "ngram" | "paraphrase"
    score: float


class NgramIndex:
    """Item n-grams for one N: gram -> items holding it, and each item's gram-set sizes."""

    def __init__(self, items: Sequence[BenchmarkItem], n: int) -> None:
        self.n = n
        self.postings: dict[str, list[tuple[int, int]]] = {}
        self.sizes: list[list[int]] = []  # per item: [whole, field 0, field 1, ...]
        for i, item in enumerate(items):
            fields = [ngrams(tokens(t), n) for t in item.texts]
            if not any(fields):  # shorter than n everywhere: the longest field is one gram
                longest = max((tokens(t) for t in item.texts), key=len)
                fields = [{" ".join(longest)}] if longest else [set()]
            whole = set().union(*fields)
            self.sizes.append([len(whole), *(len(f) for f in fields)])
            for gram in whole:
                self.postings.setdefault(gram, []).append((i, -1))
            for f, grams in enumerate(fields):
                for gram in grams:
                    self.postings[gram].append((i, f))

    def best(self, toks: Sequence[str]) -> tuple[int, float]:
        """(item index, overlap) of the item whose n-grams the text covers most; (-1, 0) if none."""
        hits: Counter = Counter()
        for gram in ngrams(toks, self.n):
            for posting in self.postings.get(gram, ()):
                hits[posting] += 1
        best_item, best = -1, 0.0
        for (item, field), count in hits.items():
            size = self.sizes[item][0 if field < 0 else field + 1]
            if size and count / size > best:
                best_item, best = item, count / size
        return best_item, best


class Decontaminator:
    """Finds the benchmark item a record leaks, by n-grams, then by paraphrase search."""

    def __init__(self, cfg: DecontamConfig, items: Sequence[BenchmarkItem], embed: Embed | None) -> None:
        self.cfg = cfg
        self.items = list(items)
        self.embed = embed if cfg.paraphrase else None
        self._indexes: dict[int, NgramIndex] = {}
        self._faiss = None
        self._item_terms = [key_terms(tokens(it.question)) for it in self.items]
        self._item_numbers = [{t for t in terms if t.isdigit()} for terms in self._item_terms]

    def n_for(self, kind: str) -> int:
        if kind in self.cfg.n_by_kind:
            return self.cfg.n_by_kind[kind]
        try:
            long_text = template_for(kind).long_text
        except KeyError:
            long_text = False
        return self.cfg.ngram_long if long_text else self.cfg.ngram_short

    def _index(self, n: int) -> NgramIndex:
        if n not in self._indexes:
            self._indexes[n] = NgramIndex(self.items, n)
        return self._indexes[n]

    def _question_index(self):
        if self._faiss is None:
            import faiss

            vecs = _cached_embeddings([it.question for it in self.items], self.embed)
            self._faiss = faiss.IndexFlatIP(vecs.shape[1])
            self._faiss.add(vecs)
        return self._faiss

    def check_ngrams(self, text: str, kind: str) -> Match | None:
        item, overlap = self._index(self.n_for(kind)).best(tokens(text))
        if item >= 0 and overlap > self.cfg.overlap_threshold:
            return Match(self.items[item].benchmark, self.items[item].item_id, "ngram", round(overlap, 4))
        return None

    def check_paraphrases(self, texts: Sequence[str]) -> list[Match | None]:
        if self.embed is None or not texts or not self.items:
            return [None] * len(texts)
        windows, owner = [], []
        for r, text in enumerate(texts):
            words = text.split()
            step = self.cfg.window_stride
            starts = range(0, max(1, len(words) - self.cfg.window_words + step), step)
            for s in starts:
                windows.append(" ".join(words[s:s + self.cfg.window_words]))
                owner.append(r)
        sims, idx = self._question_index().search(self.embed(windows), 1)
        best: dict[int, tuple[float, int]] = {}
        for w, r in enumerate(owner):
            if r not in best or sims[w, 0] > best[r][0]:
                best[r] = (float(sims[w, 0]), int(idx[w, 0]))
        out: list[Match | None] = []
        for r, text in enumerate(texts):
            sim, item = best.get(r, (0.0, -1))
            match = None
            if item >= 0 and sim >= self.cfg.paraphrase_threshold and self._confirmed(item, text, sim):
                it = self.items[item]
                match = Match(it.benchmark, it.item_id, "paraphrase", round(sim, 4))
            out.append(match)
        return out

    def _confirmed(self, item: int, text: str, sim: float) -> bool:
        """A reworded leak keeps the item's numbers and most of its content words."""
        present = set(tokens(text))
        terms, numbers = self._item_terms[item], self._item_numbers[item]
        shared = len(terms & present) / len(terms) if terms else 0.0
        if len(numbers) >= 2:
            if sim < self.cfg.paraphrase_sure and len(numbers & present) / len(numbers) < self.cfg.confirm_numbers:
                return False
            return shared >= self.cfg.confirm_threshold
        return shared >= self.cfg.confirm_without_numbers

    def check(self, texts: Sequence[str], kinds: Sequence[str]) -> list[Match | None]:
        """One verdict per text: the n-gram match if any, else a confirmed paraphrase, else None."""
        found = [self.check_ngrams(t, k) for t, k in zip(texts, kinds)]
        rest = [i for i, m in enumerate(found) if m is None]
        for i, m in zip(rest, self.check_paraphrases([texts[i] for i in rest])):
            found[i] = m
        return found


def _cached_embeddings(texts: list[str], embed: Embed) -> np.ndarray:
    """Benchmark embeddings are computed once per machine (they never change)."""
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:24]
    path = cache_dir() / "benchmarks" / f"{digest}.npy"
    if path.is_file():
        return np.load(path)
    vecs = embed(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vecs)
    tmp.replace(path)
    return vecs
